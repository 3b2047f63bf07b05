"""Publishing: dedup, immutability, and every bad input refused with the archive untouched."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import archive
from archive import layout
from archive.errors import (InvalidInputError, InvalidNameError, InvalidPathError, InvalidVersionError,
                            ReleaseExistsError)
from tests.audit import audit_events, opens_below
from tests.conftest import count_blob_files, make_tree

MIB = 1024 * 1024


def files_opened_below(root: Path, opens: list[tuple]) -> dict[str, int]:
    """:func:`opens_below` of the files only: the scan opens each folder once, to stat its
    files by name from it, which reads none of them."""
    return {path: count for path, count in opens_below(root, opens).items() if not (root / path).is_dir()}


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of a folder with its content, to prove that nothing changed (without the
    marker ``.archive/`` a pull writes; see archive.placed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != ".archive"}


def test_dedup_within_and_across_releases(folder_archive, sample_folder: Path, tmp_path: Path) -> None:
    store = Path(folder_archive.location)
    first = folder_archive.publish(sample_folder, "calib", "1.0.0", progress=False)
    # 5 files, 2 with the same content: 4 distinct blobs, plus 1 record blob.
    assert len(first.files) == 5
    assert count_blob_files(store) == 4 + 1

    (sample_folder / "data" / "new.txt").write_bytes(b"one new file")
    second = folder_archive.publish(sample_folder, "calib", "1.1.0", progress=False)
    assert len(second.files) == 6
    assert count_blob_files(store) == 4 + 1 + 1 + 1  # one new content blob, one new record


def test_same_content_again_is_a_no_op(folder_archive, sample_folder: Path) -> None:
    first = folder_archive.publish(sample_folder, "calib", "1.0.0", {"message": "m"}, progress=False)
    before = snapshot(Path(folder_archive.location))
    again = folder_archive.publish(sample_folder, "calib", "1.0.0", {"message": "m"}, progress=False)
    assert again.record_id == first.record_id
    assert snapshot(Path(folder_archive.location)) == before


@pytest.mark.parametrize("change", ["content", "metadata", "extra file"])
def test_existing_release_is_never_overwritten(folder_archive, sample_folder: Path, change: str) -> None:
    folder_archive.publish(sample_folder, "calib", "1.0.0", {"message": "m"}, progress=False)
    before = snapshot(Path(folder_archive.location))
    metadata = {"message": "m"}
    if change == "content":
        (sample_folder / "readme.txt").write_bytes(b"changed")
    elif change == "metadata":
        metadata = {"message": "other"}
    else:
        (sample_folder / "more.txt").write_bytes(b"more")
    with pytest.raises(ReleaseExistsError, match="calib 1.0.0 exists already with other content"):
        folder_archive.publish(sample_folder, "calib", "1.0.0", metadata, progress=False)
    assert snapshot(Path(folder_archive.location)) == before


@pytest.mark.parametrize("name, version, error", [
    ("Calib", "1.0.0", InvalidNameError), ("../x", "1.0.0", InvalidNameError),
    ("calib", "1.0", InvalidVersionError), ("calib", "latest", InvalidVersionError),
    ("calib", "1.0.0+b1", InvalidVersionError),
])
def test_bad_name_or_version_writes_nothing(folder_archive, sample_folder, name, version, error) -> None:
    before = snapshot(Path(folder_archive.location))
    with pytest.raises(error):
        folder_archive.publish(sample_folder, name, version, progress=False)
    assert snapshot(Path(folder_archive.location)) == before


def test_bad_folders_write_nothing(folder_archive, tmp_path: Path) -> None:
    before = snapshot(Path(folder_archive.location))
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for folder, match in [(tmp_path / "missing", "does not exist"), (tmp_path / "empty", "no files"),
                          (tmp_path / "file.txt", "is not a folder")]:
        with pytest.raises(InvalidInputError, match=match):
            folder_archive.publish(folder, "calib", "1.0.0", progress=False)
    assert snapshot(Path(folder_archive.location)) == before


def test_unreadable_file_writes_nothing(shared_tmp: Path) -> None:
    """A file the publisher may not read stops the publish before anything is uploaded.

    Root reads everything, so when the suite runs as root the publish runs in a forked child
    that has dropped to an unprivileged user (see ``run_unprivileged``).
    """
    from tests.conftest import run_unprivileged

    base = shared_tmp
    src = make_tree(base / "src", {"ok.txt": b"fine", "secret.bin": b"s"})
    (src / "secret.bin").chmod(0)
    store = base / "store"

    def attempt() -> str:
        arc = archive.get_interface(store, create=True)
        try:
            arc.publish(src, "calib", "1.0.0", progress=False)
        except InvalidInputError as exc:
            return f"{str(exc)} | names={arc.names()} | blobs={sorted(p.name for p in (store / 'blobs').rglob('*') if p.is_file())}"
        return "published"

    assert run_unprivileged(attempt) == "cannot read 'secret.bin': Permission denied | names=[] | blobs=[]"


def test_symlink_inside_is_stored_as_its_target(folder_archive, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"real/data.csv": b"1,2,3"})
    (src / "alias.csv").symlink_to("real/data.csv")
    (src / "linked-dir").symlink_to("real", target_is_directory=True)
    release = folder_archive.publish(src, "calib", "1.0.0", progress=False)
    assert set(release.files) == {"real/data.csv", "alias.csv", "linked-dir/data.csv"}
    assert len({e.blob for e in release.files.values()}) == 1


@pytest.mark.parametrize("make_link", [
    lambda src, outside: (src / "leak").symlink_to(outside / "secret.txt"),
    lambda src, outside: (src / "leakdir").symlink_to(outside, target_is_directory=True),
])
def test_symlink_outside_is_refused(folder_archive, tmp_path: Path, make_link) -> None:
    outside = make_tree(tmp_path / "outside", {"secret.txt": b"private"})
    src = make_tree(tmp_path / "src", {"ok.txt": b"ok"})
    make_link(src, outside)
    with pytest.raises(InvalidInputError, match="outside the published folder"):
        folder_archive.publish(src, "calib", "1.0.0", progress=False)
    assert folder_archive.names() == []


def test_symlink_loop_and_broken_link_are_refused(folder_archive, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"sub/f": b"x"})
    (src / "sub" / "loop").symlink_to("..", target_is_directory=True)
    with pytest.raises(InvalidInputError, match="loops back"):
        folder_archive.publish(src, "calib", "1.0.0", progress=False)
    (src / "sub" / "loop").unlink()
    (src / "dangling").symlink_to("nowhere")
    with pytest.raises(InvalidInputError, match="broken link"):
        folder_archive.publish(src, "calib", "1.0.0", progress=False)


def test_special_files_are_refused(folder_archive, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"f": b"x"})
    os.mkfifo(src / "pipe")
    with pytest.raises(InvalidInputError, match="not a regular file"):
        folder_archive.publish(src, "calib", "1.0.0", progress=False)


def test_names_that_clash_on_other_systems_are_refused(folder_archive, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"Data.txt": b"1", "data.txt": b"2"})
    with pytest.raises(InvalidPathError, match="case-insensitive"):
        folder_archive.publish(src, "calib", "1.0.0", progress=False)
    nfd = make_tree(tmp_path / "nfd", {"caf\u00e9": b"1", "cafe\u0301": b"2"})
    with pytest.raises(InvalidPathError, match="clash"):
        folder_archive.publish(nfd, "calib", "1.0.0", progress=False)


def test_nfd_file_names_are_recorded_in_nfc(folder_archive, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"cafe\u0301.txt": b"1"})
    release = folder_archive.publish(src, "calib", "1.0.0", progress=False)
    assert list(release.files) == ["caf\u00e9.txt"]


def _settle(folder: Path) -> None:
    """Date every file an hour back, so the stat cache may remember it (see archive.statcache)."""
    old = time.time() - 3600
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))


def _change_before_second_read(monkeypatch, target: Path, keep_mtime: bool) -> None:
    """Rewrite ``target`` (same size) just before publish reads a hashed file a second time."""
    import archive.publish as pub

    real_upload = pub._upload

    def change_then_upload(arc, blob, src, *args, **kwargs):
        if Path(src.location) != target:
            return real_upload(arc, blob, src, *args, **kwargs)
        data = bytearray(target.read_bytes())
        data[100] ^= 0xFF
        info = target.stat()
        target.write_bytes(bytes(data))
        if keep_mtime:  # only ctime can tell
            os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
        return real_upload(arc, blob, src, *args, **kwargs)

    monkeypatch.setattr(pub, "_upload", change_then_upload)


def test_file_changed_between_hash_and_upload_fails_cleanly(folder_archive, tmp_path: Path, monkeypatch) -> None:
    """A large file whose size the latest release has is hashed first and read again only to
    upload it; a change in between is caught by the upload's own hash check."""
    src = make_tree(tmp_path / "src", {"big.bin": os.urandom(5 * MIB), "a.txt": b"a"})
    folder_archive.publish(src, "calib", "1.0.0", progress=False)
    (src / "big.bin").write_bytes(os.urandom(5 * MIB))  # same size, new content, not settled
    _change_before_second_read(monkeypatch, src / "big.bin", keep_mtime=False)
    before = count_blob_files(Path(folder_archive.location))
    with pytest.raises(InvalidInputError, match="big.bin' changed while being published"):
        folder_archive.publish(src, "calib", "1.1.0", progress=False)
    assert folder_archive.versions("calib") == ["1.0.0"]
    assert count_blob_files(Path(folder_archive.location)) == before
    assert folder_archive.list_keys("tmp") == []


def test_settled_file_changed_between_hash_and_upload_fails_cleanly(folder_archive, sample_folder: Path,
                                                                     tmp_path: Path, monkeypatch) -> None:
    """A settled file is not hashed twice; a change between hashing and upload still shows in
    its identity (size, mtime, ctime), and the publish fails before the blob is placed."""
    from archive.backends.filesystem import FileSystemArchive

    _settle(sample_folder)
    FileSystemArchive(tmp_path / "other").publish(sample_folder, "calib", "1.0.0", progress=False)
    _change_before_second_read(monkeypatch, sample_folder / "data" / "raw" / "run1.bin", keep_mtime=True)
    with pytest.raises(InvalidInputError, match="run1.bin' changed while being published"):
        folder_archive.publish(sample_folder, "calib", "1.0.0", progress=False)
    assert folder_archive.names() == []
    assert "run1.bin" not in str(sorted(folder_archive.list_keys("tmp")))
    assert folder_archive.list_keys("tmp") == []


@pytest.mark.parametrize("size", [1000, 6 * MIB], ids=["small", "large"])
def test_file_changed_while_read_once_fails_cleanly(folder_archive, tmp_path: Path, monkeypatch, size: int) -> None:
    """A new file is hashed and stored from one read; a write during it fails the publish and
    leaves no blob, no temporary file and no release."""
    import archive.publish as pub

    src = make_tree(tmp_path / "src", {"f.bin": os.urandom(size)})
    real_read = pub._check_unchanged

    def written_during_read(source, stream, size_read):
        with open(src / "f.bin", "r+b") as out:
            out.write(b"X")
        return real_read(source, stream, size_read)

    monkeypatch.setattr(pub, "_check_unchanged", written_during_read)
    with pytest.raises(InvalidInputError, match="f.bin' changed while being published"):
        folder_archive.publish(src, "calib", "1.0.0", progress=False)
    assert folder_archive.names() == []
    assert count_blob_files(Path(folder_archive.location)) == 0
    assert folder_archive.list_keys("tmp") == []


def test_each_new_file_is_read_once(folder_archive, tmp_path: Path) -> None:
    """Hash and upload come from the same read, for small files and large ones."""
    files = {"small.bin": os.urandom(1000), "medium.bin": os.urandom(4 * MIB), "large.bin": os.urandom(9 * MIB)}
    src = make_tree(tmp_path / "src", files)
    with audit_events("open") as opens:
        release = folder_archive.publish(src, "calib", "1.0.0", progress=False)
    assert files_opened_below(src, opens) == {name: 1 for name in files}
    for name, data in files.items():
        stored = Path(folder_archive.location) / layout.blob_key(release.files[name].blob)
        assert stored.read_bytes() == data


def test_unchanged_files_from_a_new_machine_are_not_uploaded_again(folder_archive, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Without a stat cache, a file the latest release has (same size) is hashed first and
    found stored: nothing is uploaded for it; a new large file is uploaded as it is hashed, a
    new small one from memory."""
    src = make_tree(tmp_path / "src", {"big.bin": os.urandom(6 * MIB), "small.txt": b"s" * 100})
    folder_archive.publish(src, "calib", "1.0.0", progress=False)
    monkeypatch.setenv("ARCHIVE_CACHE_DIR", str(tmp_path / "new-machine-cache"))
    (src / "other.bin").write_bytes(os.urandom(7 * MIB))
    (src / "new.txt").write_bytes(b"n" * 50)
    written: list[str] = []
    real_write = folder_archive.write_key

    def counting_write(key, chunks, **kwargs):
        real_write(key, chunks, **kwargs)
        written.append(key if isinstance(key, str) else "deferred:" + key())

    monkeypatch.setattr(folder_archive, "write_key", counting_write)
    with audit_events("open") as opens:
        release = folder_archive.publish(src, "calib", "1.1.0", progress=False)
    blob_writes = [k for k in written if "blobs/" in k]
    assert sorted(blob_writes[:-1]) == sorted([f"deferred:{layout.blob_key(release.files['other.bin'].blob)}",
                                               layout.blob_key(release.files["new.txt"].blob)])
    assert blob_writes[-1] == layout.blob_key(release.record_id)
    assert files_opened_below(src, opens) == {"big.bin": 1, "other.bin": 1, "small.txt": 1, "new.txt": 1}


def test_index_files_list_every_version(folder_archive, sample_folder: Path) -> None:
    from archive.index import _read_index

    for version in ("1.0.0", "1.1.0", "2.0.0-rc.1"):
        folder_archive.publish(sample_folder, "calib", version, progress=False)
    index = _read_index(folder_archive, "releases/calib/index.json")
    assert list(index["versions"]) == ["1.0.0", "1.1.0", "2.0.0-rc.1"]
    assert index["versions"]["1.1.0"] == str(folder_archive.release_id("calib", "1.1.0"))
    assert _read_index(folder_archive, "index.json")["names"] == ["calib"]


def test_settled_file_changed_during_upload_fails_cleanly(folder_archive, sample_folder: Path, monkeypatch) -> None:
    """A settled file is not hashed twice; a change between hashing and upload still shows in
    its identity (size, mtime, ctime), and the publish fails before the blob is placed."""
    import time

    import archive.publish as pub

    old = time.time() - 3600
    for path in sample_folder.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))
    real_upload = pub.upload_missing_blobs
    target = sample_folder / "data" / "raw" / "run1.bin"

    def change_then_upload(arc, sources, entries, *args, **kwargs):
        data = bytearray(target.read_bytes())
        data[100] ^= 0xFF  # same size; mtime put back: only ctime can tell
        info = target.stat()
        target.write_bytes(bytes(data))
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
        return real_upload(arc, sources, entries, *args, **kwargs)

    monkeypatch.setattr(pub, "upload_missing_blobs", change_then_upload)
    with pytest.raises(InvalidInputError, match="run1.bin' changed while being published"):
        folder_archive.publish(sample_folder, "calib", "1.0.0", progress=False)
    assert folder_archive.names() == []
    assert folder_archive.list_keys("tmp") == []


def nested(depth: int) -> dict:
    """A dict nested ``depth`` deep, built without recursion."""
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_metadata_nested_100000_deep_is_refused_before_any_upload(folder_archive, sample_folder: Path) -> None:
    before = snapshot(Path(folder_archive.location))
    with pytest.raises(InvalidInputError, match="metadata is nested more than 16 deep"):
        folder_archive.publish(sample_folder, "calib", "1.0.0", {"deep": nested(100_000)}, progress=False)
    assert snapshot(Path(folder_archive.location)) == before


def plant_release(arc, name: str, version: str, record: bytes) -> None:
    """Store ``record`` as release ``name`` ``version``, as a tampered archive could hold it."""
    from archive.hashing import BlobId

    record_id = BlobId.of_bytes(record)
    arc.write_key(layout.blob_key(record_id), [record])
    arc.write_key(layout.release_key(name, version), [f"{record_id}\n".encode()], exclusive=True)


@pytest.mark.parametrize("depth", [600, 100_000])
def test_a_stored_record_nested_deep_is_refused_in_one_line(folder_archive, sample_folder: Path,
                                                           depth: int) -> None:
    from archive.errors import IntegrityError
    from tests.test_cli import run

    good = folder_archive.publish(sample_folder, "calib", "1.0.0", {"m": "x"}, progress=False).to_bytes()
    hostile = good.replace(b'"metadata":{', b'"metadata":{"deep":' + b'{"a":' * depth + b"{}" + b"}" * depth + b",", 1)
    plant_release(folder_archive, "calib", "2.0.0", hostile)
    with pytest.raises(IntegrityError, match="nested more than 16 deep|not valid JSON"):
        folder_archive.get_release("calib", "2.0.0")
    for args in (["show", "calib"], ["show", "calib", "--json"], ["pull", "calib", "2.0.0"]):
        result = run("-a", folder_archive.location, *args)
        assert result.returncode == 1 and result.stderr.startswith("archive: error: "), result.stderr[-3000:]
        assert result.stderr.count("\n") == 1
    verify = run("-a", folder_archive.location, "verify")
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    assert "archive: error: calib 2.0.0: " in verify.stderr and "nested more than" in verify.stderr


@pytest.mark.parametrize("index", [b'{"format":1,"versions":5}', b'{"format":1,"versions":{"1.0.0":[[[]]]}}',
                                   b'{"format":2}', b"[" * 5000],
                         ids=["versions-not-object", "id-not-string", "other-format", "nested-5000"])
def test_a_corrupt_index_is_reported_and_rebuilt_not_a_crash(folder_archive, sample_folder: Path,
                                                              index: bytes) -> None:
    """The index is derived: a corrupt one is a verify warning, --repair rebuilds it, and a
    publish rewrites it instead of failing after its release was committed."""
    from archive.index import versions_in_index
    from tests.test_cli import run

    folder_archive.publish(sample_folder, "calib", "1.0.0", progress=False)
    index_file = Path(folder_archive.location) / layout.versions_index_key("calib")
    index_file.write_bytes(index)
    verify = run("-a", folder_archive.location, "verify")
    assert "Traceback" not in verify.stderr and "archive: warning: calib: releases/calib/index.json: " in verify.stderr
    repair = run("-a", folder_archive.location, "verify", "--repair")
    assert repair.returncode == 0 and "repaired" in repair.stderr, repair.stderr
    assert versions_in_index(folder_archive, "calib") == ["1.0.0"]
    index_file.write_bytes(index)
    push = run("-a", folder_archive.location, "push", str(sample_folder), "calib", "1.1.0")
    assert push.returncode == 0, push.stderr
    assert versions_in_index(folder_archive, "calib") == ["1.0.0", "1.1.0"]


@pytest.mark.parametrize("files", [5, 800])
def test_a_blob_gone_from_the_archive_is_uploaded_again(folder_archive, tmp_path: Path, files: int) -> None:
    """Files the stat cache knows are checked against the archive (by a stat each when they
    are few, by one listing per blob folder when they are many): blobs removed behind the
    archive's back are written again, the rest are not, and the new release is whole.

    One file is touched first: a folder with no change at all reuses the earlier record and
    trusts its release's blobs (archive.reuse; tests/test_reuse.py)."""
    from archive.publish import PublishStats

    src = make_tree(tmp_path / "src", {f"d/f{i:04d}": b"%d" % i for i in range(files)})
    old = time.time() - 3600
    for path in (src / "d").iterdir():
        os.utime(path, (old, old))
    first = folder_archive.publish(src, "calib", "1.0.0", progress=False)
    store = Path(folder_archive.location)
    gone = [first.files[f"d/f{i:04d}"].blob for i in (0, files // 2, files - 1)]
    for blob in gone:
        (store / layout.blob_key(blob)).unlink()
    os.utime(src / "d/f0001", (old, old))  # its ctime changes: a publish that is not a reuse
    stats = PublishStats()
    again = folder_archive.publish(src, "calib", "1.0.1", progress=False, stats=stats)
    assert (stats.uploaded_files, again.files == first.files) == (3, True)
    assert all((store / layout.blob_key(blob)).read_bytes() == b"%d" % i
               for blob, i in zip(gone, (0, files // 2, files - 1)))
    assert folder_archive.verify("calib", full=True).ok


def test_the_size_hint_is_read_from_the_record_text_and_a_damaged_record_gives_none(folder_archive,
                                                                                   tmp_path: Path) -> None:
    """The sizes of the latest release (which files to hash before uploading) come from its
    verified bytes, without building its entries; a record that does not verify is no hint."""
    from archive.reuse import EarlierRelease

    src = make_tree(tmp_path / "src", {"a": b"abc", "b/c": b"hello", "e": b""})
    first = folder_archive.publish(src, "calib", "1.0.0", {"size": 77}, progress=False)
    assert EarlierRelease(folder_archive, "calib").sizes() >= {0, 3, 5}
    assert EarlierRelease(folder_archive, "other").sizes() == frozenset()
    record = Path(folder_archive.location) / layout.blob_key(first.record_id)
    os.chmod(record, 0o644)
    record.write_bytes(record.read_bytes().replace(b'"size":5', b'"size":6'))
    assert EarlierRelease(folder_archive, "calib").sizes() == frozenset()
