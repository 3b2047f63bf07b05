"""The S3 backend when things go wrong: cut connections, a server that ignores conditional
writes, wrong or missing credentials, a missing bucket, an unreachable or malformed location,
an object replaced while it is read. Each failure is one line, through the CLI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import archive
from archive.backends import s3_io
from archive.errors import BackendError, InvalidInputError, NotAnArchiveError
from tests.backends.test_s3 import one_line_error, run
from tests.conftest import make_tree
from tests.relay import Relay
from tests.s3d import S3Server, new_bucket, start_s3_server, stop_s3_server
from tests.sshd import free_port
from tests.test_publish import snapshot

def hide_condition(data: bytes) -> bytes:
    """Every ``If-None-Match`` header renamed, so the server sees a plain PUT, as a server that
    ignores the header would."""
    return data.replace(b"If-None-Match", b"Xx-None-Match").replace(b"if-none-match", b"xx-none-match")


# ------------------------------------------------------------------ failures, each in one line
def test_a_connection_cut_mid_upload_is_retried(s3_env: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024)
    relay = Relay(s3_env.port)
    try:
        url = s3_env.location(s3_bucket, "store").replace(s3_env.endpoint, relay.endpoint())
        assert run("init", url).returncode == 0
        relay.cut_after = 1024 * 1024  # from now on: the first request past 1 MiB is cut
        push = run("-a", url, "push", str(make_tree(tmp_path / "src", {"big.bin": big})), "cut", "1.0.0")
        assert push.returncode == 0, push.stderr
        assert relay.cuts == 1
    finally:
        relay.close()
    with archive.get_interface(s3_env.location(s3_bucket, "store")) as arc:
        assert snapshot(arc.download("cut", "1.0.0", tmp_path / "out", progress=False)) == {"big.bin": big}


def test_sigint_during_a_multipart_push_aborts_the_upload(s3_env: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    """Ctrl-C while parts are on their way: exit 130 promptly, no release, no upload left open."""
    relay = Relay(s3_env.port, rate=4 * 1024 * 1024)
    client = s3_env.client()
    try:
        url = s3_env.location(s3_bucket, "store").replace(s3_env.endpoint, relay.endpoint())
        assert run("init", url).returncode == 0
        src = make_tree(tmp_path / "src", {"big.bin": os.urandom(96 * 1024 * 1024)})
        proc = subprocess.Popen([sys.executable, "-m", "archive", "-a", url, "push", str(src), "big", "1.0.0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(1)  # parts in flight
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        relay.close()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "archive: interrupted", err
    assert elapsed < 8, f"took {elapsed:.1f} s to stop"
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    with archive.get_interface(s3_env.location(s3_bucket, "store")) as arc:
        assert arc.versions("big") == [] and arc.list_keys("tmp") == []


def test_a_server_that_ignores_if_none_match_is_refused(s3_env: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    relay = Relay(s3_env.port, rewrite=hide_condition)
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


def test_no_credentials_at_all_is_one_line(s3_location: str) -> None:
    result = run("-a", s3_location, "ls", env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    one_line_error(result, "no AWS credentials found")


def test_expired_credentials_are_one_line_and_never_shown(s3_location: str, tmp_path: Path) -> None:
    """Temporary credentials (SSO, an assumed role, a credential_process) that expired and come
    back expired when botocore refreshes them: one line, before any request, no secret shown."""
    process = tmp_path / "expired-credentials"
    process.write_text("#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"AKIAEXPIRED\", \"SecretAccessKey\":"
                       " \"expired-secret-zq\", \"SessionToken\": \"tok\", \"Expiration\": \"2020-01-01T00:00:00Z\"}'\n")
    process.chmod(0o755)
    config = tmp_path / "aws" / "config"
    config.write_text(f"[default]\ncredential_process = {process}\n")
    for args in (("ls",), ("-vv", "ls")):
        result = run("-a", s3_location, *args, env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
        assert "expired-secret-zq" not in result.stdout + result.stderr
    one_line_error(run("-a", s3_location, "ls", env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}),
                   "the AWS credentials have expired")


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


@pytest.mark.parametrize("given, problem", [
    ("s3://", "not an s3://bucket/prefix location"),
    ("s3://bucket/x?cache=no", "unknown parameter 'cache'"),
    ("s3://bucket/x?addressing=sideways", "addressing must be one of"),
    ("s3://bucket/x?endpoint=ftp://h", "endpoint must be an http:// or https:// URL"),
    ("s3://bucket/a/../b", "the prefix has an empty, '.' or '..' part"),
    ("s3://AKIAKEY:secret-in-url@bucket/x", "takes no credentials"),
])
def test_malformed_locations_are_refused_in_one_line(given: str, problem: str, s3_env: S3Server) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(problem)) as refused:
        archive.get_interface(given)
    assert "secret-in-url" not in str(refused.value)
    result = run("-a", given, "ls")
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


def test_endpoint_from_the_environment(s3_env: S3Server, s3_bucket: str) -> None:
    """``AWS_ENDPOINT_URL`` serves as the endpoint, with path-style addressing."""
    assert run("init", f"s3://{s3_bucket}/e", env={"AWS_ENDPOINT_URL": s3_env.endpoint}).returncode == 0
    with archive.get_interface(s3_env.location(s3_bucket, "e")) as arc:
        assert arc.has_key("archive.json")


def test_an_object_replaced_while_read_is_never_spliced(s3_location: str, s3_env: S3Server, s3_bucket: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts after the first are asked for with If-Match on the first answer's ETag."""
    monkeypatch.setattr(s3_io, "PART_SIZE", 256 * 1024)  # 24 parts: more than the window reads ahead
    old, new = os.urandom(6 * 1024 * 1024), os.urandom(6 * 1024 * 1024)
    client = s3_env.client()  # another writer, with its own part size
    client.put_object(Bucket=s3_bucket, Key="store/blobs/sha256/ab/changing", Body=old)
    with archive.get_interface(s3_location) as arc:
        with pytest.raises(BackendError, match="blobs/sha256/ab/changing was replaced while it was being read"):
            with arc.open_key("blobs/sha256/ab/changing") as stream:
                assert stream.read(100) == old[:100]
                client.put_object(Bucket=s3_bucket, Key="store/blobs/sha256/ab/changing", Body=new)
                stream.read()


def test_without_boto3_the_error_says_what_to_install(s3_env: S3Server) -> None:
    """An installation without the ``s3`` extra (boto3 and its botocore made unimportable in the child)."""
    code = ("import runpy, sys; sys.modules['boto3'] = sys.modules['botocore'] = None;"
            " sys.argv = ['archive', '-a', 's3://bucket/x', 'ls'];"
            " runpy.run_module('archive', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    one_line_error(result, "s3:// locations need boto3: pip install 'archive[s3]'")


# ------------------------------------------------------------------ gc's move is not atomic on S3
@pytest.mark.parametrize("others", [0, 600], ids=["checked-by-head", "checked-by-listing"])
def test_a_blob_written_between_the_copy_and_the_delete_of_a_gc_move_is_not_lost(
        s3_env: S3Server, s3_bucket: str, tmp_path: Path, others: int) -> None:
    """gc moves an old orphan aside (copy, check, DELETE); a publish of a new file with the same
    content writes it right before the DELETE, and commits its pointer only after gc finished.

    Without a lease on its new blobs and a check before the pointer, the release would name a
    blob that gc deleted in both places.
    """
    from archive import layout
    from archive.hashing import BlobId
    from tests.backends.test_gc_races import Hooked
    from tests.backends.test_s3 import set_mtime

    location = s3_env.location(s3_bucket, "store")
    data = b"5" * 5002
    key = layout.blob_key(BlobId.of_bytes(data))
    with archive.get_interface(location, create=True) as arc, archive.get_interface(location) as other:
        arc.publish(make_tree(tmp_path / "v1", {"data.bin": b"1" * 5000}), "calib", "1.0.0", progress=False)
        arc.write_key(key, [data])  # the orphan of a publish killed two days ago
        set_mtime(s3_env, s3_bucket, arc, key, time.time() - 48 * 3600)
        files = {"data.bin": data, **{f"more/{i}.txt": f"file {i}".encode() for i in range(others)}}
        written, gc_done = threading.Event(), threading.Event()
        publisher = Hooked(other)
        publisher.after("write_key", lambda written_key: written_key == key,  # its new blob
                        lambda: (written.set(), gc_done.wait(60)))
        errors: list[BaseException] = []

        def publish() -> None:
            try:
                publisher.publish(make_tree(tmp_path / "v2", files), "calib", "1.1.0", progress=False)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=publish)
        copied, real_copy, real_head = [], arc.copy, arc.head

        def copy(source: str, *args, **kwargs):
            real_copy(source, *args, **kwargs)
            copied.append(source)

        def head(head_key: str) -> dict:
            answer = real_head(head_key)
            if head_key == key and copied and not thread.is_alive() and not written.is_set():
                thread.start()  # gc checked the source after its copy; the DELETE comes next
                assert written.wait(60), errors
            return answer

        arc.copy, arc.head = copy, head
        try:
            arc.collect_garbage(grace_hours=1)
        finally:
            gc_done.set()
            if thread.ident is not None:
                thread.join(60)
        arc.copy, arc.head = real_copy, real_head
        assert written.is_set() and not errors, errors
        report = arc.verify(full=True)
        assert report.ok, report.errors
        assert snapshot(arc.download("calib", "1.1.0", tmp_path / "out", progress=False)) == files
