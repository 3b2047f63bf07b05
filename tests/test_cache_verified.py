"""The cache notes the blobs it verified in memory and saves them to the stat cache in batches:
a pull asks no database about a blob it has just fetched, remembers its blobs in a few
transactions (not one per blob), still catches a cache file changed after it was verified, and
loses nothing it verified when no caller saves (the notes are saved when the cache goes away)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archive import cache as cache_module
from archive.cache import REHASH_BELOW, BlobCache, default_cache
from archive.hashing import BlobId
from archive.statcache import StatCache
from tests.conftest import make_tree
from tests.test_publish import snapshot

REPO = Path(__file__).resolve().parents[1]
#: Large enough to be remembered in the stat cache (above REHASH_BELOW), 40 distinct blobs.
LARGE = {f"d{i % 4}/f{i:02d}.bin": os.urandom(REHASH_BELOW + 1 + i) for i in range(40)}


@pytest.fixture
def remote(folder_archive, tmp_path: Path):
    """A release of 40 large files on an archive pulled through the cache (as from a network)."""
    folder_archive.local = False
    folder_archive.publish(make_tree(tmp_path / "src", LARGE), "large", "1.0.0", progress=False)
    return folder_archive


@pytest.fixture
def stat_calls(monkeypatch) -> dict[str, list[int]]:
    """The stat cache's transactions that remember files (rows in each) and its lookups."""
    calls: dict[str, list[int]] = {"remember": [], "recall": []}
    remember, recall = StatCache.remember, StatCache.recall

    def counting_remember(self, entries, hashed_at_ns, with_ctime=True):
        entries = list(entries)
        if entries:
            calls["remember"].append(len(entries))
        return remember(self, entries, hashed_at_ns, with_ctime)

    def counting_recall(self, files, with_ctime=True):
        files = list(files)
        calls["recall"].append(len(files))
        return recall(self, files, with_ctime)

    monkeypatch.setattr(StatCache, "remember", counting_remember)
    monkeypatch.setattr(StatCache, "recall", counting_recall)
    return calls


def remembered(root: Path, blob: BlobId) -> bool:
    """Whether the stat cache of the cache at ``root`` knows the cache file of ``blob`` verified."""
    path = BlobCache(root).path_of(blob)
    return StatCache(root / "stat.sqlite").lookup(path, os.stat(path), with_ctime=False) == blob


def test_a_pull_remembers_its_blobs_together_and_asks_nothing_about_those_it_fetched(
        remote, tmp_path: Path, stat_calls) -> None:
    out = remote.download("large", "1.0.0", tmp_path / "out", progress=False)
    assert snapshot(out) == LARGE
    assert stat_calls["recall"] == []  # each blob was just fetched and verified: no lookup
    assert sum(stat_calls["remember"]) == len(LARGE) and len(stat_calls["remember"]) == 1
    root = default_cache().root
    assert all(remembered(root, BlobId.of_bytes(data)) for data in LARGE.values())


def test_a_long_pull_saves_its_notes_every_batch(remote, tmp_path: Path, stat_calls, monkeypatch) -> None:
    """A pull killed halfway loses at most a batch of notes (it only costs a re-hash)."""
    monkeypatch.setattr(cache_module, "REMEMBER_BATCH", 16)
    remote.download("large", "1.0.0", tmp_path / "out", progress=False)
    assert sum(stat_calls["remember"]) == len(LARGE) and max(stat_calls["remember"]) <= 16
    assert len(stat_calls["remember"]) == 3  # 16 + 16 + the 8 left, saved at the end of the pull


def test_a_second_pull_uses_the_saved_notes_and_does_not_hash_again(remote, tmp_path: Path, monkeypatch) -> None:
    remote.download("large", "1.0.0", tmp_path / "first", progress=False)
    hashed = []
    check = BlobCache._check
    monkeypatch.setattr(BlobCache, "_check", lambda self, blob, size: (hashed.append(blob), check(self, blob, size)))
    out = remote.download("large", "1.0.0", tmp_path / "second", progress=False)  # a new BlobCache: no notes
    assert snapshot(out) == LARGE and hashed == []


def test_a_cache_file_changed_after_it_was_verified_is_fetched_again(remote, tmp_path: Path) -> None:
    """The note holds only while the file is as it was (inode, size, mtime): a file rewritten
    since is hashed, found corrupt, evicted and fetched again."""
    cache = default_cache()
    data = LARGE["d0/f00.bin"]
    blob = BlobId.of_bytes(data)
    path = cache.verified_path(remote, blob, len(data))
    path.chmod(0o644)
    path.write_bytes(b"X" + data[1:])
    os.utime(path, ns=(1, 1))
    again = cache.verified_path(remote, blob, len(data))
    assert again.read_bytes() == data


def test_notes_no_caller_saved_are_saved_when_the_cache_goes_away(remote, tmp_path: Path) -> None:
    root = tmp_path / "other-cache"
    cache = BlobCache(root)
    data = LARGE["d1/f01.bin"]
    blob = BlobId.of_bytes(data)
    cache.verified_path(remote, blob, len(data))
    assert not remembered(root, blob)  # not yet saved: one blob is less than a batch
    del cache
    gc.collect()
    assert remembered(root, blob)


def test_notes_no_caller_saved_are_saved_at_exit(remote, tmp_path: Path) -> None:
    root = tmp_path / "exit-cache"
    data = LARGE["d2/f02.bin"]
    blob = BlobId.of_bytes(data)
    code = ("import sys, archive; from archive.cache import BlobCache; from archive.hashing import BlobId;"
            "cache = BlobCache(sys.argv[1]); arc = archive.get_interface(sys.argv[2]); arc.local = False;"
            "cache.verified_path(arc, BlobId(sys.argv[3]), int(sys.argv[4]))")
    subprocess.run([sys.executable, "-c", code, str(root), str(remote.root), blob.hexdigest, str(len(data))],
                   check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert remembered(root, blob)
