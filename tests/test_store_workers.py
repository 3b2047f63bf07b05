"""Publishing many small files through worker processes (archive.store_workers).

A publish of thousands of small files to a local archive stores them from forked worker
processes. The tests compare it with the same publish on one process (``--jobs 1``): the same
release, every blob whole; a file that cannot be read fails it with the same error, leaving no
release; a publish killed while its workers run (SIGINT, SIGTERM, SIGKILL of the parent) leaves
no worker running, no release, and (but for SIGKILL, whose own batch nobody can remove) no
temporary file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import archive
from archive import layout
from archive.forking import MAX_PROCESSES, MIN_FILES_PER_WORKER
from tests.conftest import make_tree
from tests.test_place_workers import children_of, signal_and_outlive
from tests.test_small_files_durability import needs_syncfs

FILES = 4000
FOLDERS = 40


def _content(index: int) -> bytes:
    if index % 97 == 0:
        return b"the same content"  # one blob for many files, written by the parent and the worker alike
    return b"%d\n" % index * (index % 300) if index % 7 else os.urandom(index % 1500)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("store-workers")
    folder = make_tree(base / "src", {f"d{i % FOLDERS:02d}/f{i:05d}.txt": _content(i) for i in range(FILES)})
    (folder / "d00/f00000.txt").chmod(0o755)
    return folder


def expected_processes() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), MAX_PROCESSES, FILES // MIN_FILES_PER_WORKER))


def push_argv(store: Path, folder: Path, *options: str) -> list[str]:
    """``-vv`` logs how many processes stored the files."""
    return [sys.executable, "-m", "archive", "-vv", "--no-progress", "--archive", str(store), "push", str(folder),
            "many", "1.0.0", *options]


def new_store(path: Path) -> Path:
    archive.get_interface(path, create=True).close()
    return path


def temporaries(store: Path) -> list[str]:
    return sorted(os.listdir(store / layout.TMP_DIR)) if (store / layout.TMP_DIR).exists() else []


def files_of(store: Path) -> dict:
    with archive.get_interface(store) as arc:
        return dict(arc.get_release("many", "1.0.0").files)


@needs_syncfs
def test_workers_store_what_one_process_stores(source: Path, tmp_path: Path) -> None:
    split, single = new_store(tmp_path / "split"), new_store(tmp_path / "single")
    through_workers = subprocess.run(push_argv(split, source), capture_output=True, text=True, timeout=300)
    assert through_workers.returncode == 0, through_workers.stderr
    processes = expected_processes()
    said = f"storing {FILES} small files in {processes} processes"
    assert (said in through_workers.stderr) == (processes > 1), through_workers.stderr
    one = subprocess.run(push_argv(single, source, "--jobs", "1"), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    assert "small files in" not in one.stderr
    assert files_of(split) == files_of(single)  # blobs, sizes, modes and media types
    verified = subprocess.run([sys.executable, "-m", "archive", "--archive", str(split), "verify", "--full"],
                              capture_output=True, text=True, timeout=300)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert temporaries(split) == []


PUBLISH_WITH_A_FILE_GONE = """
import logging, os, pathlib, sys
import archive
from archive.publish import publish_sources
from archive.scan import scan_folder
logging.basicConfig(level=logging.DEBUG, format="%(message)s")
folder, store, jobs = sys.argv[1], sys.argv[2], (int(sys.argv[3]) or None)
sources = scan_folder(pathlib.Path(folder))
os.unlink(os.path.join(folder, sources[-5].path))  # in the last slice: a worker's, when there is one
with archive.get_interface(store) as arc:
    try:
        publish_sources(arc, sources, "many", "1.0.0", jobs=jobs, progress=False)
    except archive.ArchiveError as exc:
        print(exc)
"""


@needs_syncfs
def test_a_file_gone_from_a_workers_slice_fails_the_publish_as_on_one_process(source: Path, tmp_path: Path) -> None:
    """The worker leaves the file it cannot read to the parent, which says what is wrong. (In a
    child Python: a publish forks only while no other thread runs, and pytest may have some.)"""
    errors = []
    for jobs in (0, 1):
        copy = make_tree(tmp_path / f"copy-{jobs}", {p.relative_to(source).as_posix(): p.read_bytes()
                                                     for p in source.rglob("*") if p.is_file()})
        store = new_store(tmp_path / f"store-{jobs}")
        run = subprocess.run([sys.executable, "-c", PUBLISH_WITH_A_FILE_GONE, str(copy), str(store), str(jobs)],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        errors.append(run.stdout.strip())
        split = f"storing {FILES} small files in {expected_processes()} processes" in run.stderr
        assert split == (jobs == 0 and expected_processes() > 1), run.stderr
        assert not (store / layout.release_key("many", "1.0.0")).exists()
        assert temporaries(store) == []
    assert errors[0] == errors[1] and "cannot read" in errors[0], errors


def _workers_of(pid: int) -> list[int]:
    """The forked workers among ``pid``'s children: a fork keeps its parent's command line (the
    helper processes a publish starts run another one)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as own:
            cmdline = own.read()
    except OSError:
        return []
    workers = []
    for child in children_of(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as theirs:
                if theirs.read() == cmdline:
                    workers.append(child)
        except OSError:
            continue
    return workers


@needs_syncfs
@pytest.mark.skipif(expected_processes() < 2, reason="one core: a publish starts no worker to kill")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_killing_the_publish_leaves_no_worker_and_no_release(source: Path, tmp_path: Path, signum: int) -> None:
    store = new_store(tmp_path / "store")
    process = subprocess.Popen(push_argv(store, source), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "ARCHIVE_CACHE_DIR": str(tmp_path / "cache")})
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while not workers and process.poll() is None and time.monotonic() < deadline:
        workers = _workers_of(process.pid)
        time.sleep(0.001)
    assert workers, "the publish ended before its workers were seen"
    signal_and_outlive(process, signum, workers)
    assert not (store / layout.release_key("many", "1.0.0")).exists()
    if signum != signal.SIGKILL:  # a killed parent cannot remove its own batch (gc does, later)
        assert temporaries(store) == []
    again = subprocess.run(push_argv(store, source), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    verified = subprocess.run([sys.executable, "-m", "archive", "--archive", str(store), "verify", "--full"],
                              capture_output=True, text=True, timeout=300)
    assert verified.returncode == 0, verified.stdout + verified.stderr
