"""SFTP's grouped reads (``read_keys``) on storage that misbehaves, and the pulls that use them.

What every backend's ``read_keys`` must give is in the conformance suite
(``tests/backends/conformance.py``); this file adds what only SFTP's groups of pipelined
requests can get wrong, against the real sshd, and pulls of many small files through them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import archive
from archive import layout
from archive.backends.sftp_read import GROUP_FILES
from archive.errors import UnsafeObjectError
from archive.hashing import BlobId
from archive.interface import ArchiveInterface
from tests.backends import test_sftp
from tests.backends.conformance import BackendContract, _within_seconds
from tests.backends.test_sftp import transport  # noqa: F401  (the class runs on both transports)
from tests.conftest import make_tree
from tests.sshd import SSHServer

REPO = Path(__file__).resolve().parents[2]


def _written(arc: ArchiveInterface, contents: dict[str, bytes]) -> dict[str, bytes]:
    for key, data in contents.items():
        arc.write_key(key, [data])
    return contents


class TestSFTPReadKeys:
    """SFTP's grouped reads where its storage misbehaves (the rest is in the conformance suite)."""

    arc = test_sftp.TestSFTPContract.arc
    on_disk = BackendContract.on_disk

    def test_a_fifo_is_refused_without_blocking_and_the_others_read(self, arc: ArchiveInterface) -> None:
        arc.write_key("blobs/sha256/ab/other", [b"other"])
        os.mkfifo(self.on_disk(arc, "blobs/sha256/ab/fifo"))
        got: list = []
        _within_seconds(lambda: got.extend(arc.read_keys([("blobs/sha256/ab/fifo", 10),
                                                          ("blobs/sha256/ab/other", 10)])),
                        self.on_disk(arc, "blobs/sha256/ab/fifo"))
        assert isinstance(got[0][1], UnsafeObjectError) and "is a FIFO" in str(got[0][1])
        assert got[1][1] == b"other"
        assert arc.read_key("blobs/sha256/ab/other", 10) == b"other"  # the session is still in step

    def test_a_link_in_place_of_a_folder_is_never_followed(self, arc: ArchiveInterface, tmp_path: Path) -> None:
        outside = make_tree(tmp_path / "outside", {"x": b"secret"})
        arc.write_key("blobs/sha256/cd/fine", [b"fine"])
        with archive.get_interface(arc.location) as earlier:
            earlier.write_key("blobs/sha256/ab/x", [b"x"])
        folder = self.on_disk(arc, "blobs/sha256/ab")
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
        folder.symlink_to(outside)
        with archive.get_interface(arc.location) as later:  # checks every folder afresh
            got = dict(later.read_keys([("blobs/sha256/ab/x", 10), ("blobs/sha256/cd/fine", 10)]))
        assert isinstance(got["blobs/sha256/ab/x"], UnsafeObjectError)
        assert "blobs/sha256/ab is a symbolic link" in str(got["blobs/sha256/ab/x"])
        assert got["blobs/sha256/cd/fine"] == b"fine"

    def test_a_lost_connection_fails_the_group_and_the_next_one_reconnects(self, arc: ArchiveInterface) -> None:
        stored = _written(arc, {f"blobs/sha256/ab/k{i}": b"%d" % i for i in range(3)})
        asked = [(key, 10) for key in stored]
        assert dict(arc.read_keys(asked)) == stored
        test_sftp._drop_connections(arc)  # type: ignore[arg-type]
        assert dict(arc.read_keys(asked)) == stored


# ------------------------------------------------------------------ pulls through read_keys
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "archive", "--no-progress", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture
def small_release(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path) -> tuple[str, dict[str, bytes]]:
    """An SFTP archive holding a release of many small files in several folders (one duplicate,
    one empty, one executable), more than a group of reads holds."""
    files = {f"d{i % 5}/f{i}.bin": os.urandom(i % 700) for i in range(3 * GROUP_FILES)}
    files["copy/same.bin"] = files["d1/f1.bin"]
    src = make_tree(tmp_path / "src", files)
    (src / "d0" / "f0.bin").chmod(0o755)
    url = sshd.url(tmp_path / "store")
    result = _cli("init", url)
    assert result.returncode == 0, result.stderr
    result = _cli("--archive", url, "push", str(src), "small", "1.0.0")
    assert result.returncode == 0, result.stderr
    return url, files


@pytest.mark.parametrize("options", [(), ("--no-cache",)])
def test_pull_of_many_small_files(small_release: tuple[str, dict[str, bytes]], tmp_path: Path,
                                  options: tuple[str, ...]) -> None:
    url, files = small_release
    result = _cli("--archive", url, "pull", "small", "1.0.0", "--to", str(tmp_path / "out"), *options)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.bin")} == files
    assert os.access(out / "d0" / "f0.bin", os.X_OK) and not os.access(out / "d1" / "f1.bin", os.X_OK)
    cached = list((Path(os.environ["ARCHIVE_CACHE_DIR"]) / layout.BLOBS_DIR).rglob("*"))
    assert bool([p for p in cached if p.is_file()]) == (not options)  # --no-cache keeps nothing


@pytest.mark.parametrize("options", [(), ("--no-cache",)])
def test_pull_refuses_a_corrupt_small_blob_and_places_nothing_of_it(
        small_release: tuple[str, dict[str, bytes]], tmp_path: Path, options: tuple[str, ...]) -> None:
    url, files = small_release
    store = tmp_path / "store"
    victim = files["d2/f7.bin"]
    blob_file = store / layout.blob_key(BlobId.of_bytes(victim))
    blob_file.chmod(0o644)
    blob_file.write_bytes(b"not " + victim)
    result = _cli("--archive", url, "pull", "small", "1.0.0", "--to", str(tmp_path / "out"), *options)
    assert result.returncode == 1
    assert result.stderr.startswith("archive: error: ") and len(result.stderr.strip().splitlines()) == 1
    assert BlobId.of_bytes(victim).short in result.stderr
    assert not (tmp_path / "out" / "d2" / "f7.bin").exists()
    cached = Path(os.environ["ARCHIVE_CACHE_DIR"]) / layout.blob_key(BlobId.of_bytes(victim))
    assert not cached.exists()


def test_pull_of_a_release_whose_small_blob_is_missing_names_it(
        small_release: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:
    url, files = small_release
    missing = BlobId.of_bytes(files["d3/f8.bin"])
    (tmp_path / "store" / layout.blob_key(missing)).unlink()
    result = _cli("--archive", url, "pull", "small", "1.0.0", "--to", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.startswith("archive: error: ") and missing.hexdigest in result.stderr  # as before groups
    assert not (tmp_path / "out" / "d3" / "f8.bin").exists()


def test_prefetch_fills_the_cache_in_groups_and_the_next_pull_needs_no_server(
        small_release: tuple[str, dict[str, bytes]], tmp_path: Path, sshd: SSHServer) -> None:
    url, files = small_release
    result = _cli("--archive", url, "pull", "small", "1.0.0", "--prefetch")
    assert result.returncode == 0, result.stderr
    cache = Path(os.environ["ARCHIVE_CACHE_DIR"])
    for content in files.values():
        assert (cache / layout.blob_key(BlobId.of_bytes(content))).read_bytes() == content
    with archive.get_interface(url) as arc:  # every blob is in the cache: none is read from the archive
        for blob in {BlobId.of_bytes(content) for content in files.values()}:
            arc.delete_key(layout.blob_key(blob))
    result = _cli("--archive", url, "pull", "small", "1.0.0", "--to", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.bin")} == files
