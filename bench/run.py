"""``python -m bench.run``: build the data sets, run every workload beside its anchor, report.

Prints the table (medians, ratios, targets, peak RSS) and writes it to the output folder as
``results.md`` and ``results.json``, plus ``throughput.png`` when matplotlib is installed.
``--quick`` shrinks every data set for CI; docs/performance.md describes each row.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from . import datasets, report
from .datasets import Sizes, describe_size
from .measure import RSS_IS_EXACT, compile_package, describe_filesystem
from .plot import plot_rows
from .report import Row, Target
from .workloads import (Context, find_cli, memory_rows, pull_cached_row, pull_cold_row, pull_new_folder_row,
                        push_rows, remove, resolve_rows, startup_rows)

logger = logging.getLogger("bench")
REPO = Path(__file__).resolve().parent.parent


def folder_suite(ctx: Context) -> list[Row]:
    """The issue's main data set: push three times, pull from the cache, pull with none."""
    sizes = ctx.sizes
    folder = datasets.make_random_folder(ctx.path("folder"), sizes.folder_files, sizes.folder_file_size)
    label = f"{describe_size(sizes.folder_bytes)} ({sizes.folder_files} files)"
    try:
        rows = push_rows(ctx, folder, "folder", label, derived=False, with_repeats=True)
        rows.append(pull_cached_row(ctx, folder, "folder", label, derived=False))
        rows.append(pull_cached_row(ctx, folder, "folder", label, derived=True, link="hard"))
        rows.append(pull_cold_row(ctx, folder, "folder", label, derived=False))
    finally:
        remove(folder)
    return rows


def single_file_suite(ctx: Context) -> list[Row]:
    """One big file: no parallelism across files can hide a second read of it."""
    folder = ctx.path("single")
    datasets.write_random_file(folder / "one.bin", ctx.sizes.single_file_size)
    return _push_and_pull(ctx, folder, "single", f"one {describe_size(ctx.sizes.single_file_size)} file",
                          pull_cold_row)


def small_files_suite(ctx: Context) -> list[Row]:
    """Many 4 KiB files: per-file costs (fsync, stat, open, threads) dominate here.

    Issue 14's targets: the push at most the durable anchor (``openssl`` + ``cp -r`` + ``sync``),
    the pull into a new folder at most 1.5x ``cp -r``, first with an empty user cache, then again.
    """
    sizes = ctx.sizes
    folder = datasets.make_random_folder(ctx.path("small"), sizes.small_files, sizes.small_file_size, 100)
    label = f"{sizes.small_files:,} files of {describe_size(sizes.small_file_size)}"
    pull_target = (Target("ratio_max", 1.5, "<= 1.5x"),)
    try:
        pushes = push_rows(ctx, folder, "small", label, derived=True, with_repeats=False)
        pushes[1] = replace(pushes[1], targets=(Target("ratio_max", 1.0, "<= 1.0x"),))
        return [*pushes,
                pull_new_folder_row(ctx, folder, "small", label, pull_target),
                replace(pull_cached_row(ctx, folder, "small", label, derived=True), targets=pull_target)]
    finally:
        remove(folder)


def _push_and_pull(ctx: Context, folder: Path, key: str, label: str, pull_row: Callable[..., Row]) -> list[Row]:
    """The push rows of a data set applied by analogy, one pull row, then the data set removed."""
    try:
        return [*push_rows(ctx, folder, key, label, derived=True, with_repeats=False),
                pull_row(ctx, folder, key, label, derived=True)]
    finally:
        remove(folder)


def memory_suite(ctx: Context) -> list[Row]:
    folder = ctx.path("big")
    datasets.write_random_file(folder / "big.bin", ctx.sizes.big_file_size)
    try:
        return memory_rows(ctx, folder)
    finally:
        remove(folder)


def sftp_suite(ctx: Context) -> list[Row]:
    """The SFTP rows, when ``bench/sftp.py`` exists (it is another module's to write)."""
    if importlib.util.find_spec("bench.sftp") is None:
        ctx.notes.append("no bench/sftp.py: SFTP workloads not run")
        return []
    workloads = getattr(importlib.import_module("bench.sftp"), "workloads", None)
    if workloads is None:
        ctx.notes.append("bench/sftp.py has no workloads(ctx) yet: run python -m bench.sftp on its own")
        return []
    return list(workloads(ctx))


SUITES: dict[str, Callable[[Context], list[Row]]] = {
    "folder": folder_suite, "resolve": resolve_rows, "startup": startup_rows, "memory": memory_suite,
    "single": single_file_suite, "small": small_files_suite, "sftp": sftp_suite,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data sets, one repetition (CI)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="where results go [bench/out]")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for data sets [a temp folder in /tmp]")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per workload [3, quick: 1]")
    parser.add_argument("--cold", action="store_true",
                        help="drop the page cache before every timed command (root only) [warm caches]")
    parser.add_argument("--prefault", type=float, default=None, metavar="GIB",
                        help="memory to touch and free before each data-moving command, 0 for none"
                        " [3, quick: 0.25]")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter whose archive is measured (its CLI is the script beside it)"
                        " [this one]")
    parser.add_argument("--commit", default=None,
                        help="the commit the measured archive was built from, for the table's heading"
                        " [this repository's HEAD]")
    parser.add_argument("--from-json", type=Path, default=None, metavar="RESULTS",
                        help="run nothing: draw the table and plot of a results.json again into --out")
    parser.add_argument("--only", nargs="+", choices=list(SUITES), default=list(SUITES),
                        help="run only these suites")
    return parser.parse_args(argv)


def make_context(args: argparse.Namespace, scratch: Path) -> Context:
    sizes: Sizes = datasets.QUICK if args.quick else datasets.FULL
    reps = args.reps or (1 if args.quick else 3)
    prefault = args.prefault if args.prefault is not None else 0.25 if args.quick else 3.0
    return Context(scratch=scratch, sizes=sizes, reps=reps, startup_reps=max(reps, 5 if args.quick else 10),
                   cold=args.cold, cli=find_cli(args.python), python=args.python,
                   prefault_bytes=int(prefault * datasets.GIB))


def describe_run(ctx: Context, args: argparse.Namespace) -> dict[str, object]:
    """What a reader needs to compare two tables: machine, versions, sizes, cache state."""
    package = _output([ctx.python, "-c", "import archive; print(archive.__file__)"], ctx.scratch)
    in_repo = package.startswith(str(REPO))
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "mode": "quick" if args.quick else "full",
        "repetitions": ctx.reps, "startup_repetitions": ctx.startup_reps,
        "page_cache": "dropped before every timed command" if ctx.cold else
        "warm (not dropped); dirty pages flushed with sync before every timed command",
        "prefault": f"{ctx.prefault_bytes / datasets.GIB:g} GiB touched and freed before every"
        " data-moving command" if ctx.prefault_bytes else "none",
        "sizes": vars(ctx.sizes), "cli": list(ctx.cli), "python": ctx.python,
        "archive_package": package,
        "cpu": _cpu_model(), "cores": os.cpu_count(), "filesystem": describe_filesystem(ctx.scratch), "openssl": _output(["openssl", "version"]),
        "commit": args.commit or _output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "archive_uncommitted_changes":
            bool(_output(["git", "-C", str(REPO), "status", "--porcelain", "--", "archive"])) if in_repo else None,
        "peak_rss": "the command's own, from GNU time" if RSS_IS_EXACT else
        "an upper bound (no /usr/bin/time): includes the bench process's own peak",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "notes": ctx.notes,
    }


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def _output(argv: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd).stdout.strip()
    except OSError:
        return ""


def write_results(rows: list[Row], meta: dict[str, object], out: Path) -> list[str]:
    """results.md, results.json and throughput.png in ``out``; return notes for the reader."""
    out.mkdir(parents=True, exist_ok=True)
    heading = f"{meta['mode']} run, {meta['date']}, commit {meta['commit']}, {meta['cpu']}, {meta['cores']} cores"
    footnote = "\n\n\\* not in the issue's table: the same target applied to another data set.\n"
    (out / "results.md").write_text(f"{heading}\n\n{report.render_markdown(rows)}{footnote}")
    (out / "results.json").write_text(json.dumps(report.to_json(rows, meta), indent=2) + "\n")
    note = plot_rows(rows, out / "throughput.png", heading)
    return [] if note is None else [note]


def redraw(source: Path, out: Path) -> int:
    """Write results.md, results.json and the plot of an earlier run again (new table code)."""
    document = json.loads(source.read_text())
    rows, meta = report.rows_from_json(document), document["meta"]
    notes = write_results(rows, meta, out)
    print_results(rows, meta, [*meta.get("notes", []), *notes], out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return redraw(args.from_json, args.out)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s", datefmt="%H:%M:%S")
    if args.scratch:
        args.scratch.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="archive-bench-", dir=args.scratch))
    ctx = make_context(args, scratch)
    compile_package(ctx.python, cwd=scratch)
    meta = describe_run(ctx, args)
    rows: list[Row] = []
    failed = []
    try:
        for name in (n for n in SUITES if n in args.only):
            logger.info("suite %s", name)
            try:
                rows += SUITES[name](ctx)
            except Exception as exc:  # one broken suite must not discard the others' results
                logger.exception("suite %s failed", name)
                failed.append(name)
                ctx.notes.append(f"suite {name} FAILED ({type(exc).__name__}: {exc}); its rows are missing")
    finally:
        if args.keep:
            logger.info("kept the scratch folder %s", scratch)
        else:
            remove(scratch)
    meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    notes = write_results(rows, meta, args.out)
    print_results(rows, meta, [*ctx.notes, *notes], args.out)
    return 1 if failed else 0


def print_results(rows: list[Row], meta: dict[str, object], notes: list[str], out: Path) -> None:
    """The table, which workloads missed their targets, and how the run was made."""
    print(report.render_text(rows))
    for group, names in report.summary(rows).items():
        print(f"{group}: {len(names)}" + (f" ({'; '.join(names)})" if names and group != "met" else ""))
    for note in [f"page cache: {meta['page_cache']}", f"prefault: {meta['prefault']}",
                 f"peak RSS: {meta['peak_rss']}", f"measured: {meta['archive_package']}", *notes]:
        print(f"note: {note}")
    print(f"results in {out}")


if __name__ == "__main__":
    sys.exit(main())
