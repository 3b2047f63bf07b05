"""The helper process that moves a batch flushed behind the writers into place.

Real processes and real renames: the helper is the interpreter running the tests, started as a
publish starts it; the failures are real ones (a missing file, a helper that cannot start, a
helper that stops halfway).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import archive.backends.filesystem_batch as batching
import archive.backends.filesystem_mover as mover
from archive import layout
from archive.backends.filesystem import FileSystemArchive
from archive.backends.filesystem_batch import syncfs_available
from archive.errors import BackendError

needs_syncfs = pytest.mark.skipif(not syncfs_available(), reason="syncfs(2) is Linux's; elsewhere nothing is batched")


def folders(tmp_path: Path) -> tuple[int, int, Path, Path]:
    source, target = tmp_path / "src", tmp_path / "dst"
    source.mkdir()
    target.mkdir()
    return os.open(source, os.O_RDONLY | os.O_DIRECTORY), os.open(target, os.O_RDONLY | os.O_DIRECTORY), source, target


def test_the_helper_moves_each_file_and_says_which_it_could_not(tmp_path: Path) -> None:
    src_fd, dst_fd, source, target = folders(tmp_path)
    try:
        for name in ("a.part", "c.part"):
            (source / name).write_bytes(name.encode())
        moved = mover.rename_in_helper(src_fd, [("a.part", dst_fd, "A"), ("b.part", dst_fd, "B"),
                                                ("c.part", dst_fd, "C")])
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    assert moved == [True, False, True]  # b.part never existed
    assert sorted(os.listdir(target)) == ["A", "C"] and (target / "C").read_bytes() == b"c.part"
    assert os.listdir(source) == []


@pytest.mark.parametrize("program", ["missing/python3", "/bin/echo"])
def test_a_helper_not_started_moves_nothing_and_says_so(program: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python that cannot be started (``missing/python3``), or an embedding program's
    ``sys.executable`` that is no Python (``/bin/echo`` would print its arguments, dots among
    them), moves nothing: the caller moves every file itself."""
    src_fd, dst_fd, source, target = folders(tmp_path)
    (source / "a.part").write_bytes(b"a")
    monkeypatch.setattr(sys, "executable", str(tmp_path / program) if program.startswith("missing") else program)
    try:
        assert mover.rename_in_helper(src_fd, [("a.part", dst_fd, "A")]) == []
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    assert os.listdir(source) == ["a.part"] and os.listdir(target) == []


def test_only_the_helpers_own_answers_are_believed() -> None:
    assert mover._statuses(b"....", 4) == []  # no greeting: not the helper speaking
    assert mover._statuses(mover.GREETING + b".x.", 4) == [True, False, True]  # stopped before the 4th
    assert mover._statuses(mover.GREETING + b".?..", 4) == [True]  # nothing after a byte it never writes
    assert f"out.write({mover.GREETING!r})" in mover.HELPER


@pytest.fixture
def helper_for_every_flush(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batches of 4 files, each flushed behind the writer through the helper; the sizes of the
    moves asked of the (real) helper are recorded."""
    asked: list[int] = []
    real = mover.rename_in_helper

    def counting(tmp: int, moves: list[tuple[str, int, str]]) -> list[bool]:
        asked.append(len(moves))
        return real(tmp, moves)

    monkeypatch.setattr(batching, "MAX_FILES", 4)
    monkeypatch.setattr(batching, "MIN_FILES", 1)
    monkeypatch.setattr(batching, "rename_in_helper", counting)
    return asked


@needs_syncfs
def test_a_flush_behind_the_writer_is_moved_by_the_helper(folder_archive: FileSystemArchive,
                                                          helper_for_every_flush: list[int]) -> None:
    with folder_archive.batched_writes():
        for i in range(10):
            folder_archive.write_key(f"blobs/sha256/{i % 3:02x}/{i}", [b"%d" % i])
    assert helper_for_every_flush == [4, 4]  # the last 2 are waited for: moved here, not by a helper
    assert [folder_archive.read_key(f"blobs/sha256/{i % 3:02x}/{i}", 10) for i in range(10)] == [b"%d" % i
                                                                                                 for i in range(10)]
    assert folder_archive.list_keys(layout.TMP_DIR) == []


@needs_syncfs
def test_files_a_helper_did_not_move_are_moved_here(folder_archive: FileSystemArchive, helper_for_every_flush: list[int],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A helper that stops after its second rename, before saying so: the first is reported, the
    second made but not reported, the rest not made. The flush still puts every file in place."""
    stopping = (mover.HELPER.replace("for line in sys.stdin.buffer:", "for number, line in enumerate(sys.stdin.buffer):")
                .replace('        out.write(b".")\n', '        if number == 1:\n            out.flush()\n'
                                                     '            os._exit(1)\n        out.write(b".")\n'))
    assert stopping.count("os._exit(1)") == 1 and "enumerate" in stopping
    monkeypatch.setattr(mover, "HELPER", stopping)
    with folder_archive.batched_writes():
        for i in range(10):
            folder_archive.write_key(f"blobs/sha256/aa/{i}", [b"%d" % i])
    assert helper_for_every_flush == [4, 4]
    assert [folder_archive.read_key(f"blobs/sha256/aa/{i}", 10) for i in range(10)] == [b"%d" % i for i in range(10)]
    assert folder_archive.list_keys(layout.TMP_DIR) == []


@needs_syncfs
def test_a_batch_file_gone_before_the_helper_fails_the_flush_loudly(folder_archive: FileSystemArchive,
                                                                    helper_for_every_flush: list[int]) -> None:
    """The helper cannot move a temporary file taken meanwhile; the flush says so, as it does
    without a helper (see ``test_a_temporary_file_taken_by_gc_fails_the_flush_loudly``)."""
    names = []
    with pytest.raises(BackendError, match="vanished before it was moved into place"):
        with folder_archive.batched_writes():
            for i in range(4):
                if i == 3:  # the fourth fills the batch: take a temporary file before its flush
                    names = folder_archive.list_keys(layout.TMP_DIR)
                    os.unlink(folder_archive.root / layout.TMP_DIR / names[0])
                folder_archive.write_key(f"blobs/sha256/aa/{i}", [b"%d" % i])
            folder_archive.write_key("blobs/sha256/bb/later", [b"later"])  # told of the failure here
    assert names and helper_for_every_flush == [4]
    assert folder_archive.list_keys(layout.TMP_DIR) == []


@needs_syncfs
def test_files_whose_folder_is_not_kept_open_are_moved_here(folder_archive: FileSystemArchive,
                                                            helper_for_every_flush: list[int],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper is given only folders this process keeps open; with no room to keep more,
    the files bound elsewhere are moved here, by walking (and making) their folders."""
    import archive.backends.filesystem_folders as folders_module

    folder_archive.write_key("blobs/sha256/aa/first", [b"first"])  # keeps the root, tmp/ and that folder's chain
    monkeypatch.setattr(folders_module, "MAX_KEPT", len(folder_archive._folders._kept))
    with folder_archive.batched_writes():
        for i in range(8):
            folder_archive.write_key(f"blobs/sha256/{'aa' if i % 2 else 'bb'}/{i}", [b"%d" % i])
    assert helper_for_every_flush == [2, 2]  # of each 4, the 2 for the kept folder aa
    assert [folder_archive.read_key(f"blobs/sha256/{'aa' if i % 2 else 'bb'}/{i}", 10) for i in range(8)] == [
        b"%d" % i for i in range(8)]
    assert folder_archive.list_keys(layout.TMP_DIR) == []
