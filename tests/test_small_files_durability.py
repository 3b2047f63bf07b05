"""Many small files, made durable in batches: the guarantees of a publish still hold.

A folder archive writes the small files of a publish without a ``fsync`` each and makes them
durable together (``archive.backends.filesystem_batch``). These tests check what that must not
change, on the real CLI and the real filesystem:

* the order of the real system calls (recorded by ``strace``): every blob's data is synced
  before its rename, and every blob rename is synced before the release pointer is linked;
* a publish killed at a random moment, or at chosen points around the flush (by an audit hook
  in a ``sitecustomize`` the test puts on ``PYTHONPATH``, which kills the real CLI just before
  the system call named), leaves no release or a whole one, and a rerun completes;
* the batch's own rules: keys appear at the flush, a failed block leaves nothing, a concurrent
  gc cannot silently take a batch's temporary files.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import archive
from archive import layout
from archive.backends.filesystem import FileSystemArchive
from archive.backends.filesystem_batch import MAX_BATCHED_FILE, syncfs_available
from archive.errors import BackendError
from archive.transfer import run_jobs
from tests.conftest import make_tree
from tests.needs import unavailable
from tests.test_publish import snapshot

ROOT = Path(__file__).resolve().parent.parent
needs_syncfs = pytest.mark.skipif(not syncfs_available(), reason="syncfs(2) is Linux's; elsewhere nothing is batched")


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=timeout)


def small_files(root: Path, count: int, seed: int = 14) -> Path:
    """``count`` small files in folders of 100, with duplicates and empty files among them."""
    rng = random.Random(seed)
    files = {}
    for i in range(count):
        kind = i % 10
        content = b"" if kind == 0 else b"same content\n" if kind == 1 else rng.randbytes(rng.choice([1, 100, 4096]))
        files[f"d{i // 100}/f{i}.bin"] = content
    return make_tree(root, files)


def assert_sound(location: Path, name: str, source: Path, out: Path) -> bool:
    """The archive verifies in full; the release is absent or exactly ``source``. True if present."""
    with archive.get_interface(location) as arc:
        report = arc.verify(full=True)
        assert report.ok, report.errors
        versions = arc.versions(name)
        assert versions in ([], ["1.0.0"])
        if versions:
            assert snapshot(arc.download(name, "1.0.0", out, progress=False)) == snapshot(source)
        return bool(versions)


def push_again_and_check(location: Path, source: Path, out: Path) -> None:
    result = cli("-a", str(location), "push", str(source), "many", "1.0.0", "-m", "force")
    assert result.returncode == 0, result.stderr
    assert assert_sound(location, "many", source, out)


# ------------------------------------------------------------------ the batch's own rules
@needs_syncfs
def test_a_batched_write_appears_at_the_flush(folder_archive: FileSystemArchive) -> None:
    with folder_archive.batched_writes():
        folder_archive.write_key("blobs/sha256/aa/small", [b"small"])
        folder_archive.write_key("blobs/sha256/aa/large", [b"x" * (MAX_BATCHED_FILE + 1)])
        assert not folder_archive.has_key("blobs/sha256/aa/small")  # returned before it exists
        assert folder_archive.stat_key("blobs/sha256/aa/large").size == MAX_BATCHED_FILE + 1  # synced alone
        folder_archive.flush_writes()
        assert folder_archive.read_key("blobs/sha256/aa/small", 10) == b"small"
        folder_archive.write_key("blobs/sha256/bb/later", [b"later"])
    assert folder_archive.read_key("blobs/sha256/bb/later", 10) == b"later"  # the block's end flushes
    assert folder_archive.list_keys(layout.TMP_DIR) == []


@needs_syncfs
def test_a_create_only_write_flushes_the_batch_first(folder_archive: FileSystemArchive) -> None:
    with folder_archive.batched_writes():
        folder_archive.write_key("blobs/sha256/cc/blob", [b"blob"])
        folder_archive.write_key("releases/n/1.0.0", [b"pointer"], exclusive=True)
        assert folder_archive.read_key("blobs/sha256/cc/blob", 10) == b"blob"


@needs_syncfs
def test_a_failed_block_leaves_nothing(folder_archive: FileSystemArchive) -> None:
    with pytest.raises(RuntimeError):
        with folder_archive.batched_writes():
            folder_archive.write_key("blobs/sha256/dd/one", [b"one"])
            raise RuntimeError("the publish failed")
    assert not folder_archive.has_key("blobs/sha256/dd/one")
    assert folder_archive.list_keys(layout.TMP_DIR) == []


@needs_syncfs
def test_worker_threads_join_the_batch_and_other_threads_do_not(folder_archive: FileSystemArchive) -> None:
    outside: list[bool] = []

    def elsewhere() -> None:  # a thread of the program not started by the block's jobs
        folder_archive.write_key("blobs/sha256/ee/other", [b"other"])
        outside.append(folder_archive.has_key("blobs/sha256/ee/other"))

    with folder_archive.batched_writes():
        run_jobs([lambda i=i: folder_archive.write_key(f"blobs/sha256/ff/{i}", [b"%d" % i]) for i in range(20)], 4)
        assert not any(folder_archive.has_key(f"blobs/sha256/ff/{i}") for i in range(20))
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
    assert outside == [True]
    assert all(folder_archive.read_key(f"blobs/sha256/ff/{i}", 10) == b"%d" % i for i in range(20))


@needs_syncfs
def test_a_full_batch_is_flushed_behind_the_writer(folder_archive: FileSystemArchive,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """While a full batch waits on its ``syncfs``, the writer goes on with the next batch."""
    import archive.backends.filesystem_batch as batching

    entered, released = threading.Event(), threading.Event()
    real_sync = batching.sync_filesystem

    def slow_sync(fd: int) -> None:
        entered.set()
        assert released.wait(10), "the flush was waited for: nobody could let it go on"
        real_sync(fd)

    monkeypatch.setattr(batching, "MAX_FILES", 3)
    monkeypatch.setattr(batching, "sync_filesystem", slow_sync)
    with folder_archive.batched_writes():
        for i in range(3):  # the third fills the batch
            folder_archive.write_key(f"blobs/sha256/aa/{i}", [b"%d" % i])
        assert entered.wait(10)
        folder_archive.write_key("blobs/sha256/bb/next", [b"next"])  # returns while the flush waits
        assert not folder_archive.has_key("blobs/sha256/aa/0")
        released.set()
    assert [folder_archive.read_key(f"blobs/sha256/aa/{i}", 10) for i in range(3)] == [b"0", b"1", b"2"]
    assert folder_archive.read_key("blobs/sha256/bb/next", 10) == b"next"
    assert folder_archive.list_keys(layout.TMP_DIR) == []


@needs_syncfs
def test_a_flush_behind_that_fails_fails_the_block_and_leaves_nothing(folder_archive: FileSystemArchive,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import archive.backends.filesystem_batch as batching

    def failing_sync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(batching, "MAX_FILES", 3)
    monkeypatch.setattr(batching, "sync_filesystem", failing_sync)
    written = []
    with pytest.raises(BackendError, match="Input/output error"):
        with folder_archive.batched_writes():
            for i in range(10):
                folder_archive.write_key(f"blobs/sha256/aa/{i}", [b"%d" % i])
                written.append(i)
    assert len(written) < 10  # told at a later write, not only at the end
    assert not any(folder_archive.has_key(f"blobs/sha256/aa/{i}") for i in range(10))
    assert folder_archive.list_keys(layout.TMP_DIR) == []


def test_an_archive_that_is_not_durable_batches_nothing(tmp_path: Path) -> None:
    cache_like = FileSystemArchive(tmp_path / "cache", durable=False)
    with cache_like.batched_writes():
        cache_like.write_key("blobs/sha256/aa/x", [b"x"])
        assert cache_like.read_key("blobs/sha256/aa/x", 10) == b"x"


@needs_syncfs
def test_gc_within_its_grace_leaves_a_batch_alone(folder_archive: FileSystemArchive) -> None:
    """gc removes temporaries older than its grace only: a batch's are seconds old (a batch is
    flushed within ``MAX_AGE`` of its first file, at the next write, and at its end), younger than
    the new blobs of the same publish, which the grace must already outlast."""
    with folder_archive.batched_writes():
        for i in range(10):
            folder_archive.write_key(f"blobs/sha256/aa/{i}", [b"%d" % i])
        report = folder_archive.collect_garbage(grace_hours=0.01)
        assert report.removed == [] and len(folder_archive.list_keys(layout.TMP_DIR)) == 10
    assert all(folder_archive.has_key(f"blobs/sha256/aa/{i}") for i in range(10))


@needs_syncfs
def test_a_temporary_file_taken_by_gc_fails_the_flush_loudly(folder_archive: FileSystemArchive) -> None:
    with pytest.raises(BackendError, match="vanished before it was moved into place"):
        with folder_archive.batched_writes():
            folder_archive.write_key("blobs/sha256/aa/kept", [b"kept"])
            folder_archive.write_key("blobs/sha256/aa/taken", [b"taken"])
            time.sleep(0.05)
            report = folder_archive.collect_garbage(grace_hours=0)  # a grace shorter than the batch
            assert len(report.removed) == 2
    assert folder_archive.list_keys(layout.TMP_DIR) == []


_CREATED: list[str] = []  # "on" first while counting
_HOOKED: list[bool] = []


def _count_creations(event: str, args: tuple) -> None:
    """Audit hook: the names of files created for writing (``os.open`` with ``O_CREAT``)."""
    if event == "open" and _CREATED[:1] == ["on"] and isinstance(args[0], str) and isinstance(args[2], int) \
            and args[2] & os.O_CREAT:
        _CREATED.append(args[0])


def test_content_repeated_in_one_publish_is_written_once(folder_archive: FileSystemArchive, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src", {**{f"empty/{i}": b"" for i in range(200)},
                                          **{f"same/{i}": b"same" for i in range(100)}, "other": b"other"})
    if not _HOOKED:
        sys.addaudithook(_count_creations)
        _HOOKED.append(True)
    _CREATED[:] = ["on"]
    try:
        release = folder_archive.publish(source, "dups", "1.0.0", progress=False, jobs=4)
    finally:
        created, _CREATED[:] = [name for name in _CREATED[1:] if name.endswith(".part")], ["off"]
    assert len(release.files) == 301
    assert len(created) == 3 + 1 + 1 + 2  # three contents, the record, the pointer, the two index files
    assert snapshot(folder_archive.download("dups", "1.0.0", tmp_path / "out", progress=False)) == snapshot(source)


# ------------------------------------------------------------------ the real system calls, in order
STRACE = shutil.which("strace")
_LINE = re.compile(r"^(\d+) +(?:<\.\.\. (\w+) resumed>(.*)|(\w+)\((.*))$")


def traced_events(path: Path) -> list[tuple[str, str, str]]:
    """(phase, call, arguments) per line of ``strace -f -y``: phase is ``start`` for an unfinished
    call, ``end`` for a resumed one, ``both`` for a call on one line (nothing came between)."""
    events, started = [], {}
    for line in path.read_text().splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        pid, resumed_call, _, call, args = match.groups()
        if resumed_call:
            events.append(("end", resumed_call, started.pop(pid, "")))
        elif args.endswith("<unfinished ...>"):
            started[pid] = args
            events.append(("start", call, args))
        else:
            events.append(("both", call, args))
    return events


def _paths(args: str) -> list[str]:
    """The paths strace -y shows for descriptors, and the quoted names, in order."""
    return re.findall(r'<([^<>]*)>|"([^"]*)"', args)


def _rename(args: str) -> tuple[str, str]:
    """(source path, target path) of a ``renameat``/``linkat`` with folder descriptors."""
    (src_dir, _), (_, src), (dst_dir, _), (_, dst) = _paths(args)[:4]
    return f"{src_dir}/{src}", f"{dst_dir}/{dst}"


@needs_syncfs
def test_data_is_synced_before_each_rename_and_renames_before_the_pointer(tmp_path: Path) -> None:
    if STRACE is None:
        unavailable("strace is not installed (Debian package strace)")
    rng = random.Random(7)
    files = {f"big/{i}.bin": rng.randbytes(250_000) for i in range(300)}  # 75 MB: a batch fills by bytes
    files.update({f"big/large{i}.bin": rng.randbytes(2 * MAX_BATCHED_FILE) for i in range(2)})  # synced alone
    files.update({f"tiny/{i}.bin": rng.randbytes(64) for i in range(4200)})  # a batch fills by count: a helper moves it
    source = small_files(make_tree(tmp_path / "src", files), 400)
    store = tmp_path / "store"
    assert cli("init", str(store)).returncode == 0
    trace = tmp_path / "trace"
    calls = "openat,close,fsync,fdatasync,syncfs,renameat,renameat2,linkat,execve"
    result = subprocess.run([STRACE, "-f", "-y", "-qq", "-e", f"trace={calls}", "-o", str(trace), sys.executable,
                             "-m", "archive", "-a", str(store), "push", str(source), "many", "1.0.0", "-j", "4"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert result.returncode == 0, result.stderr
    events = traced_events(trace)
    tmp, blobs = f"{store}/{layout.TMP_DIR}/", f"{store}/{layout.BLOBS_DIR}/"
    closed: dict[str, int] = {}  # temporary file -> where its writer began closing it
    synced_alone: dict[str, int] = {}  # temporary file -> where its own fsync ended
    syncs: list[tuple[int, int]] = []  # (start, end) of each syncfs
    sync_start: int | None = None
    renames: list[tuple[int, str, str]] = []  # (start, source, target) of blob renames
    renamed_at: list[int] = []  # every position a blob rename was seen at (its end is the last)
    pointer_at = None
    for at, (phase, call, args) in enumerate(events):
        if call in ("renameat", "renameat2") and _rename(args)[1].startswith(f"{store}/{layout.BLOBS_DIR}/"):
            renamed_at.append(at)
        paths = [p for p, _ in _paths(args) if p]
        if call == "close" and phase != "end" and paths and paths[0].startswith(tmp):
            closed[paths[0]] = at
        elif call == "fsync" and phase != "start" and paths and paths[0].startswith(tmp):
            synced_alone[paths[0]] = at
        elif call == "syncfs":
            sync_start = at if phase == "start" else sync_start
            if phase != "start":
                syncs.append((at if phase == "both" else sync_start, at))
        elif call in ("renameat", "renameat2") and phase != "end" and _rename(args)[1].startswith(blobs):
            renames.append((at, *_rename(args)))
        elif call == "linkat" and phase != "end" and "/releases/" in _rename(args)[1]:
            pointer_at = at
    assert pointer_at is not None and len(renames) >= 300
    blob_targets = [target for _, _, target in renames]
    assert len(blob_targets) == len(set(blob_targets)), "duplicate content was written more than once"
    for start, source_path, target in renames:
        data_synced = synced_alone.get(source_path, len(events)) < start or any(
            closed[source_path] < sync_begin and sync_end < start for sync_begin, sync_end in syncs)
        assert data_synced, f"{target} was renamed before its data was synced"
    last_rename = max(renamed_at)
    dirs_synced = any(last_rename < begin and end < pointer_at for begin, end in syncs) or all(
        any(call == "fsync" and os.path.dirname(target) in args and last_rename < at < pointer_at
            for at, (_, call, args) in enumerate(events)) for _, _, target in renames)
    assert dirs_synced, "the pointer was linked before the blob renames were durable"
    assert len([s for s in syncs if s[1] < pointer_at]) >= 2  # the batch filled once before its end
    lines = trace.read_text().splitlines()
    helpers = {line.split()[0] for line in lines if "execve(" in line and '"-I", "-S", "-c"' in line}
    moved_by_helper = [line for line in lines if line.split()[0] in helpers and "renameat" in line and blobs in line]
    assert len(moved_by_helper) >= 1024, "no full batch was moved into place by the helper process"


# ------------------------------------------------------------------ killed at chosen points
HOOK = r'''
import os, signal, sys

_point = os.environ.get("ARCHIVE_TEST_KILL_AT", "")
_state = {"renames": 0, "linked": False}


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def _hook(event, args):
    if event == "os.rename":
        _state["renames"] += 1
        if _point == "rename:%d" % _state["renames"]:
            _kill()
    elif event == "os.link":
        if _point == "link":
            _kill()
        _state["linked"] = True
    elif event == "os.remove" and _state["linked"] and _point == "after-link":
        _kill()


if _point:
    sys.addaudithook(_hook)
'''
# Each point (the kill comes just before the call named) with whether the release must then be
# visible. In a new archive the publish's renames are, in order: its blobs, after the one
# ``syncfs`` of their batch (``first``: data synced, nothing renamed yet); then its record
# (``record``: right after the batched flush, the record not yet in place); then the pointer is
# linked (``link``: record in place, blob renames synced, no pointer) and its temporary file
# removed (``after-link``: the release is visible and must be whole).
KILL_POINTS = {"first": False, "middle": False, "record": False, "link": False, "after-link": True}


@needs_syncfs
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_at_a_point_of_the_flush_leaves_no_release_or_a_whole_one(point: str, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HOOK)
    source = small_files(tmp_path / "src", 600)
    store = tmp_path / "store"
    assert cli("init", str(store)).returncode == 0
    blobs = len({path.read_bytes() for path in source.rglob("*") if path.is_file()})
    renames = {"first": "rename:1", "middle": f"rename:{blobs // 2}", "record": f"rename:{blobs + 1}"}
    killed = cli("-a", str(store), "push", str(source), "many", "1.0.0", "-m", "force",
                 env={"PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}", "ARCHIVE_TEST_KILL_AT": renames.get(point, point)})
    assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr)
    assert assert_sound(store, "many", source, tmp_path / "out") is KILL_POINTS[point]
    push_again_and_check(store, source, tmp_path / "again")


# ------------------------------------------------------------------ killed at random moments
def killed_at_random(tmp_path: Path, runs: int, files: int = 2000) -> dict[str, int]:
    """Push ``files`` small files and 4,200 tiny distinct ones ``runs`` times, each into a new
    archive, killing the CLI at a random moment; after each, the archive is sound and a rerun
    completes. The tiny files fill a batch by count, which a helper process moves into place."""
    seed = int(os.environ.get("ARCHIVE_KILL_SEED", "14"))
    rng = random.Random(seed)
    source = small_files(tmp_path / "src", files, seed)
    make_tree(source / "tiny", {f"{i}.bin": rng.randbytes(64) for i in range(4200)})
    timing = tmp_path / "timing"
    assert cli("init", str(timing)).returncode == 0
    started = time.perf_counter()
    assert cli("-a", str(timing), "push", str(source), "many", "1.0.0", "-m", "force").returncode == 0
    duration = time.perf_counter() - started
    tally = {"killed": 0, "finished": 0, "visible": 0}
    for run in range(runs):
        store = tmp_path / f"store{run}"
        assert cli("init", str(store)).returncode == 0
        cache = {"ARCHIVE_CACHE_DIR": str(tmp_path / f"cache{run}")} if run % 2 else {}  # cold: every file is new
        proc = subprocess.Popen([sys.executable, "-m", "archive", "-a", str(store), "push", str(source), "many",
                                 "1.0.0", "-m", "force"], env={**os.environ, "PYTHONPATH": str(ROOT), **cache},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, duration))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        tally["killed" if proc.returncode == -signal.SIGKILL else "finished"] += 1
        tally["visible"] += assert_sound(store, "many", source, tmp_path / f"out{run}")
        push_again_and_check(store, source, tmp_path / f"again{run}")
        shutil.rmtree(store)
        shutil.rmtree(tmp_path / f"again{run}")
        shutil.rmtree(tmp_path / f"out{run}", ignore_errors=True)
        shutil.rmtree(tmp_path / f"cache{run}", ignore_errors=True)
    print(f"\nsmall-files kill test: seed {seed}, push {duration * 1000:.0f} ms, {tally}")
    return tally


def test_a_publish_of_many_small_files_killed_at_random_is_sound(tmp_path: Path) -> None:
    tally = killed_at_random(tmp_path, int(os.environ.get("ARCHIVE_KILL_RUNS", "3")))
    assert tally["killed"] + tally["finished"] >= 3


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 100 pushes, each killed and checked: about 10 minutes on a busy machine
def test_a_publish_of_many_small_files_killed_at_random_100_times(tmp_path: Path) -> None:
    runs = int(os.environ.get("ARCHIVE_KILL_RUNS", "100"))
    tally = killed_at_random(tmp_path, runs)
    assert tally["killed"] >= runs // 4, tally  # enough kills land mid-publish for the test to mean something
