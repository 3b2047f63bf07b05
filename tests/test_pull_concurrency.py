"""Pulls that run at the same time, and pulls killed midway: real processes, held or killed at a
chosen moment (SIGSTOP while a temporary file is being written, SIGKILL), never a lucky race."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import make_tree, staged_beside
from tests.test_publish import snapshot

BIG = {f"f{i}.bin": os.urandom(24 << 20) for i in range(6)}
#: A pull from a folder archive seen as a network mount, keeping even large blobs in the cache, in a child process.
CACHED_PULL = r"""
import sys
from pathlib import Path
from archive.backends.filesystem import FileSystemArchive
arc = FileSystemArchive(sys.argv[1], local=False)
arc.download(sys.argv[2], "*", Path(sys.argv[3]), jobs=1, progress=False, cache_large=True)
"""


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def big_release(folder_archive, tmp_path: Path):
    folder_archive.publish(make_tree(tmp_path / "big-src", BIG), "big", "1.0.0", progress=False)
    return folder_archive


def parts_in(folder: Path, suffix: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(suffix)] if folder.exists() else []


def locked_inodes() -> set[int]:
    """Inodes with an flock on them now (from /proc/locks)."""
    return {int(line.split()[5].rsplit(":", 1)[1]) for line in Path("/proc/locks").read_text().splitlines()
            if line.split()[1] == "FLOCK"}


def hold_while_writing(proc: subprocess.Popen, folder: Path, suffix: str, locked: bool = False) -> list[Path]:
    """Stop ``proc`` (SIGSTOP) at a moment it has a temporary file open in ``folder`` (and, with
    ``locked``, holds its lock: past the instant between creating and locking it); return them."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the process ended before it could be held mid-file"
        if parts_in(folder, suffix):
            proc.send_signal(signal.SIGSTOP)
            wait_until_stopped(proc.pid)
            held = parts_in(folder, suffix)
            if locked:
                inodes = locked_inodes()
                held = [p for p in held if p.exists() and p.stat().st_ino in inodes]
            if held:
                return held
            proc.send_signal(signal.SIGCONT)  # it finished that file just then: catch the next one
        time.sleep(0.0005)
    raise AssertionError("no temporary file appeared")


def wait_until_stopped(pid: int) -> None:
    """Return once every thread of ``pid`` has stopped: SIGSTOP is delivered asynchronously."""
    tasks = Path(f"/proc/{pid}/task")
    while not all((task / "stat").read_text().rpartition(")")[2].split()[0] in "tT" for task in tasks.iterdir()):
        time.sleep(0.0002)


def unnamed_files(pid: int, folder: Path) -> list[str]:
    """The files without a name (Linux ``O_TMPFILE``) that ``pid`` has open in ``folder``."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith(f"{folder}/#") and link.endswith(" (deleted)"):
            found.append(link)
    return found


def hold_while_writing_unnamed(proc: subprocess.Popen, folder: Path) -> None:
    """Stop ``proc`` at a moment it is writing a file not yet named in ``folder``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the process ended before it could be held mid-file"
        if folder.exists() and unnamed_files(proc.pid, folder):
            proc.send_signal(signal.SIGSTOP)
            wait_until_stopped(proc.pid)
            if unnamed_files(proc.pid, folder):
                return
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.0005)
    raise AssertionError("no file was written unnamed")


#: ``archive`` as a user runs it, but writing through named temporaries (as on a filesystem
#: without O_TMPFILE, or off Linux): the path those filesystems take, on this one.
NAMED_TEMPORARIES = r"""
import sys
import archive.materialize
from archive.cli import main
archive.materialize._open_unnamed = lambda folder, mode: None
sys.argv[0] = "archive"
main()
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir() or not hasattr(os, "O_TMPFILE"), reason="Linux only")
def test_two_pulls_into_one_folder_both_succeed_unnamed(big_release, tmp_path: Path) -> None:
    """A pull held while it writes a file still without a name, while a second pull into the
    same folder runs from start to end and places every file: the first then finds its targets
    taken, replaces them (same content), and both succeed with nothing left behind. The folder
    exists before: a new one is built aside (see the test after the next)."""
    out = tmp_path / "out"
    out.mkdir()
    first = subprocess.Popen([sys.executable, "-m", "archive", "-q", "-a", big_release.location, "-j", "1",
                              "pull", "big", "--to", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        hold_while_writing_unnamed(first, out)
        second = run("-a", big_release.location, "pull", "big", "--to", str(out))
        assert second.returncode == 0, second.stderr
        assert snapshot(out) == BIG
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert snapshot(out) == BIG and parts_in(out, ".archive-part") == []


def test_two_pulls_into_one_folder_both_succeed(big_release, tmp_path: Path) -> None:
    """A pull held in the middle of a file while a second pull into the same folder runs from
    start to end: the second must leave the first's temporary alone, and both succeed."""
    out = tmp_path / "out"
    out.mkdir()
    first = subprocess.Popen([sys.executable, "-c", NAMED_TEMPORARIES, "-q", "-a", big_release.location, "-j", "1",
                              "pull", "big", "--to", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        held = hold_while_writing(first, out, ".archive-part", locked=True)
        second = run("-a", big_release.location, "pull", "big", "--to", str(out))
        assert second.returncode == 0, second.stderr
        assert all(p.exists() for p in held), "the second pull removed a live temporary of the first"
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert snapshot(out) == BIG and parts_in(out, ".archive-part") == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir() or not hasattr(os, "O_TMPFILE"), reason="Linux only")
def test_two_pulls_into_one_new_folder_both_succeed(big_release, tmp_path: Path) -> None:
    """Two pulls into a folder that does not exist yet, each building it aside: the first is held
    mid-file while the second runs from start to end and gives the folder its name. The first
    then finds the name taken, fills the folder as it is (same content), and removes its own
    hidden folder: both succeed, and nothing but the folder is left."""
    out = tmp_path / "pulls" / "out"
    first = subprocess.Popen([sys.executable, "-m", "archive", "-q", "-a", big_release.location, "-j", "1",
                              "pull", "big", "--to", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out.parent.exists() and staged_beside(out)) and time.monotonic() < deadline:
            time.sleep(0.0005)
        [building] = staged_beside(out)
        hold_while_writing_unnamed(first, building)
        second = run("-a", big_release.location, "pull", "big", "--to", str(out))
        assert second.returncode == 0, second.stderr
        assert snapshot(out) == BIG and staged_beside(out) == [building]
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert snapshot(out) == BIG and staged_beside(out) == [] and parts_in(out, ".archive-part") == []


def test_killed_pull_leaves_nothing_in_the_cache_for_long(big_release, tmp_path: Path) -> None:
    """SIGKILL a pull while it fetches a blob into the cache: its partial blob stays in the
    cache's tmp/ only until the next pull, which removes it and completes."""
    cache_tmp = Path(os.environ["ARCHIVE_CACHE_DIR"]) / "tmp"
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", CACHED_PULL, big_release.location, "big", str(out)])
    hold_while_writing(proc, cache_tmp, ".part")
    proc.kill()
    proc.wait(timeout=30)
    assert parts_in(cache_tmp, ".part"), "the kill left no partial blob: nothing tested"
    child = subprocess.run([sys.executable, "-c", CACHED_PULL, big_release.location, "big", str(out)], timeout=300)
    assert child.returncode == 0
    assert parts_in(cache_tmp, ".part") == [] and snapshot(out) == BIG


def test_verify_cache_removes_stale_partial_blobs_but_not_live_ones(big_release, tmp_path: Path) -> None:
    """verify --cache while a pull is held mid-blob leaves its partial blob alone (the pull then
    completes); once a pull was killed mid-blob, verify --cache removes what it left."""
    cache_tmp = Path(os.environ["ARCHIVE_CACHE_DIR"]) / "tmp"
    live = subprocess.Popen([sys.executable, "-c", CACHED_PULL, big_release.location, "big", str(tmp_path / "b")])
    try:
        held = hold_while_writing(live, cache_tmp, ".part")
        busy = run("verify", "--cache")
        assert busy.returncode == 0, busy.stderr
        assert all(p.exists() for p in held), "verify --cache removed a live partial blob"
    finally:
        live.send_signal(signal.SIGCONT)
    assert live.wait(timeout=300) == 0 and snapshot(tmp_path / "b") == BIG
    for blob in (Path(os.environ["ARCHIVE_CACHE_DIR"]) / "blobs").rglob("*"):
        if blob.is_file():
            blob.unlink()  # so that the next pull fetches again
    killed = subprocess.Popen([sys.executable, "-c", CACHED_PULL, big_release.location, "big", str(tmp_path / "a")])
    hold_while_writing(killed, cache_tmp, ".part")
    killed.kill()
    killed.wait(timeout=30)
    assert parts_in(cache_tmp, ".part")
    alone = run("verify", "--cache")
    assert alone.returncode == 0 and "removed 1 temporary file(s) left by interrupted downloads" in alone.stderr
    assert parts_in(cache_tmp, ".part") == []


def forget_cached_blobs() -> None:
    """Empty the cache's blobs, so that the next pull fetches (and can be held while it does)."""
    for blob in (Path(os.environ["ARCHIVE_CACHE_DIR"]) / "blobs").rglob("*"):
        if blob.is_file():
            blob.unlink()


def test_killed_snapshot_build_is_cleaned_and_racing_builds_agree(big_release, tmp_path: Path) -> None:
    """A snapshot build (pull without --to) killed midway leaves a half-built folder that the
    next pull removes; two builds of the same snapshot at once, one held midway, both give
    the same whole folder."""
    cache = Path(os.environ["ARCHIVE_CACHE_DIR"])
    pull = [sys.executable, "-m", "archive", "-q", "-a", big_release.location, "-j", "1", "pull", "big"]
    killed = subprocess.Popen(pull, stdout=subprocess.PIPE)
    hold_while_writing(killed, cache / "tmp", ".part")
    killed.kill()
    killed.wait(timeout=30)
    half_built = stray_folders(cache / "snapshots", None)
    assert half_built, "nothing was half-built"
    forget_cached_blobs()
    held = subprocess.Popen(pull, stdout=subprocess.PIPE, text=True)
    try:
        hold_while_writing(held, cache / "tmp", ".part")
        other = subprocess.run(pull, capture_output=True, text=True, timeout=300)
        assert other.returncode == 0, other.stderr
    finally:
        held.send_signal(signal.SIGCONT)
    out, _ = held.communicate(timeout=300)
    assert held.returncode == 0 and out.strip() == other.stdout.strip()
    assert snapshot(Path(out.strip())) == BIG
    assert stray_folders(cache / "snapshots", Path(out.strip())) == []


def stray_folders(snapshots: Path, final: Path | None) -> list[Path]:
    """Folders under ``snapshots`` that are neither the snapshot ``final`` (with its parents
    and its own folders) nor the empty folder builds happen in."""
    return [p for p in snapshots.rglob("*") if p.is_dir() and not (
        final is not None and (p == final or final in p.parents or p in final.parents)
        or p.name == ".building" and not any(p.iterdir()))]


def test_a_cleaner_between_create_and_lock_costs_nothing(tmp_path: Path, monkeypatch) -> None:
    """A cleaner that runs in the instant between a writer's create and its lock removes the
    (then unlocked) temporary; the writer finds its file unlinked once locked and starts again."""
    import archive.materialize as materialize
    from archive.inflight import claim, remove_if_stale

    cleaned = []

    def clean_first(fd: int) -> bool:
        if not cleaned:
            cleaned.extend(p for p in tmp_path.iterdir() if remove_if_stale(p))
        return claim(fd)

    monkeypatch.setattr(materialize, "claim", clean_first)
    monkeypatch.setattr(materialize, "_open_unnamed", lambda folder, mode: None)  # the named path
    materialize.write_file_atomically(tmp_path / "f.txt", [b"whole"], 0o644)
    assert len(cleaned) == 1 and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    assert (tmp_path / "f.txt").read_bytes() == b"whole"
