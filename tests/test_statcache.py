"""The stat cache saves re-hashing unchanged files and never gives a wrong hash."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import archive.publish as publish_module
from archive.cache import default_cache
from archive.hashing import BlobId
from archive.statcache import StatCache
from tests.conftest import make_tree


def settle(folder: Path, age_s: float = 3600) -> None:
    """Give every file an mtime far enough in the past to be remembered."""
    old = time.time() - age_s
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The names of the files publish opens (to hash, or to hash and upload), in order."""
    seen: list[str] = []
    real = publish_module._opened

    def counting(source):
        seen.append(Path(source.location).name)
        return real(source)

    monkeypatch.setattr(publish_module, "_opened", counting)
    real_whole = publish_module.read_whole  # a new small file is read whole, without a file object

    def counting_whole(source, check):
        seen.append(Path(source.location).name)
        return real_whole(source, check)

    monkeypatch.setattr(publish_module, "read_whole", counting_whole)
    return seen


def test_unchanged_files_are_not_hashed_again(folder_archive, tmp_path: Path, hashed) -> None:
    src = make_tree(tmp_path / "src", {f"f{i}.txt": f"file {i}".encode() for i in range(5)})
    settle(src)
    folder_archive.publish(src, "calib", "1.0.0", progress=False)
    assert sorted(hashed) == [f"f{i}.txt" for i in range(5)]
    hashed.clear()
    folder_archive.publish(src, "calib", "1.0.0", progress=False)
    assert hashed == []
    (src / "f2.txt").write_bytes(b"changed")
    old = time.time() - 3600
    os.utime(src / "f2.txt", (old, old))  # settled again; touching the others would change their ctime
    release = folder_archive.publish(src, "calib", "1.1.0", progress=False)
    assert hashed == ["f2.txt"]
    assert release.files["f2.txt"].blob == BlobId.of_bytes(b"changed")


def test_same_size_and_restored_mtime_is_still_seen(folder_archive, tmp_path: Path, hashed) -> None:
    """Content rewritten with the same size and the old mtime put back (as cp -p or rsync -t
    would): ctime gives it away."""
    src = make_tree(tmp_path / "src", {"data.bin": b"AAAA"})
    settle(src)
    folder_archive.publish(src, "calib", "1.0.0", progress=False)
    before = os.stat(src / "data.bin")
    time.sleep(0.01)
    (src / "data.bin").write_bytes(b"BBBB")
    os.utime(src / "data.bin", ns=(before.st_atime_ns, before.st_mtime_ns))
    release = folder_archive.publish(src, "calib", "1.1.0", progress=False)
    assert release.files["data.bin"].blob == BlobId.of_bytes(b"BBBB")


def test_recently_changed_files_are_not_remembered(folder_archive, tmp_path: Path, hashed) -> None:
    """The racily-clean rule: a file changed within the margin may change again within the
    same timestamp tick, so its hash is not trusted next time."""
    src = make_tree(tmp_path / "src", {"fresh.txt": b"just written"})
    folder_archive.publish(src, "calib", "1.0.0", progress=False)
    folder_archive.publish(src, "calib", "1.0.0", progress=False)
    assert hashed == ["fresh.txt", "fresh.txt"]


def test_a_broken_database_only_costs_time(folder_archive, tmp_path: Path, caplog) -> None:
    stat_db = default_cache().stat_cache.path
    stat_db.parent.mkdir(parents=True, exist_ok=True)
    stat_db.write_bytes(b"this is not a sqlite database" * 100)
    src = make_tree(tmp_path / "src", {"a.txt": b"a"})
    settle(src)
    release = folder_archive.publish(src, "calib", "1.0.0", progress=False)
    assert release.files["a.txt"].blob == BlobId.of_bytes(b"a")
    assert "stat cache" in caplog.text and "unusable" in caplog.text


def test_lookup_needs_every_part_of_the_identity(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "s.sqlite")
    path = tmp_path / "f"
    path.write_bytes(b"x")
    settle(tmp_path)
    info = os.stat(path)
    cache.remember([(path, info, BlobId.of_bytes(b"x"))], time.time_ns())
    assert cache.lookup(path, info) == BlobId.of_bytes(b"x")
    assert cache.lookup(tmp_path / "other", info) is None
    moved = os.stat_result((info.st_mode, info.st_ino + 1, *info[2:]))
    assert cache.lookup(path, moved) is None
    cache.forget(path)
    assert cache.lookup(path, info) is None
