"""S3 backend beside ``rclone copy``, on one S3-compatible server: ``python -m bench.s3 [--quick]``.

Starts the S3 server the tests use (:mod:`tests.s3d`: moto's server) on 127.0.0.1, then times, alternating
each archive command with the rclone command it competes with, ``--repeat`` times, each after
``sync`` and a prefault of memory as in ``bench.run``:

* push and pull of 1 GiB as 256 files of 4 MiB (16 MiB as 16 x 1 MiB with ``--quick``):
  ``archive push`` against ``rclone copy DIR remote:bucket/path``, and ``archive pull`` (into
  an empty cache, and with ``--no-cache``) against ``rclone copy remote:bucket/path DIR``;
* the same for 10,000 files of 4 KiB (200 with ``--quick``);
* the same for one file of 10 bytes: what each command costs before and around its first byte
  (start, imports, client, login, the release's record), which a Python command pays and a Go
  binary hardly does. Below the table, each row of the larger data sets is shown again less the
  start-up row's seconds on both sides: the ratio of the transfers themselves. That is a reading
  aid, not the target: the target is the row's own ratio.

Within a repetition rclone's commands run first in even repetitions and last in odd ones: on
this kind of machine the same command is slower or faster depending on what ran just before it.

Both sides are real commands in child processes, each opening its own connections, against
the same server in the same run, each into a bucket of its own, removed after each repetition
(moto scans every key of a bucket for each listing, which S3 does not); rclone runs with its defaults (4 transfers, 8 checkers), the
archive with its own (the backend's ``max_workers``). It prints median seconds, the ratio
(rclone seconds / archive seconds: above 1 means archive is faster), the archive command's
median CPU seconds (user + sys, steadier than wall time on a shared machine), its peak RSS, and
the server's CPU seconds during the archive command and during rclone's (moto runs on the same
machine: what it spends, the client cannot).
``--anchor TREE`` times a second archive source tree too (a ``git worktree`` of an earlier
commit), alternating with this one in the same run, so that a change is measured against the
code before it under the same load.

What each side checks: an archive push hashes every byte (sha256, the blob's name) and writes
a record, and its pull verifies the sha256 of every byte; rclone hashes each file it uploads
with MD5 (sent as ``Content-MD5``, checked by the server) and checks the MD5 of each download
against the object's ETag. Numbers vary by machine and with the server: they belong in
docs/performance.md, never in test asserts.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.datasets import KIB, MIB, make_random_folder
from bench.measure import RSS_IS_EXACT, Sample, compile_package, prefault_memory, run_timed

if TYPE_CHECKING:
    from tests.s3d import S3Server

REPO = Path(__file__).resolve().parents[1]
RCLONE_REMOTE = "benchs3"  # configured by environment variables only: no rclone.conf is written


@dataclass(frozen=True)
class DataSet:
    label: str
    count: int
    size: int


@dataclass
class Row:
    """One archive command beside the rclone command it competes with."""

    label: str
    ours: list[Sample] = field(default_factory=list)
    theirs: list[Sample] = field(default_factory=list)
    anchor: list[Sample] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # "ours"/"anchor" -> CPU seconds
    server_cpu: dict[str, list[float]] = field(default_factory=dict)  # "ours"/"anchor"/"rclone" -> moto's

    @property
    def ratio(self) -> float:
        """rclone's median seconds over the archive's: above 1, the archive is faster."""
        return _median(self.theirs) / _median(self.ours)

    def line(self) -> str:
        rss = max(s.max_rss_kib for s in self.ours) / 1024
        cpu = statistics.median(self.cpu["ours"])
        text = (f"{self.label:<48} {_median(self.ours):>9.2f} {_median(self.theirs):>9.2f} {self.ratio:>8.2f}x"
                f" {cpu:>7.2f} {rss:>7.0f} MiB {self.server('ours'):>7.2f} {self.server('rclone'):>7.2f}")
        if self.anchor:
            text += (f" | anchor {_median(self.anchor):.2f} s ({_median(self.theirs) / _median(self.anchor):.2f}x),"
                     f" cpu {statistics.median(self.cpu['anchor']):.2f}, srv cpu {self.server('anchor'):.2f}")
        return text

    def server(self, side: str) -> float:
        """The server's median CPU seconds during ``side``'s commands (nan if none)."""
        values = self.server_cpu.get(side)
        return statistics.median(values) if values else float("nan")

    def add(self, side: str, timed: tuple[Sample, float, float]) -> None:
        """Keep one archive command's sample, CPU seconds and the server's (``side``: "ours" or "anchor")."""
        getattr(self, side).append(timed[0])
        self.cpu.setdefault(side, []).append(timed[1])
        self.server_cpu.setdefault(side, []).append(timed[2])

    def add_rclone(self, timed: tuple[Sample, float]) -> None:
        """Keep one rclone command's sample and the server's CPU seconds during it."""
        self.theirs.append(timed[0])
        self.server_cpu.setdefault("rclone", []).append(timed[1])


def _median(samples: list[Sample]) -> float:
    return statistics.median(s.seconds for s in samples)


class Runner:
    """The commands under test, pointed at one server; a path is ``BUCKET/PREFIX``."""

    def __init__(self, server: "S3Server", env: dict[str, str], work: Path, jobs: int | None,
                 prefault_bytes: int = 0) -> None:
        self.server, self.endpoint, self.work, self.jobs = server, server.endpoint, work, jobs
        self.prefault_bytes = prefault_bytes
        self.env = {**env, "PYTHONPATH": str(REPO), **_rclone_env(server.endpoint, env)}

    def location(self, prefix: str) -> str:
        return f"s3://{prefix}?endpoint={self.endpoint}"

    def new_bucket(self) -> str:
        from tests.s3d import new_bucket

        return new_bucket(self.server)

    def drop_bucket(self, bucket: str) -> None:
        """Delete ``bucket`` and all it holds (moto keeps every object in memory)."""
        client = self.server.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=bucket)

    def archive(self, prefix: str, *args: str, cache: Path | None = None,
                tree: Path = REPO) -> tuple[Sample, float, float]:
        """Run the archive of source ``tree``: its sample, CPU seconds (user + sys), the server's."""
        env = {**self.env, "ARCHIVE_CACHE_DIR": str(cache or self.work / "cache"), "PYTHONPATH": str(tree)}
        jobs = ["--jobs", str(self.jobs)] if self.jobs else []
        argv = [sys.executable, "-m", "archive", "--no-progress", "-q", "--archive", self.location(prefix), *jobs, *args]
        self.settle()
        before, server = resource.getrusage(resource.RUSAGE_CHILDREN), self.server_seconds()
        sample = run_timed(argv, env=env, cwd=tree)  # python -m looks in the working folder first
        after, server = resource.getrusage(resource.RUSAGE_CHILDREN), self.server_seconds() - server
        return sample, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, server

    def server_seconds(self) -> float:
        """The CPU seconds (user + sys) the server process has spent so far."""
        fields = Path(f"/proc/{self.server.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def init(self, prefix: str, tree: Path = REPO) -> None:
        run_timed([sys.executable, "-m", "archive", "init", self.location(prefix)], env={**self.env, "PYTHONPATH": str(tree)},
                  cwd=tree)

    def rclone(self, source: str, target: str) -> tuple[Sample, float]:
        """Run ``rclone copy``: its sample and the server's CPU seconds during it."""
        self.settle()
        server = self.server_seconds()
        sample = run_timed(["rclone", "copy", "--config", "/dev/null", source, target], env=self.env)
        return sample, self.server_seconds() - server

    def settle(self) -> None:
        """Before every timed command, of either side: write back the dirty pages of the ones
        before it, and prefault memory (:func:`bench.measure.prefault_memory`). Without this a
        pull paid for the writeback of the gigabyte the previous pull had left dirty, so the
        side that ran later lost: ``pull --no-cache`` of 1 GiB took 4.2 s in the run, 1.8-1.9 s
        on its own."""
        os.sync()
        if self.prefault_bytes:
            prefault_memory(self.prefault_bytes)

    def remote(self, prefix: str) -> str:
        return f"{RCLONE_REMOTE}:{prefix}"

    def fresh(self, label: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.work))


def _rclone_env(endpoint: str, env: dict[str, str]) -> dict[str, str]:
    """rclone's remote ``benchs3``: the same server and credentials the archive gets."""
    prefix = f"RCLONE_CONFIG_{RCLONE_REMOTE.upper()}_"
    return {prefix + "TYPE": "s3", prefix + "PROVIDER": "Other", prefix + "ENDPOINT": endpoint,
            prefix + "ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
            prefix + "SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
            prefix + "REGION": env.get("AWS_DEFAULT_REGION", "us-east-1"), prefix + "FORCE_PATH_STYLE": "true"}


def bench_data_set(runner: Runner, data: DataSet, reps: int, anchor: Path | None = None) -> list[Row]:
    """Push, pull (empty cache) and pull --no-cache of ``data``, each beside rclone copy (and the
    ``anchor`` tree's archive, if given, in turns with this one: first one, then the other)."""
    src = make_random_folder(runner.work / "src", data.count, data.size, per_folder=100)
    rows = [Row(f"{data.label} push: archive push vs rclone copy"),
            Row(f"{data.label} pull: archive pull vs rclone copy"),
            Row(f"{data.label} pull: pull --no-cache vs rclone copy")]
    trees = [("ours", REPO)] + ([("anchor", anchor)] if anchor else [])
    try:
        for rep in range(reps):
            # each command gets a bucket of its own: moto scans every key of a bucket for each
            # listing, which S3 does not, so keys of other runs would slow the listings of both
            buckets = {side: runner.new_bucket() for side in ["rclone", *dict(trees)]}
            local = runner.fresh("local")
            try:
                if rep % 2 == 0:
                    _bench_rclone(runner, src, buckets["rclone"], local, rows)
                for side, tree in trees[rep % 2:] + trees[:rep % 2]:
                    _bench_archive(runner, src, f"{buckets[side]}/archive", local / side, rows, side, tree)
                if rep % 2 == 1:
                    _bench_rclone(runner, src, buckets["rclone"], local, rows)
                for side, _ in trees:
                    _same_files(src, local / "rclone", local / side / "pulled", local / side / "direct")
            finally:
                shutil.rmtree(local)
                for bucket in buckets.values():
                    runner.drop_bucket(bucket)
    finally:
        shutil.rmtree(src)
    return rows


def _bench_rclone(runner: Runner, src: Path, bucket: str, local: Path, rows: list[Row]) -> None:
    """rclone's push and pull (its one pull is the anchor of both archive pulls)."""
    rows[0].add_rclone(runner.rclone(str(src), runner.remote(f"{bucket}/data")))
    rows[1].add_rclone(runner.rclone(runner.remote(f"{bucket}/data"), str(local / "rclone")))
    rows[2].add_rclone((rows[1].theirs[-1], rows[1].server_cpu["rclone"][-1]))


def _bench_archive(runner: Runner, src: Path, prefix: str, local: Path, rows: list[Row], side: str,
                   tree: Path) -> None:
    """Push, pull and pull --no-cache with the archive of ``tree`` into a fresh prefix."""
    runner.init(prefix, tree)
    rows[0].add(side, runner.archive(prefix, "push", str(src), "bench", "1.0.0", tree=tree))
    rows[1].add(side, runner.archive(prefix, "pull", "bench", "1.0.0", "--to", str(local / "pulled"),
                                     cache=local / "cache", tree=tree))
    rows[2].add(side, runner.archive(prefix, "pull", "bench", "1.0.0", "--no-cache", "--to", str(local / "direct"),
                                     cache=local / "cache2", tree=tree))


def _same_files(src: Path, *copies: Path) -> None:
    """Both sides really moved every file (names and sizes; the archive's own ``.archive/`` aside):
    a benchmark of a broken copy judges nothing."""
    def listing(root: Path) -> list[tuple[str, int]]:
        return sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*")
                      if p.is_file() and p.relative_to(root).parts[0] != ".archive")

    expected = listing(src)
    for copy in copies:
        found = listing(copy)
        if found != expected:
            raise RuntimeError(f"{copy}: {len(found)} files, expected {len(expected)} (or sizes differ)")


STARTUP = DataSet("1 x 10 B (start-up)", 1, 10)


def data_sets(quick: bool, only: str | None = None) -> list[DataSet]:
    """The data sets to run: ``only`` "large" or "small" keeps that one and the start-up set."""
    if quick:
        large, small = DataSet("16 x 1 MiB", 16, 1 * MIB), DataSet("200 x 4 KiB", 200, 4 * KIB)
    else:
        large, small = DataSet("256 x 4 MiB (1 GiB)", 256, 4 * MIB), DataSet("10,000 x 4 KiB", 10_000, 4 * KIB)
    return [STARTUP] + ([large] if only != "small" else []) + ([small] if only != "large" else [])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.s3", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB and 200 files (a smoke run)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions, medians shown [3; quick: 1]")
    parser.add_argument("--jobs", type=int, default=None, help="the archive's parallel transfers [its default]")
    parser.add_argument("--only", choices=["large", "small"], default=None,
                        help="run one data set only (and the start-up set)")
    parser.add_argument("--prefault", type=float, default=None, metavar="GIB",
                        help="memory touched and freed before every timed command [3; quick: 0.25] (see bench.run)")
    parser.add_argument("--anchor", type=Path, default=None,
                        help="also time the archive of this source tree (e.g. a git worktree of an earlier commit)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> list[Row]:
    """Start the server, run the chosen data sets against one fresh bucket, stop the server."""
    from tests.s3d import start_s3_server, stop_s3_server

    reps = args.repeat or (1 if args.quick else 3)
    chosen = data_sets(args.quick, args.only)
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        work = Path(tmp)
        server = start_s3_server(work / "server")
        try:
            # a plain-HTTP server on loopback: a CA bundle set for the machine does not apply (and
            # rclone refuses to start with AWS_CA_BUNDLE set on its transport)
            env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
            env.update(server.env(), AWS_EC2_METADATA_DISABLED="true",
                       AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull)
            prefault = args.prefault if args.prefault is not None else (0.25 if args.quick else 3.0)
            runner = Runner(server, env, work, args.jobs, int(prefault * 1024 ** 3))
            return [row for data in chosen for row in bench_data_set(runner, data, reps, args.anchor)]
        finally:
            stop_s3_server(server)


def print_rows(rows: list[Row]) -> None:
    print(f"{'workload':<48} {'archive s':>9} {'rclone s':>9} {'ratio':>9} {'arc CPU':>7} {'arc RSS':>11}"
          f" {'srv CPU':>7} {'srv/rcl':>7}")
    for row in rows:
        print(row.line())
    startup = [row for row in rows if row.label.startswith(STARTUP.label)]
    for row in rows:
        if startup and row not in startup:
            print(less_startup(row, startup[rows.index(row) % len(startup)]))
    exact = "GNU time" if RSS_IS_EXACT else "an upper bound: no GNU time"
    print(f"ratio: rclone seconds / archive seconds (above 1: archive faster); arc CPU: user + sys seconds;"
          f" arc RSS: peak of the archive command ({exact}); srv CPU, srv/rcl: the server's CPU seconds during"
          f" the archive command, during rclone's; load after: {os.getloadavg()[0]:.2f}")


def less_startup(row: Row, startup: Row) -> str:
    """``row`` less the start-up row of the same command, on both sides: the transfers' own ratio."""
    ours = _median(row.ours) - _median(startup.ours)
    theirs = _median(row.theirs) - _median(startup.theirs)
    ratio = theirs / ours if ours > 0 else float("nan")
    return f"  {row.label}, less the start-up row: archive {ours:.2f} s, rclone {theirs:.2f} s, ratio {ratio:.2f}x"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("rclone") is None:
        raise SystemExit("bench.s3: rclone is not installed (Debian package rclone)")
    for tree in [REPO] + ([args.anchor] if args.anchor else []):
        compile_package(sys.executable, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    print_rows(run(args))


if __name__ == "__main__":
    main()
