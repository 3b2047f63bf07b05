"""The stat cache saves re-hashing unchanged files and never gives a wrong hash."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

import archive.publish as publish_module
from archive.cache import default_cache
from archive.hashing import BlobId
from archive.statcache import RECORDS_TABLE, StatCache
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


@pytest.mark.parametrize("part", ["st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns"])
def test_recall_compares_every_part_of_the_identity_in_sqlite(tmp_path: Path, part: str) -> None:
    """The identities are compared inside sqlite (a join): one part off, and the file is unknown."""
    from archive.scan import FileStat

    cache = StatCache(tmp_path / "s.sqlite")
    paths = [tmp_path / f"f{i}" for i in range(3)]
    for path in paths:
        path.write_bytes(path.name.encode())
    settle(tmp_path)
    infos = [FileStat.of(os.stat(path)) for path in paths]
    cache.remember([(p, i, BlobId.of_bytes(p.name.encode()), "text/plain") for p, i in zip(paths, infos)],
                   time.time_ns())
    changed = infos[1]._replace(**{part: getattr(infos[1], part) + 1})
    known = cache.recall([(paths[0], infos[0]), (paths[1], changed), (paths[2], infos[2])])
    assert known == {0: (BlobId.of_bytes(b"f0"), "text/plain"), 2: (BlobId.of_bytes(b"f2"), "text/plain")}
    assert cache.lookup_many([(paths[1], changed), (paths[2], infos[2])]) == [None, BlobId.of_bytes(b"f2")]


def test_the_cache_of_the_version_before_is_taken_over(tmp_path: Path) -> None:
    """A stat cache written before media types were kept (table ``files``) is copied once: an
    upgrade costs no re-hash, and the old table stays for an older client."""

    path = tmp_path / "f"
    path.write_bytes(b"x")
    info = os.stat(path)
    old = sqlite3.connect(tmp_path / "s.sqlite")
    old.execute("CREATE TABLE files (path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER,"
                " mtime_ns INTEGER, ctime_ns INTEGER, blob TEXT)")
    old.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns,
                 str(BlobId.of_bytes(b"x"))))
    old.commit()
    old.close()
    cache = StatCache(tmp_path / "s.sqlite")
    assert cache.recall([(path, info)]) == {0: (BlobId.of_bytes(b"x"), None)}
    cache.close()
    assert sqlite3.connect(tmp_path / "s.sqlite").execute("SELECT count(*) FROM files").fetchone() == (1,)


def test_a_repush_reads_neither_the_files_nor_the_earlier_release(folder_archive, tmp_path: Path, hashed) -> None:
    """The stat cache keeps each file's media type beside its hash, so publishing an unchanged
    folder again opens no file and no stored object but the record it reuses (archive.reuse);
    rows that lack a media type (written by a pull, or by a version before) get it on the first
    push that is not a reuse."""
    from archive.publish import publish
    from tests.counting import Counting

    src = make_tree(tmp_path / "src", {"a.csv": b"a,b\n1,2\n", "b.png": b"\x89PNG\r\n\x1a\n....", "c": b"text\n"})
    settle(src)
    stat_cache = default_cache().stat_cache
    first = publish(folder_archive, src, "calib", "1.0.0", progress=False, stat_cache=stat_cache)
    counting = Counting(folder_archive)
    hashed.clear()
    again = publish(counting, src, "calib", "1.0.1", progress=False, stat_cache=stat_cache)
    assert hashed == [] and counting.blobs_opened(besides=[first.record_id]) == []
    assert {p: e.media_type for p, e in again.files.items()} == {p: e.media_type for p, e in first.files.items()}
    assert again.files["b.png"].media_type == "image/png"
    stat_cache.remember([(src / "b.png", os.stat(src / "b.png"), first.files["b.png"].blob)], None)  # as a pull does
    os.utime(src / "c", ns=(0, 0))  # a change the reuse sees: this push recalls each file
    filled = publish(counting, src, "calib", "1.0.2", progress=False, stat_cache=stat_cache)
    assert filled.files["b.png"].media_type == "image/png" and counting.blobs_opened() != []
    with sqlite3.connect(stat_cache.path) as db:  # no record to reuse: each file is recalled
        db.execute(f"DELETE FROM {RECORDS_TABLE}")
    counting.opened.clear()
    hashed.clear()
    publish(counting, src, "calib", "1.0.3", progress=False, stat_cache=stat_cache)
    assert counting.blobs_opened() == [] and hashed == []


def test_a_remembered_publish_is_read_back_and_a_damaged_row_is_ignored(tmp_path: Path) -> None:
    from archive.statcache import Published

    cache = StatCache(tmp_path / "s.sqlite")
    published = Published("calib", "1.0.0", BlobId.of_bytes(b"record"), 10, 20)
    cache.remember_published("d" * 64, "id:x", published)
    assert cache.published("d" * 64, "id:x") == published
    assert cache.published("d" * 64, "id:y") is None and cache.published("e" * 64, "id:x") is None
    cache.close()
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        db.execute(f"UPDATE {RECORDS_TABLE} SET record = 'sha256:nothex', files_start = 30")
    assert StatCache(tmp_path / "s.sqlite").published("d" * 64, "id:x") is None
