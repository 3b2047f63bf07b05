"""SFTP backend against OpenSSH on loopback: ``python -m bench.sftp [--quick]``.

Starts a private sshd on 127.0.0.1 (as the tests do), then times, alternating each archive
command with the OpenSSH command it competes with, ``--repeat`` times:

* push and pull of one large file (1 GiB; 64 MiB with ``--quick``): ``archive push`` and
  ``archive pull`` (the real command, into an empty cache) against OpenSSH ``sftp`` put/get
  and ``scp``;
* the raw backend primitives (``write_key``/``open_key``) on the same file: what the backend
  costs without publish's hashing pass and download's copy out of the cache;
* push and pull of many 4 KiB files (10,000; 1,000 with ``--quick``) against ``scp -r``;
* push and pull of a folder of large files (64 x 4 MiB; 16 with ``--quick``) against ``scp -r``:
  the target of issue 14 (each byte hashed once and copied as little as possible).

Each push is also set beside ``scp -r`` followed by ``sync -f`` of the server's filesystem (the
server is this machine): ``scp`` leaves its data in the server's page cache, a push leaves every
blob on disk before the release names it, and that row shows what the durability costs.

Every archive command opens its own connections and closes them, as the OpenSSH commands do. It prints median seconds, the speed ratio (OpenSSH seconds / archive
seconds: above 1 means archive is faster) and the CPU seconds each side burnt in all processes
(this one, its children such as ``ssh``, and the sshd's session processes): on a shared
machine the CPU figure is steadier than the clock. Then the peak memory of the ``archive``
processes (measured with GNU time, as ``bench.measure`` does).
Numbers vary by machine: they belong in docs/performance.md, never in test asserts.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import archive
from archive.backends.sftp_conn import TRANSPORT_ENV
from bench.measure import RSS_IS_EXACT, compile_package, run_timed
from tests.sshd import SSHServer, start_sshd, stop_process

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
SETTLE_SECONDS = 0.3  # for sshd to reap a finished session, so its CPU time is counted


def make_big_file(path: Path, size: int) -> Path:
    """A file of random-looking bytes, written in 1 MiB chunks (memory stays flat)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MIB)
    with open(path, "wb") as out:
        for i in range(size // MIB):
            out.write(block[i % 251:] + block[:i % 251])
    return path


def make_small_files(folder: Path, count: int, size: int = 4096) -> Path:
    """``count`` distinct files of ``size`` bytes in 100-file folders."""
    for i in range(count):
        path = folder / f"d{i // 100:03d}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(i.to_bytes(8, "big") + os.urandom(size - 8))
    return folder


@dataclass(frozen=True)
class Sample:
    seconds: float
    cpu: float
    rss_kib: int = 0  # peak RSS of the archive process, where one ran


@dataclass
class Row:
    """One archive workload beside the OpenSSH command it competes with."""

    label: str
    ours: list[Sample] = field(default_factory=list)
    theirs: list[Sample] = field(default_factory=list)

    def line(self) -> str:
        ours, theirs = (statistics.median(s.seconds for s in side) for side in (self.ours, self.theirs))
        cpu_ours, cpu_theirs = (statistics.median(s.cpu for s in side) for side in (self.ours, self.theirs))
        rss = max(s.rss_kib for s in self.ours) / 1024
        return (f"{self.label:<48} {ours:>9.2f} {theirs:>9.2f} {theirs / ours:>9.2f}x"
                f" {cpu_ours:>9.2f} {cpu_theirs:>9.2f} {f'{rss:.0f} MiB' if rss else '-':>9}")


class Bench:
    """The sshd, the OpenSSH commands, and a meter of every process's CPU time."""

    def __init__(self, server: SSHServer, sshd_pid: int, work: Path) -> None:
        self.server, self.work, self._sshd_pid = server, work, sshd_pid
        self.options = ["-F", "/dev/null", "-i", str(server.client_key), "-o", "BatchMode=yes",
                        "-o", f"UserKnownHostsFile={work / 'home' / '.ssh' / 'known_hosts'}",
                        "-o", "StrictHostKeyChecking=yes", "-P", str(server.port)]
        self.login = f"{server.user}@{server.host}"

    def sftp(self, *commands: str) -> None:
        subprocess.run(["sftp", "-q", "-b", "-", *self.options, self.login], input="\n".join(commands) + "\n",
                       text=True, check=True, capture_output=True)

    def scp(self, *args: str) -> None:
        subprocess.run(["scp", "-q", *self.options, *args], check=True, capture_output=True)

    def remote(self, path: Path) -> str:
        return f"{self.login}:{path}"

    def fresh(self, label: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.work))

    def measure(self, action: Callable[[], object], cli: "ArchiveCLI | None" = None) -> Sample:
        """Wall and CPU seconds of ``action``, after flushing dirty pages of earlier steps; with
        ``cli``, the peak RSS of the archive command that ``action`` ran."""
        os.sync()
        cpu = self._cpu()
        start = time.perf_counter()
        action()
        seconds = time.perf_counter() - start
        time.sleep(SETTLE_SECONDS)
        return Sample(seconds, self._cpu() - cpu, cli.last_rss_kib if cli else 0)

    def _cpu(self) -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        fields = Path(f"/proc/{self._sshd_pid}/stat").read_text().rsplit(")", 1)[1].split()
        sessions = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + sessions


class ArchiveCLI:
    """The real ``archive`` command in a child process, as a user runs it; its peak RSS is kept."""

    def __init__(self, home: Path, jobs: int | None, repo: Path = REPO, suffix: str = "") -> None:
        self.home, self.jobs, self.repo = home, jobs, repo
        compile_package(sys.executable, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
        self.suffix = suffix  # after the labels of this command's rows: " [anchor]" for --anchor's tree
        self.last_rss_kib = 0  # the peak RSS of the last command
        self.pushes = 0

    def push(self, url: str, folder: Path) -> None:
        """A first publish of ``folder``: in a user cache of its own, empty. With one shared
        cache every push after the first took another path (the stat cache knew the files, so
        they were checked for on the server and streamed unhashed) and the rows mixed the two."""
        self.pushes += 1
        cache = Path(tempfile.mkdtemp(prefix=f"push{self.pushes}-", dir=self.home))
        try:
            self._run(url, cache, "push", str(folder), "bench", "1.0.0")
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    def pull(self, url: str, dest: Path, cache: Path, *options: str) -> None:
        self._run(url, cache, "pull", "bench", "1.0.0", "--to", str(dest), *options)

    def _run(self, url: str, cache: Path, *args: str) -> None:
        env = {**os.environ, "ARCHIVE_CACHE_DIR": str(cache), "PYTHONPATH": str(self.repo)}
        jobs = ["--jobs", str(self.jobs)] if self.jobs else []
        sample = run_timed([sys.executable, "-m", "archive", "--no-progress", "-q", "--archive", url, *jobs, *args],
                           env=env, cwd=self.repo)  # `-m archive` imports from the working folder first
        self.last_rss_kib = sample.max_rss_kib


def write_raw(url: str, src: Path) -> None:
    with archive.get_interface(url) as arc:
        arc.write_key("bench/raw", _file_chunks(src))


def read_raw(url: str) -> None:
    with archive.get_interface(url) as arc, arc.open_key("bench/raw") as stream:
        while stream.read(MIB):
            pass


def bench_large(bench: Bench, cli: ArchiveCLI, size: int, reps: int) -> list[Row]:
    """Push and pull of one large file: archive vs OpenSSH sftp and scp, and the raw primitives."""
    src = make_big_file(bench.work / "big" / "data.bin", size)
    rows = [Row(label) for label in ("large push: publish vs sftp put", "large push: publish vs scp",
                                     "large pull: download vs sftp get", "large pull: download vs scp",
                                     "large pull: --no-cache vs sftp get",
                                     "large push: write_key vs sftp put", "large pull: open_key vs sftp get")]
    for _ in range(reps):
        remote, local = bench.fresh("remote"), bench.fresh("local")
        url = bench.server.url(remote / "store")
        archive.get_interface(url, create=True).close()
        put = bench.measure(lambda: bench.sftp(f"put {src} {remote}/sftp.bin"))
        get = bench.measure(lambda: bench.sftp(f"get {remote}/sftp.bin {local}/sftp.bin"))
        scp_put = bench.measure(lambda: bench.scp(str(src), bench.remote(remote / "scp.bin")))
        scp_get = bench.measure(lambda: bench.scp(bench.remote(remote / "scp.bin"), str(local / "scp.bin")))
        ours_push = bench.measure(lambda: cli.push(url, src.parent), cli)
        ours_pull = bench.measure(lambda: cli.pull(url, local / "pulled", local / "cache"), cli)
        ours_direct = bench.measure(lambda: cli.pull(url, local / "direct", local / "cache2", "--no-cache"), cli)
        ours_write = bench.measure(lambda: write_raw(url, src))
        ours_read = bench.measure(lambda: read_raw(url))
        for row, ours, theirs in zip(rows, (ours_push, ours_push, ours_pull, ours_pull, ours_direct, ours_write,
                                            ours_read), (put, scp_put, get, scp_get, get, put, get)):
            row.ours.append(ours)
            row.theirs.append(theirs)
        shutil.rmtree(remote)
        shutil.rmtree(local)
    return rows


def bench_small(bench: Bench, clis: list[ArchiveCLI], count: int, reps: int) -> list[Row]:
    """Push and pull of many small files: archive publish/download vs ``scp -r``."""
    src = make_small_files(bench.work / "small", count)
    return push_and_pull_rows(bench, clis, src, f"{count:,} x 4 KiB", reps, through_cache=True)


def push_and_pull_rows(bench: Bench, clis: list[ArchiveCLI], src: Path, label: str, reps: int, *,
                       through_cache: bool) -> list[Row]:
    """Push ``src`` and pull it back, each beside ``scp -r`` the same way, ``reps`` times: a pull
    with ``--no-cache`` always, and (``through_cache``) one through an empty cache as well. Each
    command of ``clis`` (this tree, and the ``--anchor`` tree) runs in turn, into its own archive."""
    rows: list[Row] = []
    for cli in clis:
        rows += [Row(f"{label} push: publish vs scp -r{cli.suffix}"),
                 Row(f"{label} push: publish vs scp -r + sync{cli.suffix}"),
                 *([Row(f"{label} pull: download vs scp -r{cli.suffix}")] if through_cache else []),
                 Row(f"{label} pull: --no-cache vs scp -r{cli.suffix}")]
    per_cli = len(rows) // len(clis)
    for rep in range(reps):
        remote, local = bench.fresh("remote"), bench.fresh("local")
        scp_push, scp_synced = scp_then_sync(bench, src, remote / "scp")
        scp_back = bench.measure(lambda: bench.scp("-r", bench.remote(remote / "scp"), str(local / "scp")))
        for n, cli in (list(enumerate(clis)) if rep % 2 == 0 else list(enumerate(clis))[::-1]):  # alternated
            url = bench.server.url(remote / f"store{n}")
            archive.get_interface(url, create=True).close()
            mine = iter(rows[n * per_cli:(n + 1) * per_cli])
            pushed = bench.measure(lambda: cli.push(url, src), cli)
            _add(next(mine), pushed, scp_push)
            _add(next(mine), pushed, scp_synced)
            if through_cache:
                _add(next(mine), bench.measure(lambda: cli.pull(url, local / f"pulled{n}", local / f"cache{n}"), cli),
                     scp_back)
            _add(next(mine), bench.measure(lambda: cli.pull(url, local / f"direct{n}", local / f"cache{n}b",
                                                            "--no-cache"), cli), scp_back)
        shutil.rmtree(remote)
        shutil.rmtree(local)
    return rows


def scp_then_sync(bench: Bench, src: Path, target: Path) -> tuple[Sample, Sample]:
    """``scp -r`` of ``src`` to the server's ``target``: timed alone, and with a ``sync -f`` of
    the server's filesystem after it (the server is this machine), so that its data is on disk
    as a push leaves its blobs. The first is the issue's anchor; the second gives ``scp`` the
    durability the push pays for (as ``bench.run``'s durable anchor does for a folder)."""
    synced: list[float] = []

    def copy_then_sync() -> None:
        bench.scp("-r", str(src), bench.remote(target))
        start = time.perf_counter()
        subprocess.run(["sync", "-f", str(target)], check=True)
        synced.append(time.perf_counter() - start)

    both = bench.measure(copy_then_sync)
    return Sample(both.seconds - synced[0], both.cpu), both


def _add(row: Row, ours: Sample, theirs: Sample) -> None:
    row.ours.append(ours)
    row.theirs.append(theirs)


def make_large_files(folder: Path, count: int, size: int) -> Path:
    """``count`` distinct files of ``size`` bytes (a shared random block, each with its own head)."""
    folder.mkdir(parents=True, exist_ok=True)
    block = os.urandom(size)
    for i in range(count):
        (folder / f"f{i:03d}.bin").write_bytes(i.to_bytes(8, "big") + block[8:])
    return folder


def bench_many_large(bench: Bench, clis: list[ArchiveCLI], count: int, size: int, reps: int) -> list[Row]:
    """Push and pull of a folder of large files: archive publish/download vs ``scp -r``."""
    src = make_large_files(bench.work / "many", count, size)
    return push_and_pull_rows(bench, clis, src, f"{count} x {size // MIB} MiB", reps, through_cache=False)


def _file_chunks(path: Path):
    with open(path, "rb") as stream:
        while chunk := stream.read(MIB):
            yield chunk


def setup_home(server: SSHServer, home: Path) -> None:
    """A ``$HOME`` whose known_hosts trusts the bench server and whose default key it accepts."""
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "known_hosts").write_text(server.host_key_line + "\n")
    shutil.copy(server.client_key, home / ".ssh" / "id_ed25519")
    os.environ["HOME"] = str(home)
    os.environ.pop("SSH_AUTH_SOCK", None)
    os.environ["ARCHIVE_CACHE_DIR"] = str(home / "cache")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sftp", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB and 1,000 files instead of 1 GiB and 10,000")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions, medians shown [3; quick: 1]")
    parser.add_argument("--transport", choices=["auto", "ssh", "paramiko"], default="auto",
                        help=f"the archive's SSH transport (sets ${TRANSPORT_ENV}) [auto: ssh]")
    parser.add_argument("--jobs", type=int, default=None, help="parallel transfers for the small files")
    parser.add_argument("--size-mib", type=int, default=None, help="size of the large file")
    parser.add_argument("--files", type=int, default=None, help="number of small files")
    parser.add_argument("--large-files", type=int, default=None, help="number of 4 MiB files in the folder rows")
    parser.add_argument("--anchor", type=Path, default=None,
                        help="another checkout (e.g. of main) whose archive command runs too, alternated, in the"
                             " folder rows (many small files, many large ones), rows marked [anchor]")
    parser.add_argument("--only", choices=["large", "small", "many"], default=None,
                        help="run one part only: one large file, many small files, a folder of large files")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    size, count = (64 * MIB, 1000) if args.quick else (1024 * MIB, 10_000)
    size, count = (args.size_mib * MIB if args.size_mib else size), (args.files or count)
    reps = args.repeat or (1 if args.quick else 3)
    os.environ[TRANSPORT_ENV] = args.transport
    print(f"load before: {os.getloadavg()[0]:.2f}; transport {args.transport}; {reps} repetition(s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-sftp-") as tmp:
        work = Path(tmp)
        (work / "sshd").mkdir()
        proc, server = start_sshd(work / "sshd")
        try:
            setup_home(server, work / "home")
            bench, cli = Bench(server, proc.pid, work), ArchiveCLI(work / "home", args.jobs)
            clis = [cli] + ([ArchiveCLI(work / "home", args.jobs, args.anchor.resolve(), " [anchor]")]
                            if args.anchor else [])
            rows = bench_large(bench, cli, size, reps) if args.only in (None, "large") else []
            rows += bench_small(bench, clis, count, reps) if args.only in (None, "small") else []
            many = args.large_files or (16 if args.quick else 64)
            rows += bench_many_large(bench, clis, many, 4 * MIB, reps) if args.only in (None, "many") else []
        finally:
            stop_process(proc)
    print(f"{'workload':<48} {'archive s':>9} {'OpenSSH s':>9} {'speed':>10} {'arc cpu s':>9} {'ssh cpu s':>9}"
          f" {'arc RSS':>9}")
    for row in rows:
        print(row.line())
    exact = "GNU time" if RSS_IS_EXACT else "an upper bound: no GNU time"
    print(f"arc RSS: peak of the archive command ({exact}); this process, which ran the raw primitives:"
          f" {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
