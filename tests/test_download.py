"""Downloading: verified bytes only, never a partial file, never outside the destination."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from archive import layout
from archive.cache import default_cache
from archive.errors import (DestinationConflictError, DestinationError, IntegrityError, InvalidInputError,
                            InvalidPathError)
from archive.hashing import BlobId
from archive.placing import LARGE_BLOB
from archive.records import FileEntry, Release, canonical_json
from tests.conftest import make_tree
from tests.test_publish import snapshot

FILES = {"a.txt": b"alpha", "sub/b.bin": os.urandom(100_000), "sub/c.txt": b"gamma"}


@pytest.fixture(params=["local disk", "network mount"])
def published(folder_archive, tmp_path: Path, request):
    """A folder archive with one release, seen as on a local disk (downloads copy from its
    blobs directly) or as on a network mount (downloads go through the user's cache)."""
    folder_archive.local = request.param == "local disk"
    folder_archive.publish(make_tree(tmp_path / "src", FILES), "calib", "1.0.0", progress=False)
    return folder_archive


@pytest.fixture
def published_via_cache(folder_archive, tmp_path: Path):
    """A release on an archive that downloads go through the cache for (a network mount)."""
    folder_archive.local = False
    folder_archive.publish(make_tree(tmp_path / "src", FILES), "calib", "1.0.0", progress=False)
    return folder_archive


def source_of(arc, content: bytes) -> Path:
    """The file a download copies ``content`` from: the archive's own blob file on a local
    disk, else the cache's."""
    blob = BlobId.of_bytes(content)
    return arc.local_path(layout.blob_key(blob)) if arc.local else default_cache().path_of(blob)


def corrupt_blob(arc, content: bytes, replacement: bytes) -> None:
    path = arc.local_path(layout.blob_key(BlobId.of_bytes(content)))
    path.chmod(0o644)
    path.write_bytes(replacement)


def test_pull_into_folder(published, tmp_path: Path) -> None:
    out = published.download("calib", "^1", tmp_path / "out", progress=False)
    assert snapshot(out) == FILES


def test_pull_without_destination_gives_read_only_snapshot(published) -> None:
    folder = published.download("calib", "1.0.0", progress=False)
    assert folder.is_relative_to(default_cache().root)
    assert snapshot(folder) == FILES
    assert all(p.stat().st_mode & 0o222 == 0 for p in folder.rglob("*") if p.is_file())
    assert published.download("calib", "1.0.0", progress=False) == folder


@pytest.mark.parametrize("damage", ["flipped", "truncated", "extended"])
def test_corrupt_blob_in_archive_is_refused(published, tmp_path: Path, damage: str) -> None:
    good = FILES["sub/b.bin"]
    bad = {"flipped": bytes([good[0] ^ 1]) + good[1:], "truncated": good[:-1], "extended": good + b"x"}[damage]
    corrupt_blob(published, good, bad)
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match="blob"):
        published.download("calib", "^1", out, progress=False)
    assert not (out / "sub" / "b.bin").exists()
    assert not list(default_cache().root.rglob(BlobId.of_bytes(good).hexdigest))


def test_corrupt_cache_blob_is_evicted_and_fetched_again(published_via_cache, tmp_path: Path) -> None:
    published = published_via_cache
    published.download("calib", "^1", tmp_path / "first", progress=False)
    cached = default_cache().path_of(BlobId.of_bytes(FILES["a.txt"]))
    cached.chmod(0o644)
    cached.write_bytes(b"rot")
    out = published.download("calib", "^1", tmp_path / "second", progress=False)
    assert snapshot(out) == FILES
    assert cached.read_bytes() == FILES["a.txt"]


def test_existing_identical_files_are_kept(published, tmp_path: Path) -> None:
    out = make_tree(tmp_path / "out", {"a.txt": FILES["a.txt"], "mine.txt": b"keep me"})
    inode = (out / "a.txt").stat().st_ino
    published.download("calib", "^1", out, progress=False)
    assert (out / "a.txt").stat().st_ino == inode
    assert (out / "mine.txt").read_bytes() == b"keep me"


def test_different_existing_file_needs_force(published, tmp_path: Path) -> None:
    out = make_tree(tmp_path / "out", {"a.txt": b"local edit", "sub/c.txt": b"also edited"})
    with pytest.raises(DestinationConflictError, match=r"2 path\(s\) .* a.txt \(other content\), sub/c.txt \(other content\) .*--force") as info:
        published.download("calib", "^1", out, progress=False)
    assert info.value.paths == ["a.txt", "sub/c.txt"]
    assert snapshot(out) == {"a.txt": b"local edit", "sub/c.txt": b"also edited"}
    published.download("calib", "^1", out, force=True, progress=False)
    assert snapshot(out) == FILES


def hostile_release(arc, files: dict[str, FileEntry]) -> None:
    """Store a record that bypasses the publisher's checks, as an attacker with write access could."""
    obj = Release("calib", "6.6.6", "2026-01-01T00:00:00Z", {}, {}).to_json()
    obj["files"] = {path: entry.to_json() for path, entry in files.items()}
    data = canonical_json(obj)
    arc.write_key(layout.blob_key(BlobId.of_bytes(data)), [data])
    arc.write_key(layout.release_key("calib", "6.6.6"), [f"{BlobId.of_bytes(data)}\n".encode()])


@pytest.mark.parametrize("path", ["../escape.txt", "/tmp/abs.txt", "sub/../../x", "C:/x", "a\\..\\..\\x"])
def test_hostile_record_paths_write_nothing(published, tmp_path: Path, path: str) -> None:
    entry = FileEntry(BlobId.of_bytes(FILES["a.txt"]), len(FILES["a.txt"]))
    hostile_release(published, {"ok.txt": entry, path: entry})
    out = tmp_path / "nest" / "out"
    with pytest.raises(IntegrityError, match="unsafe path"):
        published.download("calib", "6.6.6", out, progress=False)
    assert not out.exists() and snapshot(tmp_path / "nest") == {}


def test_symlink_in_destination_cannot_redirect_writes(published, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidPathError, match="outside"):
        published.download("calib", "^1", out, progress=False)
    assert list(outside.iterdir()) == []


def test_record_under_wrong_name_is_refused(published, tmp_path: Path) -> None:
    """A pointer for 2.0.0 that names the record of 1.0.0 (mix-and-match) is detected."""
    published.write_key(layout.release_key("calib", "2.0.0"),
                        [f"{published.release_id('calib', '1.0.0')}\n".encode()])
    with pytest.raises(IntegrityError, match="stored as calib 2.0.0 describes calib 1.0.0"):
        published.download("calib", "^2", tmp_path / "out", progress=False)


def test_tampered_record_is_refused(published, tmp_path: Path) -> None:
    record_id = published.release_id("calib", "1.0.0")
    path = published.local_path(layout.blob_key(record_id))
    path.chmod(0o644)
    path.write_bytes(path.read_bytes().replace(b'"a.txt"', b'"A.txt"'))
    with pytest.raises(IntegrityError, match="does not match its id"):
        published.download("calib", "^1", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("existing", [False, True], ids=["new folder", "existing folder"])
def test_interrupted_download_leaves_no_partial_file(published, tmp_path: Path, monkeypatch, existing: bool) -> None:
    """Interrupt the copy midway through a file: the target path never holds a partial file. A
    new folder is built aside (archive.staging), and nothing of it is left."""
    import archive.materialize as materialize
    import archive.placing as placing
    import archive.staging as staging

    def dying_copy(source, out):
        out.write(source.read(10))
        raise KeyboardInterrupt

    def dying_chunks(stream):
        yield stream.read(10)
        raise KeyboardInterrupt

    def dying_write(fd, data):
        os.write(fd, data[:2])
        raise KeyboardInterrupt

    monkeypatch.setattr(materialize, "copy_bytes", dying_copy)  # a copy from the cache
    monkeypatch.setattr(placing, "iter_chunks", dying_chunks)  # a verified copy from the archive
    monkeypatch.setattr(materialize, "write_all", dying_write)  # a small file, written from memory
    monkeypatch.setattr(staging, "write_all", dying_write)  # the same, in a folder built aside
    out = tmp_path / "pulls" / "out"
    out.mkdir(parents=True) if existing else out.parent.mkdir()
    with pytest.raises(KeyboardInterrupt):
        published.download("calib", "^1", out, jobs=1, link="copy", progress=False)
    if existing:
        assert [p for p in out.rglob("*") if p.is_file()] == []
    else:
        assert list(out.parent.iterdir()) == []
    monkeypatch.undo()
    assert snapshot(published.download("calib", "^1", out, progress=False)) == FILES


@pytest.mark.parametrize("existing", [False, True], ids=["new folder", "existing folder"])
def test_sigkilled_pull_leaves_no_partial_file(published, tmp_path: Path, existing: bool) -> None:
    """SIGKILL a pull while it writes: only complete files under release paths, no leftovers;
    the next pull completes. A new folder is built aside (archive.staging): the kill leaves no
    folder at all, only the hidden one, which the next pull removes."""
    import signal
    import subprocess
    import sys
    import time

    big = {f"f{i}.bin": os.urandom(16 << 20) for i in range(16)}
    published.publish(make_tree(tmp_path / "big", big), "big", "1.0.0", progress=False)
    published.download("big", "*", tmp_path / "warm", progress=False)  # blobs verified: kill while writing dest
    out = tmp_path / "pulls" / "out"
    out.mkdir(parents=True) if existing else out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "archive", "-a", published.location, "-j", "1", "pull",
                             "big", "--to", str(out)], stderr=subprocess.PIPE)

    def written() -> list[Path]:
        return [p for p in out.parent.rglob("*") if p.is_file()]

    while proc.poll() is None and not written():
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the pull finished before the kill"
    if existing:
        leftovers = []
        for path in out.rglob("*"):
            if path.name.endswith(".archive-part"):
                leftovers.append(path.name)  # the hidden temporary the killed writer could not remove
            else:
                assert path.read_bytes() == big[path.name], f"{path.name} is partial"
        assert len(leftovers) <= 1
    else:
        assert not out.exists()
        [staged] = list(out.parent.iterdir())
        assert staged.name.startswith(".out.") and staged.name.endswith(".archive-part")
    assert snapshot(published.download("big", "*", out, progress=False)) == big  # and no leftovers
    assert [p.name for p in out.parent.iterdir()] == ["out"]


def test_stale_named_temporaries_are_removed_by_the_next_pull(published, tmp_path: Path) -> None:
    out = make_tree(tmp_path / "out", {".a.txt.0123456789ab.archive-part": b"alph",
                                       ".mine.0123456789ab.archive-part": b"not ours to touch"})
    published.download("calib", "*", out, progress=False)
    assert snapshot(out) == {**FILES, ".mine.0123456789ab.archive-part": b"not ours to touch"}


def test_failed_write_leaves_no_temporary(tmp_path: Path) -> None:
    from archive.materialize import write_file_atomically

    def failing():
        yield b"half"
        raise IntegrityError("boom")

    with pytest.raises(IntegrityError):
        write_file_atomically(tmp_path / "x", failing(), 0o644)
    assert list(tmp_path.iterdir()) == []
    write_file_atomically(tmp_path / "x", [b"whole"], 0o644)
    assert [p.name for p in tmp_path.iterdir()] == ["x"] and (tmp_path / "x").read_bytes() == b"whole"


def replace_release(arc, name: str, version: str, files: dict[str, bytes]) -> None:
    """Swap the record behind an existing release for a valid one with other content, as
    someone with write access to the storage (or a restore from another copy) could."""
    entries = {}
    for path, data in files.items():
        blob = BlobId.of_bytes(data)
        arc.write_key(layout.blob_key(blob), [data])
        entries[path] = FileEntry(blob, len(data))
    record = Release.create(name, version, entries)
    arc.write_key(layout.blob_key(record.record_id), [record.to_bytes()])
    arc.write_key(layout.release_key(name, version), [f"{record.record_id}\n".encode()])


def test_release_changed_since_first_read_is_refused(published, tmp_path: Path) -> None:
    published.download("calib", "1.0.0", tmp_path / "first", progress=False)
    replace_release(published, "calib", "1.0.0", {"a.txt": b"evil"})
    with pytest.raises(IntegrityError, match="calib 1.0.0 in .* has changed: record .* was read here before"):
        published.download("calib", "1.0.0", tmp_path / "second", progress=False)
    assert not (tmp_path / "second").exists()


def test_expected_record_id_pins_a_download(published, tmp_path: Path) -> None:
    record_id = str(published.release_id("calib", "1.0.0"))
    published.download("calib", "1.0.0", tmp_path / "ok", expect=record_id, progress=False)
    with pytest.raises(IntegrityError, match="expected sha256:0000"):
        published.download("calib", "1.0.0", tmp_path / "bad", expect="sha256:" + "0" * 64, progress=False)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("link", ["auto", "copy"])
def test_independent_copies_never_touch_their_source(published, tmp_path: Path, link: str) -> None:
    """An edited pulled file changes neither the cache nor the archive it came from."""
    for attempt in ("first", "again"):  # hashed while copied, then copied from a verified blob
        out = published.download("calib", "*", tmp_path / attempt, link=link, progress=False)
        source = source_of(published, FILES["a.txt"])
        assert (out / "a.txt").stat().st_ino != source.stat().st_ino
        (out / "a.txt").write_bytes(b"user edit")
        assert source.read_bytes() == FILES["a.txt"]


def test_local_archive_blobs_are_not_cached_twice(published, tmp_path: Path) -> None:
    """From an archive on a local disk, a pull writes each byte once: no copy in the cache."""
    published.download("calib", "*", tmp_path / "out", progress=False)
    cached = [p for p in (default_cache().root / "blobs").rglob("*") if p.is_file()]
    assert len(cached) == (0 if published.local else len({BlobId.of_bytes(c) for c in FILES.values()}))


def test_large_files_from_a_remote_archive_are_written_once(published_via_cache, tmp_path: Path) -> None:
    """Into a folder, a file of LARGE_BLOB bytes and more is written straight from the archive
    (one copy on disk, not two) and a smaller one is kept in the cache; with cache_large the
    large one is kept too, and a later pull then copies it from the cache, even with the
    archive's copy gone."""
    files = {"big.bin": os.urandom(LARGE_BLOB), "small.bin": os.urandom(LARGE_BLOB - 1)}
    big, small = (BlobId.of_bytes(files[name]) for name in ("big.bin", "small.bin"))
    arc, cache = published_via_cache, default_cache()
    arc.publish(make_tree(tmp_path / "mixed", files), "mixed", "1.0.0", progress=False)
    assert snapshot(arc.download("mixed", "*", tmp_path / "once", progress=False)) == files
    assert not cache.has(big, LARGE_BLOB) and cache.has(small, LARGE_BLOB - 1)
    assert snapshot(arc.download("mixed", "*", tmp_path / "kept", cache_large=True, progress=False)) == files
    assert cache.has(big, LARGE_BLOB)
    arc.local_path(layout.blob_key(big)).unlink()
    assert snapshot(arc.download("mixed", "*", tmp_path / "from-cache", progress=False)) == files


def test_a_large_blob_two_files_hold_is_fetched_once(published_via_cache, tmp_path: Path) -> None:
    """Two files of one large blob: it is fetched once, into the cache, and copied to both
    (not streamed from the archive twice); a large blob one file holds still streams."""
    big = os.urandom(LARGE_BLOB)
    files = {"a/big.bin": big, "b/same.bin": big, "other.bin": os.urandom(LARGE_BLOB)}
    published_via_cache.publish(make_tree(tmp_path / "twice", files), "twice", "1.0.0", progress=False)
    assert snapshot(published_via_cache.download("twice", "*", tmp_path / "out", progress=False)) == files
    assert default_cache().has(BlobId.of_bytes(big), LARGE_BLOB)
    assert not default_cache().has(BlobId.of_bytes(files["other.bin"]), LARGE_BLOB)


def test_a_pull_cannot_both_keep_large_files_and_nothing(published_via_cache, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot both keep large files in the cache and keep nothing"):
        published_via_cache.download("calib", "*", tmp_path / "out", use_cache=False, cache_large=True)
    assert not (tmp_path / "out").exists()


def test_hard_links_share_the_read_only_cache_file(published, tmp_path: Path) -> None:
    out = published.download("calib", "*", tmp_path / "out", link="hard", progress=False)
    cached = default_cache().path_of(BlobId.of_bytes(FILES["sub/b.bin"]))
    assert (out / "sub" / "b.bin").stat().st_ino == cached.stat().st_ino
    assert (out / "sub" / "b.bin").stat().st_mode & 0o222 == 0


def test_symlinks_point_into_the_cache(published, tmp_path: Path) -> None:
    out = published.download("calib", "*", tmp_path / "out", link="symlink", progress=False)
    link = out / "a.txt"
    assert link.is_symlink() and Path(os.readlink(link)) == default_cache().path_of(BlobId.of_bytes(FILES["a.txt"]))
    assert snapshot(out) == FILES


def test_reflink_works_or_fails_in_one_line(published, tmp_path: Path) -> None:
    out = tmp_path / "out"
    try:
        published.download("calib", "*", out, link="reflink", progress=False)
    except DestinationError as exc:
        assert "not supported" in str(exc) and "\n" not in str(exc)
        assert [p for p in out.rglob("*") if p.is_file()] == []
    else:
        assert snapshot(out) == FILES


def test_unknown_link_mode_is_refused(published, tmp_path: Path) -> None:
    from archive.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="unknown link mode 'magic'"):
        published.download("calib", "*", tmp_path / "out", link="magic", progress=False)


def test_pulling_again_into_a_settled_folder_does_not_rehash(published, tmp_path: Path, monkeypatch) -> None:
    import time

    import archive.destination as placed_module

    out = published.download("calib", "*", tmp_path / "out", progress=False)
    old = time.time() - 3600
    for path in out.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))
    published.download("calib", "*", out, progress=False)  # remembers the settled files
    calls = []
    monkeypatch.setattr(placed_module, "hash_file", lambda path: calls.append(path))
    published.download("calib", "*", out, progress=False)
    assert calls == []
