"""Many files and very large releases (issue 14): ``python -m bench.scale [--quick]``.

Two parts, each running the real CLI in child processes with a fresh user environment per
archive run (:func:`bench.workloads.user_env`) and peak RSS from GNU time (:mod:`bench.measure`):

* **many small files**: 100,000 random files of 1 KiB in 1,000 folders (2,000 in 20 with
  ``--quick``). Alternating with its anchor, ``--repeat`` times: ``archive push`` to a new folder
  archive against ``openssl dgst -sha256`` of every file (through ``xargs``: the names do not
  fit one command line) + ``cp -r`` + ``sync``; ``archive pull --to NEW`` against ``cp -r``; and
  a re-push of the unchanged folder (same user cache, a new version) against the first push,
  and one with a file changed (which cannot reuse the earlier record: :mod:`archive.reuse`).
* **entries**: one release of N generated files (half empty, half a few bytes drawn from 97
  contents, 1,000 per folder) for N in 10,000, 100,000 and 1,000,000 (1,000 and 5,000 with
  ``--quick``; ``--entries`` to choose): the time and peak RSS of ``push``, ``show --json``,
  ``resolve`` (``ArchiveInterface.resolve`` in a child Python) and ``pull``, and the time per
  entry, which stays flat when growth is linear.

Before every timed command (and before the push anchor's sequence, whose own ``sync`` is on its
clock) the bench calls ``sync``, so dirty pages of the previous command are not written back on
the next one's clock. Numbers vary with the machine and its load:
they belong in docs/performance.md, never in test asserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import (GNU_TIME, RSS_IS_EXACT, CommandFailed, Sample, compile_package, describe_filesystem,
                           prefault_memory)
from bench.workloads import remove, user_env

REPO = Path(__file__).resolve().parents[1]
KIB = 1024
FULL_ENTRIES = (10_000, 100_000, 1_000_000)
QUICK_ENTRIES = (1_000, 5_000)
TINY_CONTENTS = 97
PER_FOLDER = 1_000
RESOLVE = "import sys, archive; archive.get_interface(sys.argv[1]).resolve(sys.argv[2], '*')"


@dataclass(frozen=True)
class Timed(Sample):
    """A :class:`Sample` with the CPU seconds (user + system) of the command and its children:
    steadier than the clock on a shared machine."""

    cpu_seconds: float = 0.0


def run_measured(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Timed:
    """Run ``argv`` under GNU time; its wall time, peak RSS and CPU time (as bench.measure.run_timed,
    plus the CPU time that the benchmark's rows need beside the clock)."""
    if not RSS_IS_EXACT:
        raise SystemExit(f"bench.scale: needs GNU time at {GNU_TIME} (Debian package time)")
    with tempfile.NamedTemporaryFile(prefix="bench-time-") as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.run([GNU_TIME, "-f", "%M %U %S", "-o", out.name, *argv], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            raise CommandFailed(argv, proc.returncode, err.read().decode("utf-8", "replace"))
        rss, user, system = Path(out.name).read_text().strip().splitlines()[-1].split()
    return Timed(seconds, int(rss), float(user) + float(system))


@dataclass
class Row:
    """One archive command, beside its anchor when it has one."""

    label: str
    ours: list[Timed] = field(default_factory=list)
    anchor: list[Timed] = field(default_factory=list)
    anchor_label: str = "-"
    target: float | None = None

    @property
    def ratio(self) -> float | None:
        return _median(self.ours) / _median(self.anchor) if self.anchor else None

    def line(self) -> str:
        anchor = f"{_median(self.anchor):>9.2f}" if self.anchor else f"{'-':>9}"
        ratio = f"{self.ratio:>7.3f}x" if self.ratio is not None else f"{'-':>8}"
        met = "" if self.target is None or self.ratio is None else ("met" if self.ratio <= self.target else "NOT met")
        cpu = f"{_median_cpu(self.ours):>7.2f}" + (f" /{_median_cpu(self.anchor):>6.2f}" if self.anchor else " " * 8)
        return (f"{self.label:<44} {_median(self.ours):>9.2f} {anchor} {ratio} {cpu} {_peak_mib(self.ours):>7.0f} MiB"
                f"  {self.anchor_label:<24} {met}")


def _median(samples: list[Timed]) -> float:
    return statistics.median(s.seconds for s in samples)


def _median_cpu(samples: list[Timed]) -> float:
    return statistics.median(s.cpu_seconds for s in samples)


def _peak_mib(samples: list[Sample]) -> float:
    return max(s.max_rss_kib for s in samples) / 1024


def make_small_files(root: Path, count: int, size: int, folders: int) -> Path:
    """``count`` random files of ``size`` bytes spread evenly over ``folders`` folders."""
    per_folder = -(-count // folders)
    for index in range(count):
        folder = root / f"d{index // per_folder:04d}"
        if index % per_folder == 0:
            folder.mkdir(parents=True)
        (folder / f"f{index:07d}.bin").write_bytes(os.urandom(size))
    return root


def change_one_file(root: Path, size: int) -> None:
    """Give the first file of ``root`` new random content of the same ``size``."""
    first = min((folder for folder in root.iterdir()), key=lambda p: p.name)
    target = min(first.iterdir(), key=lambda p: p.name)
    target.write_bytes(os.urandom(size))


def make_entries(root: Path, count: int) -> Path:
    """``count`` files, :data:`PER_FOLDER` per folder: even ones empty, odd ones a few bytes
    (one of :data:`TINY_CONTENTS` contents), so the release is large and its blobs few."""
    for index in range(count):
        folder = root / f"d{index // PER_FOLDER:04d}"
        if index % PER_FOLDER == 0:
            folder.mkdir(parents=True)
        (folder / f"e{index:07d}").write_bytes(b"" if index % 2 == 0 else b"%d\n" % (index % TINY_CONTENTS))
    return root


class Bench:
    """The archive CLI and its scratch folder; every run gets a new user environment."""

    def __init__(self, work: Path, python: str, prefault_bytes: int = 0) -> None:
        self.work, self.python, self.cli = work, python, (python, "-m", "archive")
        self.prefault_bytes = prefault_bytes
        self._homes = 0

    def home(self) -> dict[str, str]:
        """A new user environment that runs this checkout's archive (PYTHONPATH), as bench.s3 does."""
        self._homes += 1
        return {**user_env(self.work / f"home-{self._homes}"), "PYTHONPATH": str(REPO)}

    def timed(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Timed:
        """Flush dirty pages, prefault memory (as ``bench.run`` does: on this VM the first touch
        of a page the host took back is slow, and it decided the anchors' times: ``cp -r`` of
        20,000 files took 0.9 s, then 7.8 s right after), then run ``argv`` measured."""
        os.sync()
        if self.prefault_bytes:
            prefault_memory(self.prefault_bytes)
        return run_measured(argv, env=env, cwd=cwd)

    def timed_sequence(self, commands: list[list[str]], cwd: Path | None = None) -> Timed:
        """Run ``commands`` one after another, as a person would type them, after one
        :meth:`timed`-style settling before the first only: a ``sync`` in the sequence must
        write back what the command before it left dirty, on the clock."""
        os.sync()
        if self.prefault_bytes:
            prefault_memory(self.prefault_bytes)
        samples = [run_measured(argv, cwd=cwd) for argv in commands]
        return Timed(sum(s.seconds for s in samples), max(s.max_rss_kib for s in samples),
                     sum(s.cpu_seconds for s in samples))

    def archive(self, env: dict[str, str], store: Path, *args: str) -> Timed:
        return self.timed([*self.cli, "--no-progress", "-q", "--archive", str(store), *args], env)

    def new_store(self, label: str) -> Path:
        store = self.work / label
        remove(store)
        subprocess.run([*self.cli, "init", str(store)], check=True, capture_output=True, env=self.home())
        return store


def small_file_rows(bench: Bench, count: int, folders: int, reps: int) -> list[Row]:
    """Push, pull and re-push of ``count`` files of 1 KiB, alternating with their anchors."""
    src = make_small_files(bench.work / "small", count, KIB, folders)
    label = f"{count:,} x 1 KiB in {folders:,} folders"
    push = Row(f"push {label}", anchor_label="openssl + cp -r + sync", target=1.5)
    pull = Row(f"pull {label}", anchor_label="cp -r", target=1.5)
    again = Row("push it again, unchanged", anchor_label="the first push", target=0.1)
    changed = Row("push it again, 1 file changed", anchor_label="the first push")
    anchor_hash = ["sh", "-c", "find . -type f -print0 | xargs -0 openssl dgst -sha256 >/dev/null"]
    try:
        for _ in range(reps):
            copy, pulled, store = bench.work / "copy", bench.work / "pulled", bench.new_store("store")
            push.anchor.append(bench.timed_sequence([anchor_hash, ["cp", "-r", str(src), str(copy)], ["sync"]],
                                                    cwd=src))
            env = bench.home()
            push.ours.append(bench.archive(env, store, "push", str(src), "bench", "1.0.0"))
            again.ours.append(bench.archive(env, store, "push", str(src), "bench", "1.0.1"))
            again.anchor.append(push.ours[-1])
            change_one_file(src, KIB)  # the re-push that cannot reuse the record: each file looked up
            changed.ours.append(bench.archive(env, store, "push", str(src), "bench", "1.0.2"))
            changed.anchor.append(push.ours[-1])
            remove(copy)
            pull.anchor.append(bench.timed(["cp", "-r", str(src), str(copy)]))
            pull.ours.append(bench.archive(bench.home(), store, "pull", "bench", "1.0.0", "--to", str(pulled)))
            check_same_files(src, pulled)
            remove(copy, pulled, store)
    finally:
        remove(src)
    return [push, pull, again, changed]


def entry_rows(bench: Bench, count: int) -> list[Row]:
    """Push, show --json, resolve and pull of one release of ``count`` generated files."""
    src = make_entries(bench.work / "entries", count)
    store, pulled = bench.new_store("entries-store"), bench.work / "entries-pulled"
    rows = [Row(f"{count:>9,} entries: {what}") for what in ("push", "show --json", "resolve", "pull")]
    try:
        env = bench.home()
        rows[0].ours.append(bench.archive(env, store, "push", str(src), "big", "1.0.0"))
        rows[1].ours.append(bench.archive(env, store, "show", "big", "1.0.0", "--json"))
        rows[2].ours.append(bench.timed([bench.python, "-c", RESOLVE, str(store), "big"], env))
        rows[3].ours.append(bench.archive(bench.home(), store, "pull", "big", "1.0.0", "--to", str(pulled)))
        check_same_files(src, pulled)
    finally:
        remove(src, store, pulled)
    return rows


def check_same_files(src: Path, dst: Path) -> None:
    """The pull really wrote every file at its size (the ``.archive`` marker aside), untimed."""
    def listing(root: Path) -> dict[str, int]:
        found = {}
        for folder, dirs, files in os.walk(root):
            rel = os.path.relpath(folder, root)
            if rel == ".archive" or rel.startswith(".archive" + os.sep):
                continue
            for name in files:
                found[os.path.normpath(os.path.join(rel, name))] = os.stat(os.path.join(folder, name)).st_size
        return found

    if listing(src) != listing(dst):
        raise RuntimeError(f"{dst} does not hold the files of {src}")


def per_entry_lines(rows: list[Row]) -> list[str]:
    """Microseconds per entry of each command at each size: flat means linear growth."""
    lines = []
    for row in rows:
        count = int(row.label.split(" entries")[0].replace(",", ""))
        lines.append(f"{row.label:<44} {_median(row.ours) / count * 1e6:>9.1f} us/entry"
                     f" {_median_cpu(row.ours) / count * 1e6:>9.1f} us CPU/entry"
                     f" {_peak_mib(row.ours) * 1024 / count:>8.2f} KiB/entry")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (CI)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions of the small-file rows [3; quick: 1]")
    parser.add_argument("--entries", type=int, nargs="*", default=None, help="release sizes to time [10k 100k 1M]")
    parser.add_argument("--only", choices=["small", "entries"], default=None, help="run one part only")
    parser.add_argument("--scratch", type=Path, default=None, help="where data sets are made [a new folder in /tmp]")
    parser.add_argument("--prefault", type=float, default=None, metavar="GIB",
                        help="memory touched and freed before every timed command, as bench.run does [3; quick: 0.25]")
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose archive is measured")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> tuple[list[Row], list[Row]]:
    """Make the data sets, time them, remove them; return the small-file and the entry rows."""
    reps = args.repeat or (1 if args.quick else 3)
    entries = args.entries or (QUICK_ENTRIES if args.quick else FULL_ENTRIES)
    count, folders = (2_000, 20) if args.quick else (100_000, 1_000)
    if args.scratch:
        args.scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.scratch))
    try:
        prefault = args.prefault if args.prefault is not None else (0.25 if args.quick else 3.0)
        bench = Bench(work, args.python, int(prefault * 1024 ** 3))
        small = small_file_rows(bench, count, folders, reps) if args.only != "entries" else []
        large = [row for n in entries for row in entry_rows(bench, n)] if args.only != "small" else []
        return small, large
    finally:
        remove(work)


def print_rows(small: list[Row], large: list[Row]) -> None:
    print(f"{'workload':<44} {'archive s':>9} {'anchor s':>9} {'ratio':>8} {'CPU s (ours / anchor)':>15}"
          f" {'peak RSS':>11}  anchor")
    for row in small + large:
        print(row.line())
    if large:
        print("\n".join(per_entry_lines(large)))
    exact = "GNU time" if RSS_IS_EXACT else "an upper bound: no GNU time"
    print(f"ratio: archive seconds / anchor seconds (medians); CPU: user + system seconds of the command and"
          f" its children; peak RSS of the archive command ({exact});"
          f" load after: {os.getloadavg()[0]:.2f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("openssl") is None:
        raise SystemExit("bench.scale: openssl is not installed")
    compile_package(args.python)
    print(f"load before: {os.getloadavg()[0]:.2f}; scratch: {describe_filesystem(args.scratch or Path(tempfile.gettempdir()))}",
          flush=True)
    print_rows(*run(args))


if __name__ == "__main__":
    main()
