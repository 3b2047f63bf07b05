"""The S3 backend against a real S3 server (moto's, tests/s3d.py): the shared contract, then
what only S3 has: conditional writes, multipart transfers, retries, credentials, the CLI."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

import archive
from archive import layout
from archive.backends import s3_io
from archive.backends.s3 import MTIME_FIELD, S3Archive
from archive.errors import BackendError, IntegrityError, InvalidInputError, NotAnArchiveError
from archive.hashing import BlobId
from archive.interface import KeyInfo
from tests.backends.conformance import BackendContract
from tests.conftest import make_tree
from tests.s3d import S3Server, new_bucket, start_s3_server, stop_s3_server
from tests.sshd import free_port
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


@pytest.fixture
def location(s3_env: S3Server, s3_bucket: str) -> str:
    """An initialized archive below ``s3://bucket/store``."""
    url = s3_env.location(s3_bucket, "store")
    archive.get_interface(url, create=True).close()
    return url


class Relay:
    """A TCP relay from 127.0.0.1:``port`` to the S3 server that can misbehave on purpose.

    ``cut_after``: the first connection that carries more than that many bytes to the server
    is cut there (both sockets closed), once. ``hide_condition``: every ``If-None-Match``
    header is renamed on its way, so the server sees a plain PUT, as a server that ignores
    the header would.
    """

    def __init__(self, upstream: int, cut_after: int | None = None, hide_condition: bool = False) -> None:
        self._upstream, self._cut_after, self._hide = upstream, cut_after, hide_condition
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.cuts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            server = socket.create_connection(("127.0.0.1", self._upstream))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, upstream: bool) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                if upstream and self._hide:
                    data = data.replace(b"If-None-Match", b"Xx-None-Match").replace(b"if-none-match", b"xx-none-match")
                if upstream and self._cut_after is not None and self.cuts == 0 and sent + len(data) > self._cut_after:
                    target.sendall(data[:self._cut_after - sent])
                    self.cuts += 1
                    break
                target.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


FILES = {"a.txt": b"alpha", "sub/b.bin": bytes(range(256)) * 4000, "sub/deeper/c": b"",
         "with space & %.txt": b"quoted"}


# ------------------------------------------------------------------ the CLI
def test_push_pull_ls_show_verify_gc_through_the_cli(location: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", FILES)
    push = run("-a", location, "push", str(src), "demo", "1.0.0", "-m", "first")
    assert push.returncode == 0, push.stderr
    assert run("-a", location, "push", str(src), "demo", "1.1.0").returncode == 0
    assert run("-a", location, "ls").stdout.split() == ["demo"]
    assert run("-a", location, "ls", "demo").stdout.split() == ["1.1.0", "1.0.0"]
    shown = run("-a", location, "show", "demo", "<1.1")
    assert shown.returncode == 0 and shown.stdout.splitlines()[0] == "demo 1.0.0" and "sub/b.bin" in shown.stdout
    pull = run("-a", location, "pull", "demo", "^1", "--to", str(tmp_path / "out"))
    assert pull.returncode == 0, pull.stderr
    assert snapshot(tmp_path / "out") == FILES
    verify = run("-a", location, "verify", "--full")
    assert verify.returncode == 0 and "0 problem(s)" in verify.stdout, verify.stdout + verify.stderr
    gc = run("-a", location, "gc")
    assert gc.returncode == 0, gc.stderr
    assert snapshot(archive.get_interface(location).download("demo", "1.0.0", tmp_path / "again", progress=False)) == FILES


def test_gc_removes_an_old_orphan_and_keeps_the_releases(location: str, s3_env: S3Server, s3_bucket: str,
                                                         tmp_path: Path) -> None:
    with archive.get_interface(location) as arc:
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


def test_racing_pushes_of_one_version_end_with_one_record(location: str, tmp_path: Path) -> None:
    """Two processes push other content as the same version: one wins, the other fails in one line."""
    folders = [make_tree(tmp_path / f"src{i}", {"data.txt": f"content {i}".encode()}) for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "archive", "-a", location, "push", str(folder), "race", "1.0.0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for folder in folders]
    results = [(proc.wait(timeout=120), proc.stderr.read()) for proc in procs]
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert loser.startswith("archive: error: release race 1.0.0 exists already") and loser.count("\n") == 1, loser
    with archive.get_interface(location) as arc:
        assert arc.versions("race") == ["1.0.0"]
        winner = folders[[code for code, _ in results].index(0)]
        out = arc.download("race", "1.0.0", tmp_path / "out", progress=False)
        assert snapshot(out) == snapshot(winner)
        assert arc.verify(full=True).ok


# ------------------------------------------------------------------ large objects
def test_multipart_upload_and_ranged_parallel_download(location: str, s3_env: S3Server, s3_bucket: str,
                                                       tmp_path: Path) -> None:
    """A blob of three parts goes up by a multipart upload (under tmp/, then copied to its key,
    known only at the end) and comes down by ranged GETs on several threads, byte-identical."""
    big = os.urandom(s3_io.PART_SIZE * 2 + 12345)  # three parts, the last one short
    calls: list[tuple[str, str, str]] = []

    def seen(params: dict, model, **_: object) -> None:
        calls.append((model.name, params.get("Range", ""), threading.current_thread().name))

    with archive.get_interface(location) as arc:
        arc.client.meta.events.register("provide-client-params.s3", seen)
        release = arc.publish(make_tree(tmp_path / "src", {"big.bin": big}), "big", "1.0.0", progress=False)
        key = layout.blob_key(release.files["big.bin"].blob)
        assert sum(1 for name, _, _ in calls if name == "UploadPart") == 3
        assert [name for name, _, _ in calls].count("CopyObject") == 1
        assert time.time() - arc.stat_key(key).mtime < 600
        assert arc.list_keys(layout.TMP_DIR) == []
        calls.clear()
        with arc.open_key(key) as stream:
            assert hashlib.sha256(stream.read()).digest() == hashlib.sha256(big).digest()
        ranges = sorted(((r, thread) for name, r, thread in calls if name == "GetObject"),
                        key=lambda call: int(call[0][6:].split("-")[0]))
        assert [r for r, _ in ranges] == [f"bytes=0-{s3_io.PART_SIZE - 1}",
                                          f"bytes={s3_io.PART_SIZE}-{2 * s3_io.PART_SIZE - 1}",
                                          f"bytes={2 * s3_io.PART_SIZE}-{len(big) - 1}"]
        assert all(thread.startswith("archive-s3") for _, thread in ranges[1:])  # fetched ahead, in parallel
        out = arc.download("big", "1.0.0", tmp_path / "out", use_cache=False, progress=False)
        assert (out / "big.bin").read_bytes() == big
        arc.write_key("releases/big/known-key", [big[:5_000_000], big[5_000_000:]])  # a key known at the start
        assert arc.read_key("releases/big/known-key", len(big)) == big
    head = s3_env.client().head_object(Bucket=s3_bucket, Key="store/releases/big/known-key")
    assert head["ETag"].endswith('-3"'), head["ETag"]  # straight to its key by a multipart upload


def test_a_failed_multipart_write_leaves_no_object_and_no_upload(location: str, s3_env: S3Server,
                                                                 s3_bucket: str) -> None:
    def failing() -> Iterator[bytes]:
        for _ in range(20):
            yield os.urandom(1024 * 1024)
        raise IntegrityError("boom")

    with archive.get_interface(location) as arc:
        for key in ("blobs/sha256/cd/known", lambda: "blobs/sha256/cd/never"):
            with pytest.raises(IntegrityError):
                arc.write_key(key, failing())
        assert arc.list_keys("blobs/sha256/cd") == [] and arc.list_keys(layout.TMP_DIR) == []
    assert s3_env.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_a_large_copy_goes_by_parts(location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects over 5 GiB are copied by UploadPartCopy (the limit lowered here to try it)."""
    monkeypatch.setattr(s3_io, "COPY_LIMIT", 1024)
    monkeypatch.setattr(s3_io, "COPY_PART", 5 * 1024 * 1024)
    data = os.urandom(11 * 1024 * 1024)
    with archive.get_interface(location) as arc:
        arc.write_key("blobs/sha256/ab/large", [data])
        arc.move_key("blobs/sha256/ab/large", "trash/blobs/sha256/ab/large")
        assert arc.read_key("trash/blobs/sha256/ab/large", len(data)) == data
        assert not arc.has_key("blobs/sha256/ab/large")


# ------------------------------------------------------------------ failures, each in one line
def test_a_connection_cut_mid_upload_is_retried(s3_env: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024)
    relay = Relay(s3_env.port)
    try:
        url = s3_env.location(s3_bucket, "store").replace(s3_env.endpoint, relay.endpoint())
        assert run("init", url).returncode == 0
        relay._cut_after = 1024 * 1024  # from now on: the first request past 1 MiB is cut
        push = run("-a", url, "push", str(make_tree(tmp_path / "src", {"big.bin": big})), "cut", "1.0.0")
        assert push.returncode == 0, push.stderr
        assert relay.cuts == 1
    finally:
        relay.close()
    with archive.get_interface(s3_env.location(s3_bucket, "store")) as arc:
        assert snapshot(arc.download("cut", "1.0.0", tmp_path / "out", progress=False)) == {"big.bin": big}


def test_a_server_that_ignores_if_none_match_is_refused(s3_env: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    relay = Relay(s3_env.port, hide_condition=True)
    try:
        url = s3_env.location(s3_bucket, "store").replace(s3_env.endpoint, relay.endpoint())
        one_line_error(run("init", url), "does not enforce If-None-Match")
        assert run("init", url + "&unsafe_no_conditional_writes=1").returncode == 0
        src = make_tree(tmp_path / "src", {"f": b"1"})
        one_line_error(run("-a", url, "push", str(src), "n", "1.0.0"), "unsafe_no_conditional_writes=1")
        pushed = run("-a", url, "push", str(src), "n", "1.0.0", env={"ARCHIVE_S3_UNSAFE_NO_CONDITIONAL_WRITES": "1"})
        assert pushed.returncode == 0, pushed.stderr
    finally:
        relay.close()
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert not [k for k in keys if k.startswith("store/tmp/")], keys  # the probes were removed


def test_wrong_credentials_are_one_line_and_never_shown(tmp_path: Path, s3_env: S3Server) -> None:
    server = start_s3_server(tmp_path / "auth", authenticate=True)
    try:
        bucket = new_bucket(server)
        url = server.location(bucket, "store")
        good = server.env()
        assert run("init", url, env=good).returncode == 0
        for wrong in ({"AWS_SECRET_ACCESS_KEY": "wrong-secret-xyz"}, {"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY"}):
            result = run("-a", url, "ls", env={**good, **wrong})
            one_line_error(result, "access refused")
            verbose = run("-vv", "-a", url, "ls", env={**good, **wrong})
            assert good["AWS_SECRET_ACCESS_KEY"] not in verbose.stderr + verbose.stdout
            assert "wrong-secret-xyz" not in verbose.stderr + verbose.stdout
    finally:
        stop_s3_server(server)


def test_no_credentials_at_all_is_one_line(location: str) -> None:
    result = run("-a", location, "ls", env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    one_line_error(result, "no AWS credentials found")


def test_a_missing_bucket_is_one_line(s3_env: S3Server) -> None:
    url = s3_env.location("no-such-bucket-here", "store")
    one_line_error(run("-a", url, "ls"), "the bucket 'no-such-bucket-here' does not exist")
    one_line_error(run("init", url), "the bucket 'no-such-bucket-here' does not exist")


def test_no_archive_json_is_not_an_archive(s3_env: S3Server, s3_bucket: str) -> None:
    s3_env.client().put_object(Bucket=s3_bucket, Key="plain/readme.txt", Body=b"hello")
    url = s3_env.location(s3_bucket, "plain")
    one_line_error(run("-a", url, "ls"), "is not an archive (create one with: archive init")
    with pytest.raises(NotAnArchiveError):
        archive.get_interface(url)


def test_an_unreachable_endpoint_is_one_line(s3_env: S3Server) -> None:
    url = f"s3://bucket/store?endpoint=http://127.0.0.1:{free_port()}"
    result = run("-a", url, "ls", env={"AWS_MAX_ATTEMPTS": "2"})  # the user's retry setting is kept
    one_line_error(result, "cannot reach the S3 server")


@pytest.mark.parametrize("location, problem", [
    ("s3://", "not an s3://bucket/prefix location"),
    ("s3://bucket/x?cache=no", "unknown parameter 'cache'"),
    ("s3://bucket/x?addressing=sideways", "addressing must be one of"),
    ("s3://bucket/x?endpoint=ftp://h", "endpoint must be an http:// or https:// URL"),
    ("s3://bucket/a/../b", "the prefix has an empty, '.' or '..' part"),
    ("s3://AKIAKEY:secret-in-url@bucket/x", "takes no credentials"),
])
def test_malformed_locations_are_refused_in_one_line(location: str, problem: str, s3_env: S3Server) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(problem)) as refused:
        archive.get_interface(location)
    assert "secret-in-url" not in str(refused.value)
    result = run("-a", location, "ls")
    one_line_error(result, problem)
    assert "secret-in-url" not in result.stderr


def test_endpoint_and_profile_from_the_aws_configuration(s3_env: S3Server, s3_bucket: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No parameter in the location: the endpoint, region and keys come from an AWS profile."""
    credentials = Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"])
    credentials.write_text(f"[lab]\naws_access_key_id = {s3_env.access_key}\n"
                           f"aws_secret_access_key = {s3_env.secret_key}\n")
    Path(os.environ["AWS_CONFIG_FILE"]).write_text(f"[profile lab]\nregion = eu-west-1\n"
                                                   f"endpoint_url = {s3_env.endpoint}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    assert run("init", f"s3://{s3_bucket}/p?profile=lab").returncode == 0
    result = run("-a", f"s3://{s3_bucket}/p", "ls", env={"AWS_PROFILE": "lab"})
    assert result.returncode == 0, result.stderr
    one_line_error(run("-a", f"s3://{s3_bucket}/p?profile=nobody", "ls"), "nobody")


def test_an_object_replaced_while_read_is_never_spliced(location: str, s3_env: S3Server, s3_bucket: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts after the first are asked for with If-Match on the first answer's ETag."""
    monkeypatch.setattr(s3_io, "PART_SIZE", 256 * 1024)  # 24 parts: more than the window reads ahead
    old, new = os.urandom(6 * 1024 * 1024), os.urandom(6 * 1024 * 1024)
    client = s3_env.client()  # another writer, with its own part size
    client.put_object(Bucket=s3_bucket, Key="store/blobs/sha256/ab/changing", Body=old)
    with archive.get_interface(location) as arc:
        with pytest.raises(BackendError, match="blobs/sha256/ab/changing was replaced while it was being read"):
            with arc.open_key("blobs/sha256/ab/changing") as stream:
                assert stream.read(100) == old[:100]
                client.put_object(Bucket=s3_bucket, Key="store/blobs/sha256/ab/changing", Body=new)
                stream.read()


def test_without_boto3_the_error_says_what_to_install(s3_env: S3Server) -> None:
    """An installation without the ``s3`` extra (boto3 made unimportable in the child)."""
    code = ("import runpy, sys; sys.modules['boto3'] = None; sys.argv = ['archive', '-a', 's3://bucket/x', 'ls'];"
            " runpy.run_module('archive', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    one_line_error(result, "s3:// locations need boto3: pip install 'archive[s3]'")


def test_names_another_tool_stored_never_lead_outside_or_break_listings(location: str, s3_env: S3Server,
                                                                         s3_bucket: str, tmp_path: Path) -> None:
    """Object keys with ``..``, ``.``, empty or hidden parts, and a write time that is not one,
    as a hand or another tool may leave them: not listed, not followed, not trusted."""
    with archive.get_interface(location) as arc:
        arc.publish(make_tree(tmp_path / "src", {"f": b"1"}), "demo", "1.0.0", progress=False)
    client = s3_env.client()
    for key in ("store/releases/../evil/1.0.0", "store/releases/./dot/1.0.0", "store/releases//empty/1.0.0",
                "store/releases/.hidden/1.0.0", "store/releases/demo/../../archive.json"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"sha256:" + b"0" * 64)
    blob = layout.blob_key(BlobId.of_bytes(b"odd"))
    client.put_object(Bucket=s3_bucket, Key=f"store/{blob}", Body=b"odd", Metadata={MTIME_FIELD: "inf"})
    with archive.get_interface(location) as arc:
        assert arc.list_keys("releases") == ["demo"]
        assert arc.list_keys("releases/demo") == ["1.0.0", "index.json"]
        assert arc.names() == ["demo"] and arc.versions("demo") == ["1.0.0"]
        assert time.time() - arc.stat_key(blob).mtime < 600  # LastModified, not "inf"
    assert run("-a", location, "ls").stdout.split() == ["demo"]


def test_an_archive_at_the_root_of_a_bucket(s3_env: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    url = s3_env.location(s3_bucket)
    assert run("init", url).returncode == 0
    assert run("-a", url, "push", str(make_tree(tmp_path / "src", FILES)), "demo", "1.0.0").returncode == 0
    assert run("-a", url, "ls").stdout.split() == ["demo"]
    keys = {o["Key"] for o in s3_env.client().list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert "archive.json" in keys and "releases/demo/1.0.0" in keys


def test_a_listing_reads_every_page(location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import archive.backends.s3 as s3_module

    monkeypatch.setattr(s3_module, "LIST_PAGE", 3)
    with archive.get_interface(location) as arc:
        for i in range(7):
            arc.write_key(f"releases/n/{i}.0.0", [b"p"])
            arc.write_key(f"releases/m{i}/1.0.0", [b"p"])
        calls: list[str] = []
        arc.client.meta.events.register("provide-client-params.s3.ListObjectsV2", lambda params, **_: calls.append(""))
        assert arc.list_keys("releases/n") == [f"{i}.0.0" for i in range(7)]
        assert arc.list_keys("releases") == sorted(["n", *(f"m{i}" for i in range(7))])
        assert len(calls) == 3 + 3
