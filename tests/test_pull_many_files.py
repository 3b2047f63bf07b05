"""Pulling many small files: each written from memory, verified, whole or not at all, with a
bounded number of files opened per file, whether the blobs come from a local archive or the cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archive import layout
from archive.cache import REHASH_BELOW, default_cache
from archive.errors import IntegrityError
from archive.hashing import BlobId
from tests.conftest import make_tree
from tests.audit import audit_events, opens_below, opens_by_name
from tests.test_publish import snapshot

#: 300 files in 10 folders, some of one content (one blob placed at many paths), one empty.
MANY = {f"d{i % 10}/f{i:03d}.bin": os.urandom(100 + i) for i in range(290)}
MANY.update({f"same/{i}.txt": b"same content" for i in range(9)})
MANY["empty"] = b""


@pytest.fixture(params=["local disk", "network mount"])
def many(folder_archive, tmp_path: Path, request):
    """A release of many small files, on an archive downloads copy from directly (local
    disk) or through the user's cache (network mount)."""
    folder_archive.local = request.param == "local disk"
    folder_archive.publish(make_tree(tmp_path / "src", MANY), "many", "1.0.0", progress=False)
    return folder_archive


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".archive-part")]


def test_many_small_files_arrive_whole(many, tmp_path: Path) -> None:
    """A first pull and a second one (blobs hashed again, not looked up) both give every file."""
    for out in (tmp_path / "one", tmp_path / "two"):
        many.download("many", "1.0.0", out, progress=False)
        assert snapshot(out) == MANY and leftovers(out) == []
        assert all(p.stat().st_mode & 0o777 == 0o666 & ~current_umask() for p in out.rglob("*.bin"))


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_files_opened_per_small_file(many, tmp_path: Path) -> None:
    """Placing a small file opens two things: its blob, and its target's folder (to create the
    file unnamed there) or its temporary; a second pull costs the same as the first."""
    for name in ("first", "second"):
        with audit_events("open") as opens:
            many.download("many", "1.0.0", tmp_path / name, progress=False)
        opened = sum(opens_below(tmp_path, opens).values())
        assert opened <= 2 * len(MANY) + 30, (name, opened)


def test_small_blobs_are_not_remembered_in_the_stat_cache(many, tmp_path: Path) -> None:
    """Small blobs are hashed again on use, so the stat cache gets no row per small file
    (a row costs a write now and a lookup per file on every later pull)."""
    import sqlite3

    from archive.statcache import TABLE

    many.download("many", "1.0.0", tmp_path / "one", progress=False)
    many.download("many", "1.0.0", tmp_path / "two", progress=False)
    database = default_cache().root / "stat.sqlite"
    rows = sqlite3.connect(database).execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0] if database.exists() else 0
    assert rows == 0


def test_a_small_blob_of_other_content_is_refused(folder_archive, tmp_path: Path) -> None:
    """A small blob in a local archive with other bytes of the same size: the pull fails in one
    line naming the blob, and nothing is placed at that file's path."""
    folder_archive.local = True
    folder_archive.publish(make_tree(tmp_path / "src", MANY), "many", "1.0.0", progress=False)
    victim = MANY["d3/f003.bin"]
    path = folder_archive.local_path(layout.blob_key(BlobId.of_bytes(victim)))
    path.chmod(0o644)
    path.write_bytes(bytes([victim[0] ^ 1]) + victim[1:])
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match="content hashes to"):
        folder_archive.download("many", "1.0.0", out, jobs=1, progress=False)
    assert not (out / "d3" / "f003.bin").exists() and leftovers(out) == []


def test_a_small_cached_blob_of_other_content_is_fetched_again(folder_archive, tmp_path: Path) -> None:
    """The cache's copy of a small blob rotted (same size): it is hashed on use, evicted and
    fetched again; the pull gives the right bytes."""
    folder_archive.local = False
    folder_archive.publish(make_tree(tmp_path / "src", MANY), "many", "1.0.0", progress=False)
    folder_archive.download("many", "1.0.0", tmp_path / "first", progress=False)
    cached = default_cache().path_of(BlobId.of_bytes(MANY["same/0.txt"]))
    cached.chmod(0o644)
    cached.write_bytes(b"SAME content")
    assert len(MANY["same/0.txt"]) <= REHASH_BELOW
    out = folder_archive.download("many", "1.0.0", tmp_path / "second", progress=False)
    assert snapshot(out) == MANY
    assert cached.read_bytes() == MANY["same/0.txt"]


def test_without_unnamed_files_named_temporaries_still_work(many, tmp_path: Path, monkeypatch) -> None:
    """Where files cannot be written unnamed (no O_TMPFILE), every file goes through a named
    temporary and a rename, and none is left behind."""
    import archive.materialize as materialize

    monkeypatch.setattr(materialize, "_open_unnamed", lambda folder, mode: None)
    out = many.download("many", "1.0.0", tmp_path / "out", progress=False)
    assert snapshot(out) == MANY and leftovers(out) == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir() or not hasattr(os, "O_TMPFILE"), reason="Linux only")
@pytest.mark.parametrize("existing", [False, True], ids=["new folder", "existing folder"])
def test_killed_pull_of_many_files_leaves_only_whole_files_and_no_temporary(folder_archive, tmp_path: Path,
                                                                            existing: bool) -> None:
    """SIGKILL a pull of 3,000 small files midway. Into an existing folder: every file under a
    release path is whole, and (files are written unnamed) nothing else is there. A new folder is
    built aside (archive.staging): nothing is at its name, only the hidden folder. The next pull
    completes, and leaves nothing else beside the folder."""
    files = {f"{i // 100:02d}/{i:04d}.bin": os.urandom(2048) for i in range(3000)}
    folder_archive.publish(make_tree(tmp_path / "src", files), "lots", "1.0.0", progress=False)
    out = tmp_path / "pulls" / "out"
    out.mkdir(parents=True) if existing else out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "archive", "-q", "-a", folder_archive.location, "pull", "lots",
                             "--to", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None and sum(1 for _ in out.parent.rglob("*.bin")) <= 100:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the pull finished before the kill"
    if existing:
        placed = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert 0 < len(placed) < len(files)
        assert all(files[path] == content for path, content in placed.items())
    else:
        assert not out.exists()
        [staged] = out.parent.iterdir()
        assert staged.name.startswith(".out.") and 100 < sum(1 for _ in staged.rglob("*.bin")) < len(files)
    out2 = folder_archive.download("lots", "1.0.0", out, progress=False)
    assert snapshot(out2) == files and leftovers(out2) == []
    assert [p.name for p in out.parent.iterdir()] == ["out"]


def test_a_blob_many_files_share_is_fetched_once(folder_archive, tmp_path: Path) -> None:
    """Through the cache, with eight jobs: the blob of many files is fetched once, and (a small
    blob, read in a group) its files are written from that verified read, never read back."""
    folder_archive.local = False
    folder_archive.publish(make_tree(tmp_path / "src", MANY), "many", "1.0.0", progress=False)
    with audit_events("open") as opens:
        out = folder_archive.download("many", "1.0.0", tmp_path / "out", jobs=8, progress=False)
    opened = opens_by_name(opens)
    assert snapshot(out) == MANY
    shared = BlobId.of_bytes(MANY["same/0.txt"]).hexdigest
    copies = sum(1 for content in MANY.values() if content == MANY["same/0.txt"])
    assert copies > 1 and opened[shared] == 1  # fetched once, placed from memory



def _set_default_acl(folder: Path, others: int) -> None:
    """Give ``folder`` a POSIX default ACL (owner, group and mask rwx; others ``others``), in the
    kernel's binary form: no ``setfacl`` needed. Files created in it then ignore the umask."""
    import errno
    import struct

    entries = [(0x01, 7), (0x04, 7), (0x10, 7), (0x20, others)]  # USER_OBJ, GROUP_OBJ, MASK, OTHER
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in entries)
    try:
        os.setxattr(folder, "system.posix_acl_default", value)
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        pytest.skip(f"no POSIX ACLs on the filesystem of {folder}")


@pytest.mark.parametrize("where", ["destination", "a folder in it"])
def test_a_default_acl_does_not_change_the_mode_of_small_files(many, tmp_path: Path, where: str) -> None:
    """A small file is written without a ``chmod`` where its creation gives it its mode; a
    default ACL replaces the umask at creation, so there the ``chmod`` still comes, and every
    file gets ``0o666 & ~umask`` exactly, as it does elsewhere."""
    out = tmp_path / "out"
    acl_folder = out if where == "destination" else out / "d3"
    acl_folder.mkdir(parents=True)
    wanted = 0o666 & ~current_umask()
    _set_default_acl(acl_folder, others=7 if current_umask() & 0o002 else 5)  # others' bits unlike the umask's
    many.download("many", "1.0.0", out, progress=False)
    assert snapshot(out) == MANY
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in acl_folder.rglob("*") if p.is_file()}
    assert len(modes) >= 29 and {path: oct(mode) for path, mode in modes.items() if mode != wanted} == {}


def test_no_chmod_per_small_file_where_the_umask_decides(many, tmp_path: Path) -> None:
    """Without a default ACL, the file's creation mode is its mode: no ``chmod`` per file (an
    audit hook sees every ``os.chmod``/``os.fchmod``), once the cache holds the blobs (filling
    it makes each cache file read-only)."""
    import errno

    try:
        os.getxattr(tmp_path, "system.posix_acl_default")
    except (AttributeError, OSError) as exc:
        if not isinstance(exc, OSError) or exc.errno != errno.ENODATA:
            pytest.skip(f"the filesystem of {tmp_path} cannot say whether a folder has a default ACL")
    many.download("many", "1.0.0", tmp_path / "first", progress=False)
    with audit_events("os.chmod") as calls:
        out = many.download("many", "1.0.0", tmp_path / "out", progress=False)
    assert snapshot(out) == MANY
    assert len(calls) < 10, calls  # the marker and other once-per-pull files: not one per file (300)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~current_umask() for p in out.rglob("*.bin"))
