"""What the S3 backend puts on the wire, against a real S3 server (moto's, tests/s3d.py).

The requests a transfer makes are its cost: these tests record each request as botocore sends
it (after signing), through the client's own event hooks, and check what it carries.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

import archive
from archive import layout
from archive.backends.s3 import S3Archive
from archive.hashing import BlobId
from tests.s3d import S3Server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def arc(s3_env: S3Server, s3_bucket: str) -> Iterator[S3Archive]:
    with archive.get_interface(s3_env.location(s3_bucket, "store"), create=True) as arc:
        assert isinstance(arc, S3Archive)
        yield arc


def record_sent(arc: S3Archive) -> list[dict[str, str]]:
    """Each request the archive's client sends from now on: method, URL and headers."""
    sent: list[dict[str, str]] = []

    def keep(request, **_) -> None:
        headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        sent.append({"method": request.method, "url": request.url, **headers})

    arc.client.meta.events.register("before-send.s3", keep)
    return sent


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_a_blob_put_carries_its_name_as_checksum_and_its_body_is_not_hashed_again(arc: S3Archive) -> None:
    data = os.urandom(70_000)
    blob = BlobId.of_bytes(data)
    sent = record_sent(arc)
    arc.write_key(layout.blob_key(blob), [data[:1000], data[1000:]])
    (put,) = [r for r in sent if r["method"] == "PUT"]
    assert put["x-amz-checksum-sha256"] == base64.b64encode(bytes.fromhex(blob.hexdigest)).decode()
    assert put["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    with arc.open_key(layout.blob_key(blob)) as stream:
        assert stream.read() == data


def test_other_puts_carry_the_sha256_of_their_body(arc: S3Archive) -> None:
    sent = record_sent(arc)
    arc.write_key("leases/some-lease", [b"lease ", b"body"])
    arc.write_key("blobs/sha256/ab/not-a-hash", [b"odd"])  # a blob folder, but not a blob's name
    puts = [r for r in sent if r["method"] == "PUT"]
    assert [p["x-amz-checksum-sha256"] for p in puts] == [b64_sha256(b"lease body"), b64_sha256(b"odd")]
    assert all(p["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD" for p in puts)


def test_a_request_without_a_checksum_still_signs_its_body(arc: S3Archive) -> None:
    """Only requests whose body the server checks against a signed checksum skip the hash."""
    sent = record_sent(arc)
    arc.client.put_object(Bucket=arc.bucket, Key=arc.object_key("tmp/plain"), Body=b"plain")
    (put,) = sent
    assert put["x-amz-content-sha256"] == hashlib.sha256(b"plain").hexdigest()
    assert "x-amz-checksum-sha256" not in put


def test_endpoint_rules_are_evaluated_once_per_operation_not_once_per_key(arc: S3Archive,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore caches resolved endpoints by the request's parameters, which held the key."""
    from botocore.endpoint_provider import RuleSet

    evaluated = []
    original = RuleSet.evaluate
    monkeypatch.setattr(RuleSet, "evaluate", lambda self, params: evaluated.append(dict(params)) or original(self, params))
    keys = [f"tmp/object-{i}" for i in range(20)]
    for key in keys:
        arc.write_key(key, [key.encode()])
    for key in keys:
        with arc.open_key(key) as stream:
            assert stream.read() == key.encode()
    assert arc.list_keys("tmp") == sorted(k.rsplit("/", 1)[1] for k in keys)
    assert len(evaluated) <= 3  # PUT, GET, list (the ones before this test are cached)
    assert not any("Key" in params for params in evaluated)


def test_a_new_client_reads_the_endpoint_rules_once(arc: S3Archive, s3_env: S3Server, s3_bucket: str) -> None:
    """The look at the rules for the parameters they never read uses the rules the client
    loaded: a second loader read them again and listed botocore's data anew at every start."""
    code = ("import sys, archive, botocore.loaders as L; read = [];"
            "original = L.JSONFileLoader.load_file;"
            "L.JSONFileLoader.load_file = lambda self, path: (read.append(path), original(self, path))[1];"
            "archive.get_interface(sys.argv[1]).close();"
            "print(sum(p.endswith('endpoint-rule-set-1') for p in read))")
    out = subprocess.run([sys.executable, "-c", code, s3_env.location(s3_bucket, "store")], check=True,
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "1"


def test_times_of_answers_are_those_the_server_sent(arc: S3Archive, s3_env: S3Server) -> None:
    """Answers' times are parsed by the backend's own parser; an object written by another tool
    (no write time in its metadata) has the server's Last-Modified as its mtime."""
    s3_env.client().put_object(Bucket=arc.bucket, Key=arc.object_key("tmp/foreign"), Body=b"x")
    answer = s3_env.client().head_object(Bucket=arc.bucket, Key=arc.object_key("tmp/foreign"))
    assert arc.stat_key("tmp/foreign").mtime == answer["LastModified"].timestamp()
    listed = arc.client.list_objects_v2(Bucket=arc.bucket, Prefix=arc.object_key("tmp/foreign"))["Contents"]
    assert [item["LastModified"] for item in listed] == [answer["LastModified"]]


def test_the_user_agent_names_the_archive_and_botocore(arc: S3Archive) -> None:
    sent = record_sent(arc)
    arc.has_key("tmp/none")
    assert sent[0]["user-agent"].startswith(f"archive/{archive.__version__} Botocore/")
