"""What a pull finds in its destination and leaves there: conflicts found before any write,
snapshots checked again, names of every length the filesystem allows, deep folders, modes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from archive import layout
from archive.cache import default_cache
from archive.errors import DestinationConflictError
from archive.hashing import BlobId
from archive.inflight import remove_tree
from archive.records import FileEntry, Release
from tests.conftest import make_tree
from tests.test_publish import snapshot

FILES = {"a.txt": b"alpha", "sub/b.bin": os.urandom(100_000), "sub/c.txt": b"gamma", "x/y/z.txt": b"zed"}
UMASK = os.umask(0o022)
os.umask(UMASK)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True, timeout=120)


def put_release(arc, name: str, version: str, files: dict[str, bytes], executable: set[str] = frozenset()) -> Release:
    """Store a release built directly (as tests/test_download.py does), bypassing push."""
    entries = {}
    for path, data in files.items():
        blob = BlobId.of_bytes(data)
        if not arc.has_key(layout.blob_key(blob)):
            arc.write_key(layout.blob_key(blob), [data])
        entries[path] = FileEntry(blob, len(data), executable=path in executable)
    record = Release.create(name, version, entries)
    arc.write_key(layout.blob_key(record.record_id), [record.to_bytes()])
    arc.write_key(layout.release_key(name, version), [f"{record.record_id}\n".encode()], exclusive=True)
    return record


@pytest.fixture(params=["local disk", "network mount"])
def published(folder_archive, tmp_path: Path, request):
    folder_archive.local = request.param == "local disk"
    folder_archive.publish(make_tree(tmp_path / "src", FILES), "calib", "1.0.0", progress=False)
    return folder_archive


# ------------------------------------------------------------------ snapshots (no --to)

def test_deleted_file_in_snapshot_is_restored(published) -> None:
    folder = published.download("calib", "1.0.0", progress=False)
    (folder / "sub" / "c.txt").unlink()
    assert published.download("calib", "1.0.0", progress=False) == folder
    assert snapshot(folder) == FILES


def test_edited_file_in_snapshot_is_repaired_and_the_cache_too(published) -> None:
    """A snapshot file is the cache's blob (a hard link): chmod + edit corrupts both; the next
    pull finds it, fetches the blob again and gives back a whole, read-only snapshot."""
    folder = published.download("calib", "1.0.0", progress=False)
    edited = folder / "sub" / "b.bin"
    edited.chmod(0o644)
    edited.write_bytes(b"user edit")
    assert published.download("calib", "1.0.0", progress=False) == folder
    assert snapshot(folder) == FILES
    assert all(p.stat().st_mode & 0o222 == 0 for p in folder.rglob("*") if p.is_file())
    cached = default_cache().path_of(BlobId.of_bytes(FILES["sub/b.bin"]))
    assert cached.read_bytes() == FILES["sub/b.bin"]


def test_snapshot_after_its_blob_was_evicted_is_whole(published) -> None:
    folder = published.download("calib", "1.0.0", progress=False)
    (folder / "a.txt").unlink()
    default_cache().evict(BlobId.of_bytes(FILES["a.txt"]))
    assert published.download("calib", "1.0.0", progress=False) == folder
    assert snapshot(folder) == FILES


def test_snapshot_through_the_cli_is_repaired(published) -> None:
    folder = Path(run("-a", published.location, "pull", "calib").stdout.strip())
    (folder / "x" / "y" / "z.txt").unlink()
    again = run("-a", published.location, "pull", "calib")
    assert again.returncode == 0 and Path(again.stdout.strip()) == folder
    assert snapshot(folder) == FILES


# ------------------------------------------------------------------ conflicts of every kind

def test_every_conflict_is_found_before_anything_is_written(published, tmp_path: Path) -> None:
    """A folder where a file goes, a file where a folder goes, a link, a FIFO and other
    content: one error names the count and the first few; ``paths`` has them all; nothing
    was written (the absent files are still absent)."""
    out = make_tree(tmp_path / "out", {"sub/c.txt/inner.txt": b"a folder where a file goes",
                                       "x": b"a file where a folder goes"})
    (out / "a.txt").symlink_to(out / "x")
    os.mkfifo(out / "sub" / "b.bin")
    before = {p: p.lstat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(DestinationConflictError) as info:
        published.download("calib", "1.0.0", out, progress=False)
    assert sorted(info.value.paths) == ["a.txt", "sub/b.bin", "sub/c.txt", "x"]
    message = str(info.value)
    assert message.startswith("4 path(s) in") and "\n" not in message
    for reason in ("a symbolic link", "a special file", "a folder where the release has a file",
                   "a file where the release needs a folder"):
        assert reason in message
    assert {p: p.lstat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(DestinationConflictError, match="never folders") as forced:
        published.download("calib", "1.0.0", out, force=True, progress=False)
    assert forced.value.paths == ["sub/c.txt"]  # --force never removes a folder
    (out / "sub" / "c.txt" / "inner.txt").unlink()
    (out / "sub" / "c.txt").rmdir()
    published.download("calib", "1.0.0", out, force=True, progress=False)
    assert snapshot(out) == FILES and not (out / "a.txt").is_symlink()


def test_conflicts_through_the_cli_are_one_line(published, tmp_path: Path) -> None:
    out = make_tree(tmp_path / "out", {"x": b"in the way", "a.txt": b"mine"})
    result = run("-a", published.location, "pull", "calib", "--to", str(out))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "2 path(s)" in result.stderr and "a.txt (other content)" in result.stderr
    assert snapshot(out) == {"x": b"in the way", "a.txt": b"mine"}


# ------------------------------------------------------------------ names and depth

@pytest.mark.parametrize("name", ["n" * 251 + ".txt", "é" * 127 + "a"], ids=["ascii", "utf-8"])
def test_names_of_255_bytes_round_trip(folder_archive, tmp_path: Path, name: str) -> None:
    assert len(name.encode()) == 255
    src = make_tree(tmp_path / "src", {name: b"long", f"d/{name}": b"longer"})
    folder_archive.publish(src, "long", "1.0.0", progress=False)
    out = tmp_path / "out"
    result = run("-a", folder_archive.location, "pull", "long", "--to", str(out))
    assert result.returncode == 0, result.stderr
    assert snapshot(out) == snapshot(src)
    again = run("-a", folder_archive.location, "pull", "long", "--to", str(out), "--link", "copy")
    assert again.returncode == 0, again.stderr


@pytest.fixture
def deep_folders(tmp_path: Path):
    made: list[Path] = []
    yield made
    for path in made:  # pytest's own cleanup recurses once per level and would fail
        remove_tree(path)


def test_folders_1200_deep_are_pulled(folder_archive, tmp_path: Path, deep_folders) -> None:
    deep = "/".join(["d"] * 1200) + "/leaf.txt"
    put_release(folder_archive, "deep", "1.0.0", {deep: b"bottom", "top.txt": b"top"})
    for link, out in (("auto", tmp_path / "out"), ("hard", tmp_path / "hard")):
        deep_folders.append(out)
        folder_archive.download("deep", "*", out, link=link, progress=False)
        assert (out / deep).read_bytes() == b"bottom" and (out / "top.txt").read_bytes() == b"top"
    deep_folders.append(default_cache().root / "snapshots")
    folder = folder_archive.download("deep", "*", progress=False)
    assert (folder / deep).read_bytes() == b"bottom"
    status = run("status", str(tmp_path / "out"))
    assert status.returncode == 0, status.stdout + status.stderr


# ------------------------------------------------------------------ the executable bit

@pytest.mark.parametrize("route", ["local copy", "local auto", "cache", "stream", "hard", "symlink"])
def test_executable_bit_is_restored_on_every_route(folder_archive, tmp_path: Path, route: str) -> None:
    folder_archive.local = route.startswith("local")
    put_release(folder_archive, "tool", "1.0.0", {"run.sh": b"#!/bin/sh\necho hi\n", "data.txt": b"data"},
                executable={"run.sh"})
    link = {"local copy": "copy", "hard": "hard", "symlink": "symlink"}.get(route, "auto")
    out = folder_archive.download("tool", "*", tmp_path / "out", link=link, use_cache=route != "stream",
                                  progress=False)
    tool, data = (out / "run.sh").lstat(), (out / "data.txt").lstat()
    if link in ("hard", "symlink"):
        # a cache blob is never made executable: the executable is a read-only copy
        assert stat.S_ISREG(tool.st_mode) and stat.S_IMODE(tool.st_mode) == 0o555 & ~UMASK
        assert tool.st_nlink == 1
    else:
        assert stat.S_IMODE(tool.st_mode) == 0o777 & ~UMASK
        assert stat.S_IMODE(data.st_mode) == 0o666 & ~UMASK
    assert subprocess.run([str(out / "run.sh")], capture_output=True).stdout == b"hi\n"
    cached = default_cache().path_of(BlobId.of_bytes(b"#!/bin/sh\necho hi\n"))
    assert cached.exists() == (route in ("cache", "hard", "symlink"))
    assert not cached.exists() or cached.stat().st_mode & 0o111 == 0


def test_right_content_with_the_wrong_mode_gets_its_mode_fixed(folder_archive, tmp_path: Path) -> None:
    put_release(folder_archive, "tool", "1.0.0", {"run.sh": b"#!/bin/sh\n", "data.txt": b"data"},
                executable={"run.sh"})
    out = make_tree(tmp_path / "out", {"run.sh": b"#!/bin/sh\n", "data.txt": b"data"})
    (out / "data.txt").chmod(0o755)
    inode = (out / "run.sh").stat().st_ino
    folder_archive.download("tool", "*", out, progress=False)
    assert (out / "run.sh").stat().st_ino == inode  # kept, not rewritten
    assert stat.S_IMODE((out / "run.sh").stat().st_mode) == 0o777 & ~UMASK
    assert stat.S_IMODE((out / "data.txt").stat().st_mode) == 0o666 & ~UMASK


def test_release_with_a_top_level_archive_folder_is_refused(folder_archive, tmp_path: Path) -> None:
    put_release(folder_archive, "odd", "1.0.0", {".archive/pulled.json": b"{}", "a.txt": b"a"})
    result = run("-a", folder_archive.location, "pull", "odd", "--to", str(tmp_path / "out"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "reserved" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("link", ["symlink", "hard"])
def test_pulling_again_with_a_linking_mode_keeps_the_links(published, tmp_path: Path, link: str) -> None:
    """A second pull in the symlink (or hard) mode finds its own links, not conflicts."""
    out = tmp_path / "out"
    assert run("-a", published.location, "pull", "calib", "--to", str(out), "--link", link).returncode == 0
    again = run("-a", published.location, "pull", "calib", "--to", str(out), "--link", link)
    assert again.returncode == 0, again.stderr
    assert "0 written, 4 already there" in again.stderr
    assert snapshot(out) == FILES
