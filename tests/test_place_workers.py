"""Pulling many small files through worker processes (archive.place_workers), by the real CLI.

A pull of thousands of small files from a folder archive (or the cache) places them from forked
worker processes. The tests compare it with the same pull on one process (``--jobs 1``): the same
bytes, modes and marker; the same one-line error for a corrupt or missing blob, with nothing
corrupt left; and a pull killed while its workers run (SIGINT, SIGTERM, SIGKILL of the parent)
leaves no worker running and no partial or temporary file.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from typing import Callable
from pathlib import Path

import pytest

import archive
from archive import layout
from archive.hashing import BlobId
from archive.forking import MAX_PROCESSES, MIN_FILES_PER_WORKER
from tests.conftest import make_tree, staged_beside
from tests.httpd import httpd  # noqa: F401 - fixtures

FOLDERS = 30
FILES = max(3000, 3 * MIN_FILES_PER_WORKER)  # workers on 2 or 3 cores, and long enough to be killed


def _content(index: int) -> bytes:
    if index % 97 == 0:
        return b"the same content"  # one blob at many paths
    return os.urandom(index % 1500) if index % 211 else b""


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder archive holding ``many 1.0.0`` (FILES small files, some executable), and its source."""
    base = tmp_path_factory.mktemp("workers")
    files = {f"d{i % FOLDERS:02d}/f{i:05d}.bin": _content(i) for i in range(FILES)}
    source = make_tree(base / "src", files)
    for index in range(0, FILES, 13):
        path = source / f"d{index % FOLDERS:02d}/f{index:05d}.bin"
        path.chmod(0o755)
    store = base / "store"
    with archive.get_interface(store, create=True) as arc:
        arc.publish(source, "many", "1.0.0", progress=False)
    return store, source


def pull_argv(store: "Path | str", dest: Path, *options: str, verbose: bool = True) -> list[str]:
    """``-vv`` logs how many processes placed the files."""
    return [sys.executable, "-m", "archive", *(["-vv"] if verbose else []), "--no-progress", "--archive", str(store),
            *options, "pull", "many", "1.0.0", "--to", str(dest)]


def pull(store: "Path | str", dest: Path, *options: str, verbose: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(pull_argv(store, dest, *options, verbose=verbose), capture_output=True, text=True,
                          timeout=300)


def expected_processes() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), MAX_PROCESSES, FILES // MIN_FILES_PER_WORKER))


def tree(root: Path) -> dict[str, tuple[bytes, bool]]:
    """Every file below ``root`` but the marker, with its content and executable bit."""
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] != ".archive":
            found[str(rel)] = (path.read_bytes(), bool(path.stat().st_mode & stat.S_IXUSR))
    return found


def part_files(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.name.endswith(".archive-part")]


def error_line(result: subprocess.CompletedProcess) -> str:
    """The whole of stderr, which must be one ``archive: error:`` line."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("archive: error:"), result.stderr
    return lines[0]


def test_workers_place_what_one_process_places(published, tmp_path: Path) -> None:
    """Same files, bytes, executable bits and marker as a pull on one process."""
    store, source = published
    split, single = tmp_path / "split", tmp_path / "single"
    through_workers = pull(store, split)
    assert through_workers.returncode == 0, through_workers.stderr
    processes = expected_processes()
    said = f"placing {FILES} small files in {processes} processes"
    assert (said in through_workers.stderr) == (processes > 1), through_workers.stderr
    one = pull(store, single, "--jobs", "1")
    assert one.returncode == 0, one.stderr
    assert "small files in" not in one.stderr
    assert tree(split) == tree(single) == tree(source)
    assert (split / ".archive/pulled.json").read_bytes() == (single / ".archive/pulled.json").read_bytes()
    modes = {p.stat().st_mode & 0o777 for p in split.rglob("*.bin")}
    assert modes == {p.stat().st_mode & 0o777 for p in single.rglob("*.bin")} and len(modes) == 2
    assert part_files(split) == []


def test_a_progress_bar_does_not_keep_the_workers_from_starting(published, tmp_path: Path) -> None:
    """The bar (tqdm) starts no thread, so the pull may still fork its workers."""
    store, source = published
    argv = [arg if arg != "--no-progress" else "--progress" for arg in pull_argv(store, tmp_path / "dest")]
    shown = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    processes = expected_processes()
    assert (f"small files in {processes} processes" in shown.stderr) == (processes > 1), shown.stderr
    assert "writing" in shown.stderr  # the bar was drawn
    assert tree(tmp_path / "dest") == tree(source)


def test_a_second_pull_into_the_folder_finds_everything_there(published, tmp_path: Path) -> None:
    store, _ = published
    dest = tmp_path / "again"
    assert pull(store, dest).returncode == 0
    again = pull(store, dest)
    assert again.returncode == 0, again.stderr
    assert f"{FILES} files, 0 written, {FILES} already there" in again.stderr


def blob_file(store: Path, content: bytes) -> Path:
    return store / layout.blob_key(BlobId.of_bytes(content))


@pytest.fixture
def own_store(published, tmp_path: Path) -> Path:
    """A copy of the published archive that a test may damage."""
    store, _ = published
    copy = tmp_path / "store"
    subprocess.run(["cp", "-a", str(store), str(copy)], check=True)
    return copy


@pytest.mark.parametrize("index", [5, FILES - 5], ids=["the parent's slice", "a worker's slice"])
def test_a_corrupt_blob_is_refused_as_on_one_process(own_store: Path, published, tmp_path: Path,
                                                     index: int) -> None:
    """The one-line error of a pull on one process; the file is not placed, nothing half made."""
    _, source = published
    rel = f"d{index % FOLDERS:02d}/f{index:05d}.bin"
    content = (source / rel).read_bytes()
    bad = blob_file(own_store, content)
    bad.chmod(0o644)
    bad.write_bytes(bytes(len(content)))  # the same size, other bytes
    split, single = tmp_path / "split", tmp_path / "single"
    through_workers = pull(own_store, split, verbose=False)
    one = pull(own_store, single, "--jobs", "1", verbose=False)
    assert through_workers.returncode == one.returncode == 1
    assert error_line(through_workers) == error_line(one)
    assert "hashes to" in error_line(one)
    assert not split.exists() and not single.exists()  # new folders, built aside: nothing or all
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".split.", ".single."))] == []


def test_a_missing_blob_is_refused_as_on_one_process(own_store: Path, published, tmp_path: Path) -> None:
    _, source = published
    rel = f"d{(FILES - 7) % FOLDERS:02d}/f{FILES - 7:05d}.bin"
    blob_file(own_store, (source / rel).read_bytes()).unlink()
    split, single = tmp_path / "split", tmp_path / "single"
    through_workers = pull(own_store, split, verbose=False)
    one = pull(own_store, single, "--jobs", "1", verbose=False)
    assert through_workers.returncode == one.returncode == 1
    assert error_line(through_workers) == error_line(one)
    assert not (split / rel).exists() and part_files(split) == []


def processes_whose(file: str, holds: Callable[[bytes, int], bool]) -> list[int]:
    """The processes whose ``/proc/PID/file`` content (and pid) ``holds`` approves (one that
    ends while it is read is left out)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/{file}", "rb") as proc_file:
                    if holds(proc_file.read(), int(entry.name)):
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    return processes_whose("stat", lambda line, _: int(line.rsplit(b")", 1)[1].split()[1]) == pid)


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            return stat_file.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def signal_and_outlive(process: subprocess.Popen, signum: int, workers: list[int]) -> None:
    """Send ``signum`` to ``process``; it must exit as the CLI does on it, and each of its
    ``workers`` must be gone within 10 s."""
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    assert process.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[signum], err
    gone_by = time.monotonic() + 10
    while any(running(pid) for pid in workers) and time.monotonic() < gone_by:
        time.sleep(0.01)
    assert not any(running(pid) for pid in workers)


@pytest.mark.skipif(expected_processes() < 2, reason="one core: a pull starts no worker to kill")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_killing_the_pull_leaves_no_worker_and_no_partial_file(published, tmp_path: Path, signum: int) -> None:
    store, source = published
    dest = tmp_path / "dest"
    process = subprocess.Popen(pull_argv(store, dest), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while not workers and process.poll() is None and time.monotonic() < deadline:
        workers = children_of(process.pid)  # its only children are its place workers
        time.sleep(0.001)
    assert workers, "the pull ended before its workers were seen"
    signal_and_outlive(process, signum, workers)
    placed = tree(dest)
    assert len(placed) < FILES and not (dest / ".archive/pulled.json").exists()
    assert all(placed[path][0] == (source / path).read_bytes() for path in placed)
    assert part_files(dest) == []


def test_a_pull_from_the_cache_places_through_workers(published, httpd, tmp_path: Path,
                                                      isolated_user_dirs: Path) -> None:
    """From a remote archive (nginx), a second pull copies the cached blobs from worker
    processes; a cached blob found corrupt is fetched again by the in-process path."""
    store, source = published
    mirrored = subprocess.run([sys.executable, "-m", "archive", "mirror", str(store), str(httpd.root / "store"),
                               "--create"], capture_output=True, text=True, timeout=300)
    assert mirrored.returncode == 0, mirrored.stderr
    remote = httpd.url("store")
    first = pull(remote, tmp_path / "first")
    assert first.returncode == 0, first.stderr
    rel = f"d{(FILES - 3) % FOLDERS:02d}/f{FILES - 3:05d}.bin"
    content = (source / rel).read_bytes()
    cached = next((isolated_user_dirs / "cache" / "archive").rglob(BlobId.of_bytes(content).hexdigest))
    cached.chmod(0o644)
    cached.write_bytes(bytes(len(content)))
    second = pull(remote, tmp_path / "second")
    assert second.returncode == 0, second.stderr
    processes = expected_processes()
    assert (f"small files in {processes} processes" in second.stderr) == (processes > 1), second.stderr
    assert tree(tmp_path / "second") == tree(source)
    assert cached.read_bytes() == content  # evicted and fetched again


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line holds ``text`` (a forked worker keeps its parent's)."""
    return processes_whose("cmdline", lambda cmdline, pid: text.encode() in cmdline and running(pid))


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 100 pulls, each killed and checked
def test_a_pull_killed_at_random_leaves_no_worker_and_no_partial_file(published, tmp_path: Path) -> None:
    """SIGKILL or SIGTERM at a random moment of a pull through the workers, many times. Each
    pull makes a new folder, built aside (archive.staging): it is there whole or not at all; a
    SIGTERM leaves nothing else, a SIGKILL at most the hidden folder, which a pull removes."""
    import random

    store, source = published
    runs = int(os.environ.get("ARCHIVE_KILL_RUNS", "100"))
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    killed = 0
    for run in range(runs):
        dest = tmp_path / f"dest{run}"
        process = subprocess.Popen(pull_argv(store, dest, verbose=False), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 1.0))
        signum = rng.choice([signal.SIGKILL, signal.SIGTERM])
        process.send_signal(signum)
        killed += process.wait(timeout=60) != 0
        gone_by = time.monotonic() + 10
        while processes_naming(str(dest)) and time.monotonic() < gone_by:
            time.sleep(0.01)
        assert processes_naming(str(dest)) == [], f"seed {seed}, run {run}"
        if dest.exists():  # only once whole: the pull ended before the signal, or just as it came
            assert tree(dest) == tree(source), f"seed {seed}, run {run}"
        assert len(staged_beside(dest)) <= (signum == signal.SIGKILL), f"seed {seed}, run {run}"
    assert killed >= runs // 4, f"seed {seed}: only {killed} of {runs} pulls were killed before they ended"
    last = tmp_path / f"dest{runs - 1}"
    assert pull(store, last).returncode == 0 and tree(last) == tree(source) and staged_beside(last) == []
