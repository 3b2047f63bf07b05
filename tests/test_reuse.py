"""A re-push of an unchanged folder reuses the record of the last publish of the same files
(archive.reuse), and only then: any change, another archive, a record gone or damaged, a blob
missing, or files too young to trust all take the ordinary publish, whose result is checked."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import time
from pathlib import Path

import archive
from archive import layout
from archive.cache import default_cache
from archive.hashing import BlobId
from archive.publish import PublishStats, publish
from archive.statcache import RECORDS_TABLE
from tests.conftest import make_tree
from tests.counting import Counting
from tests.test_statcache import hashed, settle  # noqa: F401  (a fixture)

FILES = {f"d{i % 3}/f{i:03d}.txt": b"line %d\n" % i for i in range(40)} | {"run.sh": b"#!/bin/sh\n"}


def sample(tmp_path: Path) -> Path:
    src = make_tree(tmp_path / "src", FILES)
    os.chmod(src / "run.sh", 0o755)
    settle(src)
    return src


def age(path: Path) -> None:
    """Make one file old enough to be remembered (its ctime changes, as any change's does)."""
    old = time.time() - 3600
    os.utime(path, (old, old))


def push(arc, src: Path, version: str, **metadata) -> archive.Release:
    return publish(arc, src, "calib", version, metadata, progress=False, stat_cache=default_cache().stat_cache)


def remembered_rows() -> int:
    with sqlite3.connect(default_cache().stat_cache.path) as db:
        return db.execute(f"SELECT count(*) FROM {RECORDS_TABLE}").fetchone()[0]


def test_an_unchanged_folder_reuses_the_record_it_was_published_as(folder_archive, tmp_path: Path, hashed) -> None:
    src = sample(tmp_path)
    first = push(folder_archive, src, "1.0.0", message="first")
    counting = Counting(folder_archive)
    counting.archive_id = folder_archive.archive_id  # the same archive, seen through a counter
    hashed.clear()
    stats = PublishStats()
    again = publish(counting, src, "calib", "1.0.1", {"message": "again"}, progress=False, stats=stats,
                    stat_cache=default_cache().stat_cache)
    assert hashed == [] and counting.blobs_opened() == [layout.blob_key(first.record_id)]
    assert (len(again.files), again.total_size, stats.uploaded_files) == (len(FILES), sum(map(len, FILES.values())), 0)
    stored = folder_archive.get_release("calib", "1.0.1")
    assert stored.record_id == again.record_id and stored.metadata == {"message": "again"}
    assert again.files == first.files == stored.files and again.files["run.sh"].executable
    assert {p: e.media_type for p, e in stored.files.items()} == {p: e.media_type for p, e in first.files.items()}
    assert folder_archive.verify("calib", full=True).ok


def test_any_change_takes_the_ordinary_publish(folder_archive, tmp_path: Path, hashed) -> None:
    """Content, a new file, a removed one, the executable bit: each changes what the scan saw."""
    src = sample(tmp_path)
    push(folder_archive, src, "1.0.0")
    (src / "d0/f000.txt").write_bytes(b"changed\n")
    age(src / "d0/f000.txt")
    hashed.clear()
    changed = push(folder_archive, src, "1.0.1")
    assert set(hashed) == {"f000.txt"} and changed.files["d0/f000.txt"].blob == BlobId.of_bytes(b"changed\n")
    (src / "new.txt").write_bytes(b"new\n")
    age(src / "new.txt")
    assert "new.txt" in push(folder_archive, src, "1.0.2").files
    (src / "new.txt").unlink()
    assert "new.txt" not in push(folder_archive, src, "1.0.3").files
    os.chmod(src / "run.sh", stat.S_IRUSR | stat.S_IWUSR)
    assert not push(folder_archive, src, "1.0.4").files["run.sh"].executable
    assert folder_archive.verify("calib", full=True).ok


def test_another_archive_gets_every_blob(folder_archive, tmp_path: Path) -> None:
    """The remembered record is of one archive: another one, or a new archive where the old one
    was, is published to in full."""
    src = sample(tmp_path)
    push(folder_archive, src, "1.0.0")
    with archive.get_interface(tmp_path / "other", create=True) as other:
        push(other, src, "1.0.0")
        assert other.verify("calib", full=True).ok
    location = Path(folder_archive.location)
    shutil.rmtree(location, onerror=lambda f, p, e: (os.chmod(os.path.dirname(p), 0o755), f(p)))
    with archive.get_interface(location, create=True) as fresh:
        push(fresh, src, "1.0.1")
        assert fresh.verify("calib", full=True).ok


def test_a_damaged_record_is_not_reused(folder_archive, tmp_path: Path) -> None:
    src = sample(tmp_path)
    first = push(folder_archive, src, "1.0.0")
    record = Path(folder_archive.location) / layout.blob_key(first.record_id)
    os.chmod(record, 0o644)
    record.write_bytes(record.read_bytes().replace(b'"size":8', b'"size":9', 1))
    again = push(folder_archive, src, "1.0.1")  # not reused: the bytes no longer hash to the record
    assert again.files == first.files and folder_archive.verify("calib", "1.0.1", full=True).ok


def test_a_blob_removed_behind_the_archive_is_written_by_the_next_ordinary_publish(folder_archive,
                                                                                   tmp_path: Path) -> None:
    """A reuse trusts the blobs of a visible release, as the archive's rules allow: a blob
    removed by hand is damage that verify reports, and the next publish that is not a reuse
    (a file changed) finds it missing and writes it again."""
    src = sample(tmp_path)
    first = push(folder_archive, src, "1.0.0")
    gone = first.files["d1/f001.txt"].blob
    (Path(folder_archive.location) / layout.blob_key(gone)).unlink()
    push(folder_archive, src, "1.0.1")
    assert not folder_archive.verify("calib", "1.0.1", full=True).ok
    age(src / "d0/f000.txt")
    push(folder_archive, src, "1.0.2")
    assert all(folder_archive.verify("calib", version, full=True).ok for version in ("1.0.0", "1.0.1", "1.0.2"))


def test_files_too_young_to_trust_are_not_remembered(folder_archive, tmp_path: Path, hashed) -> None:
    """The stat cache's racy rule holds for the reuse: a file changed within the margin before
    the publish could change again without its identity showing it."""
    src = make_tree(tmp_path / "src", FILES)
    push(folder_archive, src, "1.0.0")
    assert remembered_rows() == 0
    hashed.clear()
    push(folder_archive, src, "1.0.1")
    assert sorted(hashed) == sorted(Path(p).name for p in FILES)


def test_the_release_returned_parses_its_files_only_when_read(folder_archive, tmp_path: Path) -> None:
    src = sample(tmp_path)
    push(folder_archive, src, "1.0.0")
    again = push(folder_archive, src, "1.0.1")
    assert "EncodedFiles" in repr(again.files) and len(again.files) == len(FILES)
    assert sorted(again.files) == sorted(FILES) and again.files["run.sh"].size == len(FILES["run.sh"])
    assert again.same_content(folder_archive.get_release("calib", "1.0.1"))


def test_a_repush_reuses_across_names_and_after_a_pause(folder_archive, tmp_path: Path) -> None:
    """The record reused is that of the files, whatever the name; a second push of the same
    version is the existing no-op."""
    src = sample(tmp_path)
    first = push(folder_archive, src, "1.0.0")
    time.sleep(0.01)
    other = publish(folder_archive, src, "other", "2.0.0", progress=False, stat_cache=default_cache().stat_cache)
    assert other.files == first.files and other.name == "other"
    assert push(folder_archive, src, "1.0.0").record_id == first.record_id
    assert folder_archive.verify("other", full=True).ok


def test_the_scan_digest_covers_every_part_of_each_identity(tmp_path: Path) -> None:
    """A scan's compact stat and a full one give the same digest; any part changed, a path or a
    location changed, or a number too large for the fast form, gives another."""
    from archive.reuse import scan_digest
    from archive.scan import FileStat, SourceFile, scan_folder

    src = sample(tmp_path)
    scanned = scan_folder(src)
    full = [SourceFile(s.path, s.location, os.stat(s.location)) for s in scanned]
    digest = scan_digest(scanned)
    assert scan_digest(full) == digest
    first = scanned[0]
    for part in FileStat._fields:
        changed = SourceFile(first.path, first.location, first.info._replace(**{part: getattr(first.info, part) + 1}))
        assert scan_digest([changed, *scanned[1:]]) != digest, part
    assert scan_digest([SourceFile("other", first.location, first.info), *scanned[1:]]) != digest
    assert scan_digest([SourceFile(first.path, "/elsewhere", first.info), *scanned[1:]]) != digest
    huge = SourceFile(first.path, first.location, first.info._replace(st_ino=2 ** 64 - 1))
    assert scan_digest([huge, *scanned[1:]]) not in (digest, scan_digest([huge]))
