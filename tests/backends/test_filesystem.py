"""The folder backend against the shared contract, plus what only a folder can show."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

import pytest

import archive
import archive.sync_behind as sync_behind
from archive import layout
from archive.backends.filesystem import FileSystemArchive
from archive.errors import NotAnArchiveError, StorageFullError
from tests.audit import audit_events
from tests.backends.conformance import BackendContract
from tests.conftest import make_tree


class TestFileSystemContract(BackendContract):
    @pytest.fixture
    def arc(self, tmp_path: Path):
        with archive.get_interface(tmp_path / "store", create=True) as arc:
            yield arc


def test_objects_are_stored_read_only(folder_archive: FileSystemArchive) -> None:
    folder_archive.write_key("blobs/sha256/aa/x", [b"data"])
    mode = os.stat(folder_archive.local_path("blobs/sha256/aa/x")).st_mode & 0o777
    assert mode & 0o222 == 0


def test_a_write_removes_its_temporary_only_when_one_is_left(folder_archive: FileSystemArchive) -> None:
    """A rename leaves no temporary behind, so a write asks for no unlink that can only fail
    (one wasted system call per blob); a create-only write links its temporary and removes it."""
    with audit_events("os.remove") as removed:
        folder_archive.write_key("blobs/sha256/aa/x", [b"data"])
    assert removed == []
    with audit_events("os.remove") as removed:
        folder_archive.write_key("releases/n/1.0.0", [b"pointer"], exclusive=True)
    assert len(removed) == 1
    assert os.listdir(folder_archive.local_path(layout.TMP_DIR)) == []


def test_folders_removed_between_writes_are_made_again(folder_archive: FileSystemArchive) -> None:
    """Folders are created once per process; one removed since (by hand) is created again."""
    import shutil

    folder_archive.write_key("blobs/sha256/ab/one", [b"1"])
    shutil.rmtree(folder_archive.local_path("blobs"))
    shutil.rmtree(folder_archive.local_path(layout.TMP_DIR))
    folder_archive.write_key("blobs/sha256/ab/two", [b"2"])
    folder_archive.write_key("releases/x/1.0.0", [b"p"], exclusive=True)
    assert folder_archive.read_key("blobs/sha256/ab/two", 10) == b"2"
    shutil.rmtree(folder_archive.local_path("blobs"))
    folder_archive.write_key("blobs/sha256/cd/three", [b"3"])  # a folder new below removed ones
    assert folder_archive.read_key("blobs/sha256/cd/three", 10) == b"3"
    assert folder_archive.list_keys(layout.TMP_DIR) == []


def test_folder_without_marker_is_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAnArchiveError, match="archive init"):
        archive.get_interface(tmp_path / "plain")


def test_marker_names_the_format(folder_archive: FileSystemArchive) -> None:
    text = folder_archive.local_path(layout.MARKER_KEY).read_text()
    assert '"format":"archive"' in text and '"version":1' in text


def test_disk_full_on_publish_is_one_line_and_harmless(small_tmpfs: Path, tmp_path: Path) -> None:
    arc = archive.get_interface(small_tmpfs / "store", create=True)
    fits = make_tree(tmp_path / "fits", {"small.txt": b"x" * 1000})
    arc.publish(fits, "calib", "1.0.0", progress=False)
    big = make_tree(tmp_path / "big", {f"f{i}.bin": os.urandom(300_000) for i in range(5)})
    with pytest.raises(StorageFullError, match="^no space left for blobs/sha256/"):
        arc.publish(big, "calib", "2.0.0", progress=False, jobs=1)
    assert arc.versions("calib") == ["1.0.0"]
    assert arc.verify(full=True).ok
    assert arc.list_keys(layout.TMP_DIR) == []


def test_disk_full_on_download_leaves_no_partial_file(small_tmpfs: Path, tmp_path: Path) -> None:
    from archive.errors import DestinationError

    arc = archive.get_interface(tmp_path / "store", create=True)
    arc.publish(make_tree(tmp_path / "src", {"a.bin": os.urandom(600_000), "b.bin": os.urandom(600_000)}),
                "calib", "1.0.0", progress=False)
    out = small_tmpfs / "out"
    with pytest.raises(DestinationError, match="cannot write .*: No space left on device"):
        arc.download("calib", "*", out, progress=False, jobs=1)
    for path in out.rglob("*"):
        assert not path.is_file() or path.stat().st_size == 600_000


def test_local_disk_is_told_apart_from_other_mounts(small_tmpfs: Path) -> None:
    """The mount that holds a path decides (the longest mount point above it)."""
    from archive.backends.filesystem import on_local_disk

    assert on_local_disk(small_tmpfs / "deeper" / "store")  # a tmpfs: local memory
    assert not on_local_disk(Path("/proc/self"))  # proc: not a disk


def test_a_folder_swapped_for_a_link_while_in_use_is_never_followed(folder_archive: FileSystemArchive,
                                                                    tmp_path: Path) -> None:
    """Folders are kept open, not looked up by path again: a link swapped in for one that this
    archive already used leads nowhere (the SFTP backend checks its write folders once per process)."""
    import shutil

    from archive.errors import UnsafeObjectError

    outside = tmp_path / "outside"
    outside.mkdir()
    folder_archive.write_key("releases/n/1.0.0", [b"p"])
    shutil.rmtree(folder_archive.local_path("releases/n"))
    folder_archive.local_path("releases/n").symlink_to(outside)
    with pytest.raises(UnsafeObjectError, match="releases/n is a symbolic link inside the archive"):
        folder_archive.write_key("releases/n/2.0.0", [b"q"])
    assert list(outside.iterdir()) == []


def swap_fan_folder_for_a_link(folder_archive: FileSystemArchive, tmp_path: Path) -> None:
    """Rename ``blobs/sha256/ab`` (kept open by the archive) to ``ab.old`` and put a link to a
    folder outside the archive, holding another ``x``, in its place."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_bytes(b"not the archive's")
    fan = folder_archive.local_path("blobs/sha256/ab")
    fan.rename(fan.with_name("ab.old"))
    fan.symlink_to(outside)


def test_local_file_never_hands_out_a_path_through_a_link(folder_archive: FileSystemArchive, tmp_path: Path) -> None:
    """Downloads open the path of ``local_file`` themselves: it must lead to the archive's own
    file even when a folder this archive keeps open was renamed away and a link put in its place."""
    from archive.errors import UnsafeObjectError

    key = "blobs/sha256/ab/x"
    folder_archive.write_key(key, [b"archive's"])
    folder_archive.local = True
    assert folder_archive.local_file(key) == str(folder_archive.local_path(key))
    swap_fan_folder_for_a_link(folder_archive, tmp_path)
    with pytest.raises(UnsafeObjectError, match=f"{key} is a symbolic link inside the archive"):
        folder_archive.local_file(key)


def test_open_local_reads_the_archives_own_file_or_nothing(folder_archive: FileSystemArchive, tmp_path: Path) -> None:
    """The descriptor ``open_local`` gives (the small files of a pull read blobs through it) is
    of the archive's own regular file: not of a file behind a link swapped in for its folder,
    never a FIFO (refused at once, without waiting for a writer)."""
    from archive.errors import UnsafeObjectError

    key = "blobs/sha256/ab/x"
    folder_archive.write_key(key, [b"archive's"])
    folder_archive.local = True
    fd = folder_archive.open_local(key)
    assert fd is not None
    with open(fd, "rb") as stream:
        assert stream.read() == b"archive's"
    swap_fan_folder_for_a_link(folder_archive, tmp_path)
    try:
        fd = folder_archive.open_local(key)
    except UnsafeObjectError:
        pass
    else:
        with open(fd, "rb") as stream:
            assert stream.read() == b"archive's"
    os.mkfifo(folder_archive.local_path("blobs/sha256/ab.old/fifo"))
    with pytest.raises(UnsafeObjectError, match="not a regular file|FIFO"):
        folder_archive.open_local("blobs/sha256/ab/fifo")
    folder_archive.local = False
    assert folder_archive.open_local(key) is None


def test_an_archive_that_cannot_be_made_is_one_clear_line(tmp_path: Path) -> None:
    """A folder that cannot exist (below a file) is a storage error naming the folder, not 'no
    such object: archive.json'."""
    import subprocess
    import sys

    (tmp_path / "file").write_text("x")
    result = subprocess.run([sys.executable, "-m", "archive", "init", str(tmp_path / "file" / "store")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == f"archive: error: cannot write archive.json in {tmp_path / 'file' / 'store'}: Not a directory\n"


MIB = 1024 * 1024


@pytest.mark.parametrize("early_fails", [False, True])
def test_a_long_write_is_synced_behind_as_it_is_written(folder_archive: FileSystemArchive, early_fails: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every SYNC_BEHIND_BYTES written, another thread fdatasyncs the file while the writer goes
    on, so the disk is not left all of it for the final fsync; that final fsync still comes once
    the file is whole, before its rename. An early sync that fails does not fail the write."""
    monkeypatch.setattr(sync_behind, "SYNC_BEHIND_BYTES", MIB)
    data = os.urandom(4 * MIB)
    early, sizes, real = threading.Event(), [], os.fdatasync

    def watched(fd: int) -> None:
        sizes.append(os.fstat(fd).st_size)
        early.set()
        if early_fails:
            raise OSError("refused on purpose")
        real(fd)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), MIB // 4):
            if start == 2 * MIB:  # the writer waits for a sync behind it
                assert early.wait(30), "no sync while the file was written"
            yield data[start:start + MIB // 4]

    monkeypatch.setattr(os, "fdatasync", watched)
    folder_archive.write_key("blobs/sha256/ee/long", chunks())
    assert sizes[0] < len(data)  # the first sync came while the file was still being written
    assert (folder_archive.root / "blobs" / "sha256" / "ee" / "long").read_bytes() == data
    assert list((folder_archive.root / layout.TMP_DIR).iterdir()) == []


def test_a_write_that_need_not_be_durable_is_never_synced_behind(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_behind, "SYNC_BEHIND_BYTES", MIB)
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    arc = FileSystemArchive(tmp_path / "store", durable=False)
    arc.write_key("blobs/sha256/ee/long", [bytes(MIB)] * 4)
    assert synced == []
    assert (arc.root / "blobs" / "sha256" / "ee" / "long").stat().st_size == 4 * MIB
