"""The S3 backend against a real S3 server (moto's, tests/s3d.py): the shared contract, then
what only S3 has: conditional writes, multipart transfers, retries, credentials, the CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

import archive
from archive import layout
from archive.backends import s3_io
from archive.backends.s3 import MTIME_FIELD, S3Archive
from archive.errors import IntegrityError
from archive.hashing import BlobId
from archive.interface import KeyInfo
from tests.backends.conformance import BackendContract
from tests.backends.s3_wire import WireRelay
from tests.conftest import make_tree
from tests.s3d import S3Server
from tests.test_publish import snapshot


def set_mtime(server: S3Server, bucket: str, arc: S3Archive, key: str, mtime: float) -> None:
    """Give the object at ``key`` another write time, as if written then (like ``os.utime``)."""
    name = arc.object_key(key)
    server.client().copy_object(Bucket=bucket, Key=name, CopySource={"Bucket": bucket, "Key": name},
                                Metadata={MTIME_FIELD: repr(mtime)}, MetadataDirective="REPLACE")


class TestS3Contract(BackendContract):
    # S3 has no symbolic links, FIFOs, devices or folders: a key names an object or nothing, and
    # "releases/n" and "releases/n/1.0.0" are two unrelated keys, so none of these can arise (the
    # data is verified against its hash above the backend anyway). Object names are UTF-8 by the
    # S3 protocol, so a name that is not cannot be listed either.
    test_a_link_in_place_of_an_object_is_never_followed = None
    test_a_link_in_place_of_a_folder_is_never_followed = None
    test_a_fifo_in_place_of_an_object_is_refused_without_blocking = None
    test_a_folder_in_place_of_an_object_is_refused = None
    test_a_file_in_place_of_a_folder_is_refused = None
    test_names_that_are_not_utf8_are_skipped_in_listings = None

    @pytest.fixture
    def arc(self, s3_env: S3Server, s3_bucket: str) -> Iterator[S3Archive]:
        with archive.get_interface(s3_env.location(s3_bucket, "store"), create=True) as arc:
            assert isinstance(arc, S3Archive)
            arc.test_server = s3_env
            yield arc

    def test_move_renames_and_keeps_mtime(self, arc: S3Archive) -> None:
        arc.write_key("blobs/sha256/ab/moved", [b"content"])
        set_mtime(arc.test_server, arc.bucket, arc, "blobs/sha256/ab/moved", 1_000_000_000.0)
        arc.move_key("blobs/sha256/ab/moved", "blobs/sha256/ab/moved.aside")
        assert not arc.has_key("blobs/sha256/ab/moved")
        assert arc.read_key("blobs/sha256/ab/moved.aside", 100) == b"content"
        assert arc.stat_key("blobs/sha256/ab/moved.aside") == KeyInfo(7, 1_000_000_000.0)

    def test_move_creates_target_folders(self, arc: S3Archive) -> None:
        arc.write_key("blobs/sha256/cd/x", [b"x"])
        arc.move_key("blobs/sha256/cd/x", "trash/deep/er/x")
        assert arc.read_key("trash/deep/er/x", 10) == b"x"
        assert arc.list_keys("trash/deep") == ["er"]

    def test_a_key_never_leads_outside_the_root(self, arc: S3Archive) -> None:
        from archive.errors import InvalidInputError

        for key in ("../outside", "releases/../../outside", "/etc/passwd", "releases//x", "./archive.json"):
            for action in (lambda: arc.stat_key(key), lambda: arc.read_key(key, 10),
                           lambda: arc.write_key(key, [b"x"]), lambda: arc.delete_key(key),
                           lambda: arc.move_key("archive.json", key), lambda: arc.list_keys(key)):
                with pytest.raises(InvalidInputError, match="is not a key inside the archive"):
                    action()
        objects = arc.test_server.client().list_objects_v2(Bucket=arc.bucket).get("Contents", [])
        assert all(o["Key"].startswith("store/") for o in objects), objects


# ------------------------------------------------------------------ helpers
def run(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.startswith("archive: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


FILES = {"a.txt": b"alpha", "sub/b.bin": bytes(range(256)) * 4000, "sub/deeper/c": b"",
         "with space & %.txt": b"quoted"}


# ------------------------------------------------------------------ the CLI
def test_push_pull_ls_show_verify_gc_through_the_cli(s3_location: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", FILES)
    push = run("-a", s3_location, "push", str(src), "demo", "1.0.0", "-m", "first")
    assert push.returncode == 0, push.stderr
    assert run("-a", s3_location, "push", str(src), "demo", "1.1.0").returncode == 0
    assert run("-a", s3_location, "ls").stdout.split() == ["demo"]
    assert [line.split()[0] for line in run("-a", s3_location, "ls", "demo").stdout.splitlines()] == ["1.1.0", "1.0.0"]
    shown = run("-a", s3_location, "show", "demo", "<1.1")
    assert shown.returncode == 0 and shown.stdout.splitlines()[0] == "demo 1.0.0" and "sub/b.bin" in shown.stdout
    pull = run("-a", s3_location, "pull", "demo", "^1", "--to", str(tmp_path / "out"))
    assert pull.returncode == 0, pull.stderr
    assert snapshot(tmp_path / "out") == FILES
    verify = run("-a", s3_location, "verify", "--full")
    assert verify.returncode == 0 and "0 problem(s)" in verify.stdout, verify.stdout + verify.stderr
    gc = run("-a", s3_location, "gc")
    assert gc.returncode == 0, gc.stderr
    with archive.get_interface(s3_location) as arc:
        assert snapshot(arc.download("demo", "1.0.0", tmp_path / "again", progress=False)) == FILES


def test_gc_removes_an_old_orphan_and_keeps_the_releases(s3_location: str, s3_env: S3Server, s3_bucket: str,
                                                         tmp_path: Path) -> None:
    with archive.get_interface(s3_location) as arc:
        arc.publish(make_tree(tmp_path / "src", FILES), "demo", "1.0.0", progress=False)
        orphan = BlobId.of_bytes(b"nobody's")
        arc.write_key(layout.blob_key(orphan), [b"nobody's"])
        set_mtime(s3_env, s3_bucket, arc, layout.blob_key(orphan), time.time() - 48 * 3600)
        young = BlobId.of_bytes(b"young")
        arc.write_key(layout.blob_key(young), [b"young"])
        report = arc.collect_garbage()
        assert report.removed == [layout.blob_key(orphan)] and report.kept_young == 1
        assert not arc.has_key(layout.trash_key(orphan)) and arc.has_key(layout.blob_key(young))
        assert arc.verify(full=True).ok


def test_racing_pushes_of_one_version_end_with_one_record(s3_location: str, tmp_path: Path) -> None:
    """Two processes push other content as the same version: one wins, the other fails in one line."""
    folders = [make_tree(tmp_path / f"src{i}", {"data.txt": f"content {i}".encode()}) for i in range(2)]
    command = [sys.executable, "-m", "archive", "-a", s3_location, "push"]
    procs = [subprocess.Popen([*command, str(folder), "race", "1.0.0"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for folder in folders]
    results = [(proc.wait(timeout=120), proc.stderr.read()) for proc in procs]
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert loser.startswith("archive: error: release race 1.0.0 exists already") and loser.count("\n") == 1, loser
    with archive.get_interface(s3_location) as arc:
        assert arc.versions("race") == ["1.0.0"]
        winner = folders[[code for code, _ in results].index(0)]
        out = arc.download("race", "1.0.0", tmp_path / "out", progress=False)
        assert snapshot(out) == snapshot(winner)
        assert arc.verify(full=True).ok


# ------------------------------------------------------------------ large objects
def test_multipart_upload_and_ranged_parallel_download(s3_location: str, s3_env: S3Server, s3_bucket: str,
                                                       tmp_path: Path) -> None:
    """A blob of three parts goes up by a multipart upload (under tmp/, then copied to its key,
    known only at the end) and comes down by ranged GETs, the later ones in parallel and pinned
    to the first answer's ETag (seen on the wire: they skip botocore's client), byte-identical."""
    big = os.urandom(s3_io.PART_SIZE * 2 + 12345)  # three parts, the last one short
    calls: list[str] = []
    relay = WireRelay(s3_env.port, delay=0.5)  # slow answers: a part asked for after another's answer comes late
    try:
        with archive.get_interface(s3_location.replace(s3_env.endpoint, relay.endpoint())) as arc:
            arc.client.meta.events.register("provide-client-params.s3", lambda model, **_: calls.append(model.name))
            release = arc.publish(make_tree(tmp_path / "src", {"big.bin": big}), "big", "1.0.0", progress=False)
            key = layout.blob_key(release.files["big.bin"].blob)
            assert calls.count("UploadPart") == 3 and calls.count("CopyObject") == 1
            assert time.time() - arc.stat_key(key).mtime < 600
            assert arc.list_keys(layout.TMP_DIR) == []
            relay.heads.clear()
            with arc.open_key(key) as stream:
                assert hashlib.sha256(stream.read()).digest() == hashlib.sha256(big).digest()
            gets = sorted(relay.gets(), key=lambda head: int(head["range"][6:].split("-")[0]))
            assert [head["range"] for head in gets] == [f"bytes=0-{s3_io.PART_SIZE - 1}",
                                                        f"bytes={s3_io.PART_SIZE}-{2 * s3_io.PART_SIZE - 1}",
                                                        f"bytes={2 * s3_io.PART_SIZE}-{len(big) - 1}"]
            etag = arc.client.head_object(Bucket=arc.bucket, Key=arc.object_key(key))["ETag"]
            assert "if-match" not in gets[0] and [head["if-match"] for head in gets[1:]] == [etag, etag]
            assert abs(float(gets[2]["at"]) - float(gets[1]["at"])) < 0.5  # fetched ahead, in parallel
            out = arc.download("big", "1.0.0", tmp_path / "out", use_cache=False, progress=False)
            assert (out / "big.bin").read_bytes() == big
            arc.write_key("releases/big/known-key", [big[:5_000_000], big[5_000_000:]])  # a key known at the start
            assert arc.read_key("releases/big/known-key", len(big)) == big
    finally:
        relay.close()
    head = s3_env.client().head_object(Bucket=s3_bucket, Key="store/releases/big/known-key")
    assert head["ETag"].endswith('-3"'), head["ETag"]  # straight to its key by a multipart upload


def test_a_failed_multipart_write_leaves_no_object_and_no_upload(s3_location: str, s3_env: S3Server,
                                                                 s3_bucket: str) -> None:
    def failing() -> Iterator[bytes]:
        for _ in range(20):
            yield os.urandom(1024 * 1024)
        raise IntegrityError("boom")

    with archive.get_interface(s3_location) as arc:
        for key in ("blobs/sha256/cd/known", lambda: "blobs/sha256/cd/never"):
            with pytest.raises(IntegrityError):
                arc.write_key(key, failing())
        assert arc.list_keys("blobs/sha256/cd") == [] and arc.list_keys(layout.TMP_DIR) == []
    assert s3_env.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_a_large_copy_goes_by_parts(s3_location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects over 5 GiB are copied by UploadPartCopy (the limit lowered here to try it)."""
    monkeypatch.setattr(s3_io, "COPY_LIMIT", 1024)
    monkeypatch.setattr(s3_io, "COPY_PART", 5 * 1024 * 1024)
    data = os.urandom(11 * 1024 * 1024)
    with archive.get_interface(s3_location) as arc:
        arc.write_key("blobs/sha256/ab/large", [data])
        arc.move_key("blobs/sha256/ab/large", "trash/blobs/sha256/ab/large")
        assert arc.read_key("trash/blobs/sha256/ab/large", len(data)) == data
        assert not arc.has_key("blobs/sha256/ab/large")


def test_names_another_tool_stored_never_lead_outside_or_break_listings(s3_location: str, s3_env: S3Server,
                                                                         s3_bucket: str, tmp_path: Path) -> None:
    """Object keys with ``..``, ``.``, empty or hidden parts, and a write time that is not one,
    as a hand or another tool may leave them: not listed, not followed, not trusted."""
    with archive.get_interface(s3_location) as arc:
        arc.publish(make_tree(tmp_path / "src", {"f": b"1"}), "demo", "1.0.0", progress=False)
    client = s3_env.client()
    for key in ("store/releases/../evil/1.0.0", "store/releases/./dot/1.0.0", "store/releases//empty/1.0.0",
                "store/releases/.hidden/1.0.0", "store/releases/demo/../../archive.json"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"sha256:" + b"0" * 64)
    blob = layout.blob_key(BlobId.of_bytes(b"odd"))
    client.put_object(Bucket=s3_bucket, Key=f"store/{blob}", Body=b"odd", Metadata={MTIME_FIELD: "inf"})
    with archive.get_interface(s3_location) as arc:
        assert arc.list_keys("releases") == ["demo"]
        assert arc.list_keys("releases/demo") == ["1.0.0", "index.json"]
        assert arc.names() == ["demo"] and arc.versions("demo") == ["1.0.0"]
        assert time.time() - arc.stat_key(blob).mtime < 600  # LastModified, not "inf"
    assert run("-a", s3_location, "ls").stdout.split() == ["demo"]


def test_an_archive_at_the_root_of_a_bucket(s3_env: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    url = s3_env.location(s3_bucket)
    assert run("init", url).returncode == 0
    assert run("-a", url, "push", str(make_tree(tmp_path / "src", FILES)), "demo", "1.0.0").returncode == 0
    assert run("-a", url, "ls").stdout.split() == ["demo"]
    keys = {o["Key"] for o in s3_env.client().list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert "archive.json" in keys and "releases/demo/1.0.0" in keys


def test_a_listing_reads_every_page(s3_location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import archive.backends.s3 as s3_module

    monkeypatch.setattr(s3_module, "LIST_PAGE", 3)
    with archive.get_interface(s3_location) as arc:
        for i in range(7):
            arc.write_key(f"releases/n/{i}.0.0", [b"p"])
            arc.write_key(f"releases/m{i}/1.0.0", [b"p"])
        calls: list[str] = []
        arc.client.meta.events.register("provide-client-params.s3.ListObjectsV2", lambda params, **_: calls.append(""))
        assert arc.list_keys("releases/n") == [f"{i}.0.0" for i in range(7)]
        assert arc.list_keys("releases") == sorted(["n", *(f"m{i}" for i in range(7))])
        assert len(calls) == 3 + 3


def test_mirror_a_folder_archive_to_s3_and_back(s3_env: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    folder = tmp_path / "local"
    with archive.get_interface(folder, create=True) as arc:
        arc.publish(make_tree(tmp_path / "src", FILES), "demo", "1.0.0", progress=False)
    url = s3_env.location(s3_bucket, "mirror")
    result = run("mirror", str(folder), url, "--create")
    assert result.returncode == 0, result.stderr
    back = run("mirror", url, str(tmp_path / "back"), "--create")
    assert back.returncode == 0, back.stderr
    with archive.get_interface(tmp_path / "back") as arc:
        assert snapshot(arc.download("demo", "1.0.0", tmp_path / "out", progress=False)) == FILES
        assert arc.verify(full=True).ok
