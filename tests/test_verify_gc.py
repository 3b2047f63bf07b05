"""``verify`` finds every kind of damage; ``gc`` removes only what is unreferenced and old."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from archive import layout
from archive.cache import default_cache
from archive.errors import IntegrityError
from archive.hashing import BlobId
from tests.conftest import count_blob_files, make_tree
from tests.test_cli import run

FILES = {"a.txt": b"alpha", "b.bin": b"\x01" * 5000}


@pytest.fixture
def published(folder_archive, tmp_path: Path):
    folder_archive.publish(make_tree(tmp_path / "src", FILES), "calib", "1.0.0", progress=False)
    return folder_archive


def writable(path: Path) -> Path:
    path.chmod(0o644)
    return path


def blob_path(arc, content: bytes) -> Path:
    return writable(arc.local_path(layout.blob_key(BlobId.of_bytes(content))))


def test_sound_archive_verifies(published) -> None:
    report = published.verify(full=True)
    assert report.ok and (report.releases, report.blobs, report.bytes) == (1, 2, 5005)


@pytest.mark.parametrize("damage, full, message", [
    (lambda p: p.unlink(), False, "is missing"),
    (lambda p: p.write_bytes(b"short"), False, "5 bytes stored, 5000 recorded"),
    (lambda p: p.write_bytes(b"\x02" * 5000), False, None),
    (lambda p: p.write_bytes(b"\x02" * 5000), True, "hashes to"),
])
def test_damaged_blob_is_reported(published, damage, full, message) -> None:
    damage(blob_path(published, FILES["b.bin"]))
    report = published.verify(full=full)
    if message is None:
        assert report.ok  # same size, and no re-hash asked for: only --full can see it
    else:
        assert not report.ok and message in report.errors[0]


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "does not match its id"),
    (lambda p: p.write_bytes(b"{}"), "does not match its id"),
    (lambda p: p.unlink(), "missing"),
])
def test_damaged_record_is_reported(published, damage, message) -> None:
    damage(writable(published.local_path(layout.blob_key(published.release_id("calib", "1.0.0")))))
    report = published.verify()
    assert not report.ok and message in report.errors[0]


def test_bad_pointer_is_reported(published) -> None:
    writable(published.local_path(layout.release_key("calib", "1.0.0"))).write_text("garbage\n")
    assert "not a record id" in published.verify().errors[0]


def test_stale_index_is_a_warning_and_repairable(published, tmp_path: Path) -> None:
    index = published.local_path(layout.versions_index_key("calib"))
    before = index.read_bytes()
    published.publish(make_tree(tmp_path / "v2", {"x": b"2"}), "calib", "2.0.0", progress=False)
    index.unlink()
    index.write_bytes(before)  # as if the publisher died between its pointer and its index
    report = published.verify()
    assert report.ok and report.warnings == ["calib: index lacks 2.0.0 (publish again or run verify --repair)"]
    assert published.verify(repair=True).warnings == ["calib: index lacks 2.0.0; repaired"]
    assert published.verify().warnings == []


def test_verify_cli_exit_status(published) -> None:
    assert run("-a", published.location, "verify", "--full").returncode == 0
    blob_path(published, FILES["a.txt"]).write_bytes(b"ALPHA")
    result = run("-a", published.location, "verify", "--full")
    assert result.returncode == 1
    assert result.stderr.startswith("archive: error: blob") and "1 problem(s)" in result.stdout


def test_verify_cache_evicts_corrupt_blobs(published, tmp_path: Path) -> None:
    published.download("calib", "*", tmp_path / "out", link="hard", progress=False)  # hard links come from the cache
    cached = writable(default_cache().path_of(BlobId.of_bytes(FILES["a.txt"])))
    cached.write_bytes(b"rot!!")
    result = run("verify", "--cache")
    assert result.returncode == 1 and "(evicted)" in result.stderr
    assert not cached.exists()
    assert run("verify", "--cache").returncode == 0


def age(path: Path, hours: float) -> None:
    old = time.time() - hours * 3600
    os.utime(path, (old, old))


def test_gc_removes_only_old_unreferenced_blobs_and_temporaries(published) -> None:
    root = Path(published.location)
    orphan_old, orphan_new = b"orphan from a killed publish", b"blob of a publish in flight"
    for data in (orphan_old, orphan_new):
        published.write_key(layout.blob_key(BlobId.of_bytes(data)), [data])
    age(blob_path(published, orphan_old), 48)
    (root / "tmp" / "dead.part").write_bytes(b"x" * 10)
    age(root / "tmp" / "dead.part", 48)
    (root / "tmp" / "live.part").write_bytes(b"y")
    live_before = count_blob_files(root)

    dry = published.collect_garbage(dry_run=True)
    assert len(dry.removed) == 2 and count_blob_files(root) == live_before
    report = published.collect_garbage()
    assert sorted(report.removed) == sorted([layout.blob_key(BlobId.of_bytes(orphan_old)), "tmp/dead.part"])
    assert report.bytes_freed == len(orphan_old) + 10 and report.kept_young == 2
    assert published.verify(full=True).ok
    assert (root / "tmp" / "live.part").exists()


def test_gc_refuses_when_a_record_is_unreadable(published) -> None:
    orphan = b"orphan"
    published.write_key(layout.blob_key(BlobId.of_bytes(orphan)), [orphan])
    writable(published.local_path(layout.release_key("calib", "1.0.0"))).write_text("garbage\n")
    with pytest.raises(IntegrityError, match="nothing removed"):
        published.collect_garbage(grace_hours=0)
    assert published.has_key(layout.blob_key(BlobId.of_bytes(orphan)))


def test_gc_cli(published) -> None:
    orphan = b"orphan"
    published.write_key(layout.blob_key(BlobId.of_bytes(orphan)), [orphan])
    result = run("-a", published.location, "gc", "--grace", "0")
    assert result.returncode == 0
    assert f"removed {layout.blob_key(BlobId.of_bytes(orphan))}" in result.stdout and "freed 6 B in 1 objects" in result.stdout
