"""The S3 backend's lean GETs (archive/backends/s3_lean.py), seen on the wire.

``read_key`` (a pull's small blobs, records, pointers) and the ranged reads of ``open_key`` send
their GETs without botocore's client, so their requests are watched where they travel:
:class:`~tests.backends.s3_wire.WireRelay`, a relay on 127.0.0.1 in front of the real moto
server that records each request's head and can answer the next GETs itself (a 503, a
redirect) or cut the next answer short, as a failing server would.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import pytest

import archive
from archive.backends.s3 import S3Archive
from archive.errors import AuthenticationError, BackendUnavailableError, IntegrityError, KeyNotFoundError
from tests.backends.s3_wire import WireRelay, s3_error
from tests.backends.test_s3 import run
from tests.conftest import make_tree
from tests.s3d import S3Server, new_bucket, start_s3_server, stop_s3_server


@pytest.fixture
def relay(s3_env: S3Server) -> Iterator[WireRelay]:
    wire = WireRelay(s3_env.port)
    yield wire
    wire.close()


@pytest.fixture
def arc(s3_env: S3Server, s3_bucket: str, relay: WireRelay) -> Iterator[S3Archive]:
    location = s3_env.location(s3_bucket, "store").replace(s3_env.endpoint, relay.endpoint())
    with archive.get_interface(location, create=True) as arc:
        assert isinstance(arc, S3Archive)
        yield arc


def botocore_sends(arc: S3Archive) -> list[str]:
    """Each request botocore's client sends from now on (its URL)."""
    sent: list[str] = []
    arc.client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
    return sent


# ------------------------------------------------------------------ what goes on the wire
def test_read_key_is_one_signed_get_that_skips_botocore(arc: S3Archive, relay: WireRelay) -> None:
    arc.write_key("tmp/small", [b"small content"])
    through_botocore = botocore_sends(arc)
    relay.heads.clear()
    assert arc.read_key("tmp/small", 100) == b"small content"
    (get,) = relay.heads
    assert get["method"] == "GET" and get["target"] == f"/{arc.bucket}/store/tmp/small"
    assert get["authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
    assert "range" not in get and get["user-agent"] == arc.client.meta.config.user_agent
    assert through_botocore == []


@pytest.mark.parametrize("key", ["releases/calib/1.0.0+build.7", "releases/a b/ü é~x", "tmp/odd!$&'()*,;=@[]"])
def test_a_key_is_encoded_as_botocore_encodes_it(arc: S3Archive, relay: WireRelay, key: str) -> None:
    arc.write_key(key, [key.encode()])
    through_botocore = botocore_sends(arc)
    assert arc.client.get_object(Bucket=arc.bucket, Key=arc.object_key(key))["Body"].read() == key.encode()
    relay.heads.clear()
    assert arc.read_key(key, 1000) == key.encode()
    assert [h["target"] for h in relay.gets()] == ["/" + through_botocore[0].split("/", 3)[3]]


def test_signatures_are_accepted_by_a_server_that_checks_them(tmp_path: Path, s3_env: S3Server,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_s3_server(tmp_path / "auth", authenticate=True)
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        bucket = new_bucket(server)
        with archive.get_interface(server.location(bucket, "store"), create=True) as arc:
            for key in ("tmp/plain", "releases/a b/x~y"):  # moto's check fails botocore's own 'ü', '+', '='
                arc.write_key(key, [b"signed " + key.encode()])
                assert arc.read_key(key, 1000) == b"signed " + key.encode()
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-xyz")
        with pytest.raises(AuthenticationError, match="access refused") as refused:
            archive.get_interface(server.location(bucket, "store"))  # reads archive.json
        assert "wrong-secret-xyz" not in str(refused.value) and server.secret_key not in str(refused.value)
    finally:
        stop_s3_server(server)


# ------------------------------------------------------------------ answers and failures
def test_a_missing_key_and_a_too_large_object(arc: S3Archive) -> None:
    with pytest.raises(KeyNotFoundError):
        arc.read_key("tmp/nothing-here", 100)
    arc.write_key("tmp/big", [b"x" * 5000])
    with pytest.raises(IntegrityError, match="over the 4999 byte limit"):
        arc.read_key("tmp/big", 4999)
    assert arc.read_key("tmp/big", 5000) == b"x" * 5000  # the connection after a refusal is sound
    arc.write_key("tmp/empty", [b""])
    assert arc.read_key("tmp/empty", 10) == b""


@pytest.mark.parametrize("answer", [s3_error("503 Service Unavailable", "SlowDown"),
                                    s3_error("500 Internal Server Error", "InternalError"),
                                    s3_error("429 Too Many Requests", "TooManyRequestsException"),
                                    s3_error("400 Bad Request", "RequestTimeout"),
                                    b"HTTP/1.1 200 OK\r\nContent-Len"],  # the connection dropped mid-answer
                         ids=["503", "500", "429", "request-timeout", "dropped"])
def test_server_errors_and_throttling_are_retried(arc: S3Archive, relay: WireRelay, answer: bytes) -> None:
    arc.write_key("tmp/retried", [b"after retries"])
    relay.heads.clear()
    relay.answers = [answer, answer]
    assert arc.read_key("tmp/retried", 100) == b"after retries"
    assert len(relay.gets()) == 3


def test_a_body_cut_short_is_read_again(arc: S3Archive, relay: WireRelay) -> None:
    data = os.urandom(200_000)
    arc.write_key("tmp/cut", [data])
    relay.heads.clear()
    relay.cut_next_get = 100_000
    assert arc.read_key("tmp/cut", len(data)) == data
    assert len(relay.gets()) == 2


def test_retries_end_with_one_line(arc: S3Archive, relay: WireRelay) -> None:
    attempts = arc.client.meta.config.retries["total_max_attempts"]
    relay.answers = [s3_error("503 Service Unavailable", "SlowDown")] * attempts
    relay.heads.clear()
    with pytest.raises(BackendUnavailableError, match=r"server error \(SlowDown\)"):
        arc.read_key("archive.json", 4096)
    assert len(relay.gets()) == attempts


def test_a_redirect_goes_back_to_the_client(arc: S3Archive, relay: WireRelay) -> None:
    """A bucket in another region: botocore's client follows S3's redirects, the lean GET does not."""
    arc.write_key("tmp/elsewhere", [b"found"])
    relay.answers = [s3_error("301 Moved Permanently", "PermanentRedirect", "x-amz-bucket-region: us-east-1\r\n")]
    through_botocore = botocore_sends(arc)
    assert arc.read_key("tmp/elsewhere", 100) == b"found"
    assert len(through_botocore) == 1
    assert arc.read_key("tmp/elsewhere", 100) == b"found"
    assert len(through_botocore) == 2  # from now on through the client


def test_a_pull_of_small_files_sends_one_get_each(s3_env: S3Server, s3_bucket: str, relay: WireRelay,
                                                  tmp_path: Path) -> None:
    url = s3_env.location(s3_bucket, "store").replace(s3_env.endpoint, relay.endpoint())
    files = {f"f{i}.txt": f"small file {i}".encode() for i in range(40)}
    assert run("init", url).returncode == 0
    assert run("-a", url, "push", str(make_tree(tmp_path / "src", files)), "many", "1.0.0").returncode == 0
    relay.heads.clear()
    pulled = run("-a", url, "pull", "many", "--to", str(tmp_path / "out"), "--no-cache")
    assert pulled.returncode == 0, pulled.stderr
    assert snapshot_of(tmp_path / "out") == files
    blob_gets = [h["target"].rsplit("/", 1)[1] for h in relay.gets() if "/blobs/" in h["target"]]
    file_blobs = {hashlib.sha256(data).hexdigest() for data in files.values()}
    assert len(blob_gets) == len(files) + 1 and len(set(blob_gets) - file_blobs) == 1  # and the record
    assert all("range" not in h for h in relay.gets())


def snapshot_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and ".archive" not in p.parts}


# ------------------------------------------------------------------ the ranged reads of open_key
@pytest.fixture
def three_parts(arc: S3Archive, monkeypatch: pytest.MonkeyPatch) -> tuple[str, bytes]:
    """An object of three parts of 64 KiB (the part size made small for the test)."""
    from archive.backends import s3_io

    data = os.urandom(3 * 64 * 1024 - 100)
    arc.write_key("tmp/three-parts", [data])  # one PUT: parts that small are refused by S3
    monkeypatch.setattr(s3_io, "PART_SIZE", 64 * 1024)
    return "tmp/three-parts", data


def read_all(arc: S3Archive, key: str) -> bytes:
    with arc.open_key(key) as stream:
        return stream.read()


def test_ranged_reads_retry_a_server_error_and_a_cut_body(arc: S3Archive, relay: WireRelay,
                                                          three_parts: tuple[str, bytes]) -> None:
    key, data = three_parts
    relay.heads.clear()
    relay.answers = [s3_error("503 Service Unavailable", "SlowDown")]
    relay.cut_next_get = 1000
    assert read_all(arc, key) == data
    assert len(relay.gets()) == 5  # three ranges, one answered 503, one cut
    relay.heads.clear()
    arc.write_key("tmp/empty", [b""])
    assert read_all(arc, "tmp/empty") == b""  # a range of an empty object is refused: read whole


def test_a_redirected_ranged_read_goes_back_to_the_client(arc: S3Archive, relay: WireRelay,
                                                          three_parts: tuple[str, bytes]) -> None:
    key, data = three_parts
    relay.answers = [s3_error("307 Temporary Redirect", "TemporaryRedirect")]
    through_botocore = botocore_sends(arc)
    assert read_all(arc, key) == data
    assert len(through_botocore) == 3
