"""``archive mirror``: releases copied between archives, blobs first and verified, resumable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import archive
from archive import layout
from archive.errors import IntegrityError, ReleaseExistsError, ReleaseNotFoundError
from tests.conftest import make_tree
from tests.httpd import httpd  # noqa: F401 - fixtures
from tests.s3d import s3_bucket, s3_env, s3_server  # noqa: F401 - fixtures
from tests.sshd import keyring_file, ssh_home, ssh_key_home, sshd  # noqa: F401 - fixtures
from tests.test_publish import snapshot


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def source(tmp_path: Path) -> archive.ArchiveInterface:
    """A folder archive of 3 names x 3 versions, sharing some files."""
    with archive.get_interface(tmp_path / "source", create=True) as arc:
        for name in ("calib", "models", "docs"):
            for minor in range(3):
                files = {"shared.bin": b"s" * 5000, f"{name}.txt": f"{name} {minor}".encode(),
                         "data/big.bin": os.urandom(300_000)}
                arc.publish(make_tree(tmp_path / "src" / name / str(minor), files), name, f"1.{minor}.0",
                            {"message": f"{name} {minor}"}, progress=False)
        yield arc


def test_mirror_pulls_back_byte_identical_and_verifies(source, tmp_path: Path) -> None:
    target = tmp_path / "target"
    result = run("mirror", source.location, str(target), "--create")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"mirrored 9 releases to {target} (0 there already)")
    with archive.get_interface(target) as copy:
        assert copy.names() == source.names() and copy.verify(full=True).ok
        for name in source.names():
            assert copy.versions(name) == source.versions(name)
            for version in source.versions(name):
                assert copy.release_id(name, version) == source.release_id(name, version)
                a = source.download(name, version, tmp_path / "a" / name / version, progress=False)
                b = copy.download(name, version, tmp_path / "b" / name / version, progress=False)
                assert snapshot(a) == snapshot(b)
    again = run("mirror", source.location, str(target))
    assert again.returncode == 0 and "mirrored 0 releases" in again.stdout and "(9 there already)" in again.stdout


def test_mirror_of_one_name_and_range(source, tmp_path: Path) -> None:
    with archive.get_interface(tmp_path / "target", create=True) as target:
        report = source.mirror_to(target, "calib", "^1.1")
        assert sorted(report.copied) == ["calib 1.1.0", "calib 1.2.0"] and target.names() == ["calib"]
        with pytest.raises(ReleaseNotFoundError):
            source.mirror_to(target, "calib", "^2")


def test_an_interrupted_mirror_resumes_where_it_stopped(source, tmp_path: Path) -> None:
    """Blobs already at the target (from a mirror killed half-way) are not copied again."""
    with archive.get_interface(tmp_path / "target", create=True) as target:
        release = source.resolve("models", "1.1.0")
        for entry in release.files.values():  # what a killed mirror left: blobs, no pointer
            source.copy_blob_to(entry.blob, entry.size, target)
        assert target.names() == []
        report = source.mirror_to(target, "models", "1.1.0")
        assert report.copied == ["models 1.1.0"] and report.blobs_present == 3 and report.blobs_copied == 1
        assert target.verify(full=True).ok


def test_a_corrupt_source_blob_is_never_copied(source, tmp_path: Path) -> None:
    entry = source.resolve("docs", "1.0.0").files["data/big.bin"]
    path = Path(source.location) / layout.blob_key(entry.blob)
    path.chmod(0o644)
    path.write_bytes(b"x" * entry.size)
    with archive.get_interface(tmp_path / "target", create=True) as target:
        with pytest.raises(IntegrityError):
            source.mirror_to(target, "docs", "1.0.0")
        assert target.names() == [] and not target.has_key(layout.blob_key(entry.blob))


def test_a_target_with_another_record_is_left_alone(source, tmp_path: Path) -> None:
    with archive.get_interface(tmp_path / "target", create=True) as target:
        target.publish(make_tree(tmp_path / "other", {"x": b"other"}), "calib", "1.0.0", progress=False)
        before = target.release_id("calib", "1.0.0")
        with pytest.raises(ReleaseExistsError, match="calib 1.0.0"):
            source.mirror_to(target, "calib")
        assert target.release_id("calib", "1.0.0") == before
        assert target.versions("calib") == ["1.2.0", "1.1.0", "1.0.0"]  # the others were copied


def test_mirror_to_an_sftp_server(source, tmp_path: Path, sshd, ssh_key_home) -> None:  # noqa: F811
    url = sshd.url(tmp_path / "remote")
    result = run("mirror", source.location, url, "calib", "--create")
    assert result.returncode == 0, result.stderr
    with archive.get_interface(url) as remote:
        assert remote.versions("calib") == ["1.2.0", "1.1.0", "1.0.0"] and remote.verify(full=True).ok
        out = remote.download("calib", "^1", tmp_path / "out", progress=False)
        assert (out / "calib.txt").read_bytes() == b"calib 2"


def test_mirror_into_a_folder_that_is_no_archive_is_one_line(source, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    result = run("mirror", source.location, str(tmp_path / "plain"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "is not an archive (create one with: archive init" in result.stderr
    assert list((tmp_path / "plain").iterdir()) == []


# ------------------------------------------------------------------ to other storage, read back
def pull_all_and_diff(source: archive.ArchiveInterface, url: str, tmp_path: Path) -> int:
    """Pull every release from ``url`` and from ``source`` with the CLI; ``diff -r`` each pair.

    Returns how many releases were compared; ``verify --full`` must pass on ``url`` too.
    """
    compared = 0
    for name in source.names():
        for version in source.versions(name):
            theirs, ours = tmp_path / "from-copy" / name / version, tmp_path / "from-source" / name / version
            for location, dest in ((url, theirs), (source.location, ours)):
                pulled = run("-a", location, "pull", name, version, "--to", str(dest))
                assert pulled.returncode == 0, pulled.stderr
            diff = subprocess.run(["diff", "-r", "--exclude=.archive", str(ours), str(theirs)],
                                  capture_output=True, text=True)
            assert diff.returncode == 0, diff.stdout + diff.stderr
            compared += 1
    verified = run("-a", url, "verify", "--full")
    assert verified.returncode == 0, verified.stderr
    return compared


def test_mirror_to_the_folder_of_a_web_server_reads_back_over_http(source, tmp_path: Path, httpd) -> None:
    """Publishing to a web server: mirror into the folder nginx serves, then read it over HTTP."""
    result = run("mirror", source.location, str(httpd.root / "store"), "--create")
    assert result.returncode == 0, result.stderr
    assert pull_all_and_diff(source, httpd.url("store"), tmp_path) == 9


def test_mirror_to_s3_reads_back_byte_identical(source, tmp_path: Path, s3_env, s3_bucket: str) -> None:  # noqa: F811
    """The way a lab moves a folder archive to object storage: mirror, then read it back from S3."""
    url = s3_env.location(s3_bucket, "team/archive")
    result = run("mirror", source.location, url, "--create")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mirrored 9 releases")
    assert pull_all_and_diff(source, url, tmp_path) == 9
