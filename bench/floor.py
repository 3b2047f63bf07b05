"""The floor of a Python file loop: ``python -m bench.floor [--files N] [--scratch DIR]``.

Issue 14 asks a push of 10,000 files of 4 KiB to cost no more than ``openssl dgst -sha256`` +
``cp -r`` + ``sync`` of the folder, and a pull no more than 1.5x ``cp -r``. This bench asks what
any Python program pays for that work, whatever its design: a loop that makes only the system
calls each file needs and one sha256, nothing else (no record, no checks, no stat cache, no
progress), beside the same anchors as ``bench.run``:

* **push floor**: per file ``stat``, ``open``/``read``/``close`` of the source, sha256, ``open``
  of a temporary in the store, ``write``, ``close``; then one ``syncfs`` and a ``rename`` per
  blob into its hash-named folder (the folder archive's batched durability, without fsync per
  file);
* **pull floor**: per file ``open``/``read``/``close`` of the blob, sha256, ``open`` of the new
  file, ``write``, ``close`` (no temporary, no link, no mode change: less than a pull must do);
  and in two processes as a pull makes a file appear whole: ``O_TMPFILE``, ``write``, ``linkat``.

Each loop runs in one process and split over two (``fork``; the second core is the only way
around the interpreter lock). Wall and CPU seconds (the process and its children) are printed
per sample and as medians, with each floor's ratio to its anchor. Before each timed step the
bench calls ``sync`` and touches fresh memory, as ``bench.run`` does.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench.datasets import make_random_folder
from bench.measure import describe_filesystem, prefault_memory
from bench.workloads import relative_files

FILE_SIZE = 4096
PER_FOLDER = 100


def push_loop(sources: list[str], store: str, tag: str) -> list[tuple[str, str]]:
    """Hash each source and write it to ``store/tmp``; return (temporary, digest) pairs."""
    written = []
    for index, source in enumerate(sources):
        size = os.stat(source).st_size
        fd = os.open(source, os.O_RDONLY)
        data = os.read(fd, size + 1)
        os.close(fd)
        digest = hashlib.sha256(data).hexdigest()
        temporary = f"{store}/tmp/{tag}-{index}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.write(fd, data)
        os.close(fd)
        written.append((temporary, digest))
    return written


def make_durable_and_name(store: str, written: list[tuple[str, str]]) -> None:
    """One ``syncfs`` for the whole batch, then each blob renamed into its folder."""
    fd = os.open(store, os.O_RDONLY)
    try:
        os.syncfs(fd) if hasattr(os, "syncfs") else os.sync()
    finally:
        os.close(fd)
    for temporary, digest in written:
        os.rename(temporary, f"{store}/{digest[:2]}/{digest}")


def push(sources: list[str], store: str, processes: int) -> None:
    """The push floor, with the files dealt out to ``processes`` processes."""
    os.makedirs(f"{store}/tmp")
    for prefix in range(256):
        os.mkdir(f"{store}/{prefix:02x}")
    in_parallel(processes, lambda part: make_durable_and_name(
        store, push_loop(sources[part::processes], store, f"p{part}")))


def pull_loop(blobs: list[str], targets: list[str], unnamed: bool = False) -> None:
    """Read, hash and write each blob to its target; ``unnamed``: as a pull makes a file
    appear whole, written unnamed (``O_TMPFILE``) and then linked (``linkat``)."""
    for blob, target in zip(blobs, targets):
        fd = os.open(blob, os.O_RDONLY)
        data = os.read(fd, FILE_SIZE * 2)
        os.close(fd)
        hashlib.sha256(data).hexdigest()
        if unnamed:
            fd = os.open(os.path.dirname(target), os.O_TMPFILE | os.O_WRONLY, 0o644)
            os.write(fd, data)
            os.link(f"/proc/self/fd/{fd}", target, src_dir_fd=fd, follow_symlinks=True)
        else:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data)
        os.close(fd)


def pull(store: str, dest: str, processes: int, unnamed: bool = False) -> None:
    """The pull floor: every blob of ``store`` into ``dest``, split over ``processes``
    (contiguous slices, as the pull's place workers take them)."""
    blobs = sorted(entry.path for prefix in range(256) for entry in os.scandir(f"{store}/{prefix:02x}"))
    targets = [f"{dest}/{index // PER_FOLDER:03d}/{index:05d}" for index in range(len(blobs))]
    for folder in sorted({os.path.dirname(target) for target in targets}):
        os.makedirs(folder)
    bounds = [len(blobs) * part // processes for part in range(processes + 1)]
    in_parallel(processes, lambda part: pull_loop(blobs[bounds[part]:bounds[part + 1]],
                                                  targets[bounds[part]:bounds[part + 1]], unnamed))


def in_parallel(processes: int, work: Callable[[int], None]) -> None:
    """Run ``work(0)`` here and ``work(1..processes-1)`` in forked children; wait for all."""
    children = []
    for part in range(1, processes):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                work(part)
            finally:
                os._exit(0)
        children.append(pid)
    work(0)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"a floor process failed with status {status}")


def cpu_seconds() -> float:
    """User + system seconds of this process and its waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(step: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of ``step``, after a ``sync`` and a prefault."""
    os.sync()
    prefault_memory(1 << 30)
    cpu, start = cpu_seconds(), time.perf_counter()
    step()
    return time.perf_counter() - start, cpu_seconds() - cpu


def run(scratch: Path, files: int, repeat: int) -> dict[str, list[tuple[float, float]]]:
    """Time the anchors and floors ``repeat`` times, alternating; return samples per row."""
    source = make_random_folder(scratch / "source", files, FILE_SIZE, PER_FOLDER)
    os.sync()
    names = relative_files(source)
    paths = [str(source / name) for name in names]
    samples: dict[str, list[tuple[float, float]]] = {}
    for _ in range(repeat):
        for name in ("anchor", "store1", "store2", "copy", "out1", "out2", "out3"):
            shutil.rmtree(scratch / name, ignore_errors=True)
        steps = {
            "push anchor: openssl dgst + cp -r + sync": lambda: _run_all(
                [["openssl", "dgst", "-sha256", *names], ["cp", "-r", str(source), str(scratch / "anchor")],
                 ["sync"]], source),
            "push floor, 1 process": lambda: push(paths, str(scratch / "store1"), 1),
            "push floor, 2 processes": lambda: push(paths, str(scratch / "store2"), 2),
            "pull anchor: cp -r": lambda: _run_all([["cp", "-r", str(source), str(scratch / "copy")]], source),
            "pull floor, 1 process": lambda: pull(str(scratch / "store1"), str(scratch / "out1"), 1),
            "pull floor, 2 processes": lambda: pull(str(scratch / "store1"), str(scratch / "out2"), 2),
        }
        if hasattr(os, "O_TMPFILE"):
            steps["pull floor, O_TMPFILE + linkat, 2 processes"] = lambda: pull(
                str(scratch / "store1"), str(scratch / "out3"), 2, unnamed=True)
        for label, step in steps.items():
            samples.setdefault(label, []).append(timed(step))
            print(f"  {label:42s} {samples[label][-1][0] * 1000:7.0f} ms wall "
                  f"{samples[label][-1][1] * 1000:7.0f} ms CPU", flush=True)
    return samples


def _run_all(commands: list[list[str]], cwd: Path) -> None:
    for argv in commands:
        subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def report(samples: dict[str, list[tuple[float, float]]]) -> None:
    """Medians of wall and CPU time per row, and each floor against its anchor."""
    print("\n| row | wall ms | CPU ms | wall vs anchor | CPU vs anchor |\n|---|---:|---:|---:|---:|")
    anchor = (0.0, 0.0)
    for label, rows in samples.items():
        wall, cpu = (statistics.median(s[index] for s in rows) for index in (0, 1))
        if "anchor" in label:
            anchor = (wall, cpu)
            print(f"| {label} | {wall * 1000:.0f} | {cpu * 1000:.0f} | - | - |")
        else:
            print(f"| {label} | {wall * 1000:.0f} | {cpu * 1000:.0f} | {wall / anchor[0]:.2f}x | "
                  f"{cpu / anchor[1]:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000, help="files of 4 KiB (default 10,000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scratch", type=Path, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-floor-", dir=args.scratch and str(args.scratch)))
    try:
        print(f"scratch: {describe_filesystem(scratch)}")
        report(run(scratch, args.files, args.repeat))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
