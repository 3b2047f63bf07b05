"""One file without the rest (open, fetch, cat), part of a release (--include/--exclude), and
prefetch: each fetches only the blobs it needs, counted at the backend."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from archive import FileNotInReleaseError, IntegrityError, NotFoundError, layout
from archive.cache import default_cache
from tests.conftest import make_tree
from tests.counting import Counting
from tests.test_cli import one_line_error, run

FILES = {f"data/{i:03}.csv": f"ch,{i}\n".encode() * (i + 1) for i in range(200)}
FILES["bin/tool"] = b"\x7fELF" + os.urandom(3000)


@pytest.fixture
def released(folder_archive, tmp_path: Path):
    """A 201-file release (1.0.0) of ``calib`` and the archive it is in, seen through a counter."""
    release = folder_archive.publish(make_tree(tmp_path / "src", FILES), "calib", "1.0.0", progress=False)
    return Counting(folder_archive), release


def test_open_of_one_file_of_200_fetches_exactly_one_blob(released) -> None:
    counting, release = released
    with counting.open("calib", "data/150.csv", "^1") as stream:
        assert stream.read() == FILES["data/150.csv"]
    assert counting.blobs_opened(besides=[release.record_id]) == [layout.blob_key(release.files["data/150.csv"].blob)]
    assert counting.blobs_opened().count(layout.blob_key(release.record_id)) == 1
    counting.opened.clear()
    with counting.open("calib", "data/150.csv", encoding="utf-8") as text:  # now from the cache
        assert text.readline() == "ch,150\n"
    assert counting.blobs_opened(besides=[release.record_id]) == []


def test_open_checks_what_the_cache_holds(released) -> None:
    """A cached blob altered on disk is evicted and fetched again, never handed out."""
    counting, release = released
    entry = release.files["data/007.csv"]
    with counting.open("calib", "data/007.csv"):
        pass
    cached = default_cache().path_of(entry.blob)
    cached.chmod(0o644)
    cached.write_bytes(b"X" * entry.size)
    os.utime(cached, (1, 1))
    with counting.open("calib", "data/007.csv") as stream:
        assert stream.read() == FILES["data/007.csv"]


def test_open_refuses_a_blob_corrupt_in_the_archive(released) -> None:
    counting, release = released
    entry = release.files["data/003.csv"]
    counting.write_key(layout.blob_key(entry.blob), [b"Z" * entry.size])
    with pytest.raises(IntegrityError):
        with counting.open("calib", "data/003.csv"):
            pass


def test_a_missing_path_names_some_that_exist(released) -> None:
    counting, _ = released
    with pytest.raises(FileNotInReleaseError, match="has no file 'data/999.csv' \\(it has bin/tool"):
        with counting.open("calib", "data/999.csv"):
            pass
    assert issubclass(FileNotInReleaseError, NotFoundError)


def test_fetch_gives_a_named_read_only_verified_path(released) -> None:
    counting, release = released
    path = counting.fetch("calib", "data/042.csv", "1.0.0")
    assert path.name == "042.csv" and path.read_bytes() == FILES["data/042.csv"]
    assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert path.is_relative_to(default_cache().root) and release.record_id.hexdigest[:16] in path.parts
    assert counting.blobs_opened(besides=[release.record_id]) == [layout.blob_key(release.files["data/042.csv"].blob)]
    counting.opened.clear()
    assert counting.fetch("calib", "data/042.csv") == path
    assert counting.blobs_opened(besides=[release.record_id]) == []


def test_prefetch_fills_the_cache_and_a_pull_then_fetches_nothing(released, tmp_path: Path) -> None:
    counting, release = released
    part = counting.prefetch("calib", "^1", include=["data/00*.csv"])
    assert sorted(part.files) == [f"data/00{i}.csv" for i in range(10)]
    assert sorted(counting.blobs_opened(besides=[release.record_id])) == sorted(
        layout.blob_key(e.blob) for e in part.files.values())
    counting.opened.clear()
    out = counting.download("calib", "1.0.0", tmp_path / "out", include=["data/00*.csv"], progress=False)
    assert counting.blobs_opened(besides=[release.record_id]) == []
    assert sorted(p.name for p in (out / "data").iterdir()) == [f"00{i}.csv" for i in range(10)]


def test_include_and_exclude_place_and_fetch_only_matching_files(released, tmp_path: Path) -> None:
    counting, release = released
    out = counting.download("calib", "1.0.0", tmp_path / "out", include=["data/1*.csv", "bin/"],
                            exclude=["data/1[1-9]*"], progress=False)
    placed = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and ".archive" not in p.parts)
    wanted = sorted(["bin/tool", *(f"data/1{i:02}.csv" for i in range(10))])
    assert placed == wanted
    assert sorted(counting.blobs_opened(besides=[release.record_id])) == sorted(
        {layout.blob_key(release.files[p].blob) for p in wanted})
    status = __import__("archive").status(out)
    assert status.clean and status.pulled.record_id == str(release.record_id)  # the whole release's id


def test_a_part_needs_a_folder_and_a_match(released) -> None:
    counting, _ = released
    with pytest.raises(NotFoundError, match="no file of calib 1.0.0 matches"):
        counting.download("calib", "1.0.0", "unused", include=["*.nothing"])
    with pytest.raises(Exception, match="needs a destination folder"):
        counting.download("calib", "1.0.0", None, include=["*.csv"])


# ---------------------------------------------------------------- the command line
@pytest.fixture
def store(folder_archive, tmp_path: Path) -> str:
    src = make_tree(tmp_path / "cli-src", {"a.txt": b"alpha\n", "raw/b.bin": bytes(range(256)) * 10,
                                           "raw/c.csv": b"c,1\n"})
    folder_archive.publish(src, "calib", "1.0.0", progress=False)
    (src / "a.txt").write_bytes(b"alpha 2\n")
    folder_archive.publish(src, "calib", "1.1.0", progress=False)
    return folder_archive.location


def test_cat_writes_the_exact_bytes(store: str) -> None:
    import subprocess
    import sys

    got = subprocess.run([sys.executable, "-m", "archive", "-a", store, "cat", "calib", "raw/b.bin"],
                         capture_output=True, timeout=60)
    assert got.returncode == 0 and got.stdout == bytes(range(256)) * 10 and got.stderr == b""
    assert run("-a", store, "cat", "calib", "1.0.0", "a.txt").stdout == "alpha\n"
    assert run("-a", store, "cat", "calib", "^1", "a.txt").stdout == "alpha 2\n"


@pytest.mark.parametrize("args, code, text", [
    (["cat", "calib", "nope.txt"], 1, "calib 1.1.0 has no file 'nope.txt'"),
    (["cat", "calib", "^9", "a.txt"], 1, "no version of 'calib' matches '^9'"),
    (["cat", "calib"], 2, "expected NAME [RANGE] PATH"),
    (["pull", "calib", "--prefetch", "--to", "x"], 2, "--prefetch writes no folder"),
    (["pull", "calib", "--include", "*.csv"], 2, "--include/--exclude need --to"),
    (["pull", "calib", "--to", "{tmp}/o", "--include", "*.none"], 1, "no file of calib 1.1.0 matches"),
])
def test_cli_errors_are_one_line(store: str, tmp_path: Path, args, code: int, text: str) -> None:
    """Bad input: one error line (a usage error adds the line pointing to --help), nothing else."""
    result = run("-a", store, *(a.format(tmp=tmp_path) for a in args))
    if code == 1:
        one_line_error(result, code, text)
    else:
        assert result.returncode == 2 and result.stderr.startswith("archive: error: ") and text in result.stderr
        assert result.stderr.splitlines()[1].startswith("Try 'archive ") and len(result.stderr.splitlines()) == 2


def test_pull_include_and_prefetch_from_the_cli(store: str, tmp_path: Path) -> None:
    pulled = run("-a", store, "pull", "calib", "--to", str(tmp_path / "out"), "--include", "raw/", "--exclude", "*.csv")
    assert pulled.returncode == 0, pulled.stderr
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["b.bin", "pulled.json"]
    prefetched = run("-a", store, "pull", "calib", "1.0.0", "--prefetch")
    assert prefetched.returncode == 0 and prefetched.stdout == ""
    assert "prefetched calib 1.0.0 into the cache: 3 files" in prefetched.stderr
    blobs = {p.name for p in (default_cache().root / "blobs").rglob("*") if p.is_file()}
    assert len(blobs) == 3
