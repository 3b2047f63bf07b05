"""SFTP backend against OpenSSH on loopback: ``python -m bench.sftp [--quick]``.

Starts a private sshd on 127.0.0.1 (as the tests do), then times, in one run:

* push and pull of one large file (1 GiB; 64 MiB with ``--quick``): ``archive`` publish and
  download against OpenSSH ``sftp`` put/get and ``scp``;
* push of many 4 KiB files (10,000; 1,000 with ``--quick``): ``archive`` publish against
  ``scp -r``;
* the raw backend primitives (``write_key``/``open_key``) on the large file, which is what the
  backend itself costs without publish's hashing and download's cache.

It prints seconds and the ratio archive/OpenSSH (speed: >1 means archive is faster), and the
peak memory of this process. Numbers vary by machine: they belong in docs/performance.md, never
in test asserts.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import archive
from tests.sshd import SSHServer, start_sshd, stop_process

MIB = 1024 * 1024


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


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


class OpenSSH:
    """Runs the system ``sftp`` and ``scp`` against the bench server, isolated from ~/.ssh."""

    def __init__(self, server: SSHServer, home: Path) -> None:
        self.server = server
        self.options = ["-F", "/dev/null", "-i", str(server.client_key), "-o", "BatchMode=yes",
                        "-o", f"UserKnownHostsFile={home / '.ssh' / 'known_hosts'}",
                        "-o", "StrictHostKeyChecking=yes", "-P", str(server.port)]
        self.login = f"{server.user}@{server.host}"

    def sftp(self, *commands: str) -> None:
        subprocess.run(["sftp", "-q", "-b", "-", *self.options, self.login], input="\n".join(commands) + "\n",
                       text=True, check=True, capture_output=True)

    def scp(self, *args: str) -> None:
        subprocess.run(["scp", "-q", *self.options, *args], check=True, capture_output=True)

    def remote(self, path: Path) -> str:
        return f"{self.login}:{path}"


def setup_home(server: SSHServer, home: Path) -> None:
    """A ``$HOME`` whose known_hosts trusts the bench server and whose default key it accepts."""
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "known_hosts").write_text(server.host_key_line + "\n")
    shutil.copy(server.client_key, home / ".ssh" / "id_ed25519")
    os.environ["HOME"] = str(home)
    os.environ.pop("SSH_AUTH_SOCK", None)
    os.environ["ARCHIVE_CACHE_DIR"] = str(home / "cache")


def bench_large(server: SSHServer, ssh: OpenSSH, work: Path, size: int) -> list[tuple[str, float, float]]:
    """Push and pull of one large file: archive vs OpenSSH sftp and scp."""
    src = make_big_file(work / "big" / "data.bin", size)
    remote = work / "remote"
    remote.mkdir()
    rows = []
    t_sftp_put = timed(lambda: ssh.sftp(f"put {src} {remote}/sftp.bin"))
    t_scp_put = timed(lambda: ssh.scp(str(src), ssh.remote(remote / "scp.bin")))
    t_sftp_get = timed(lambda: ssh.sftp(f"get {remote}/sftp.bin {work}/sftp-get.bin"))
    t_scp_get = timed(lambda: ssh.scp(ssh.remote(remote / "scp.bin"), str(work / "scp-get.bin")))
    with archive.get_interface(server.url(remote / "store"), create=True) as arc:
        t_push = timed(lambda: arc.publish(src.parent, "big", "1.0.0", progress=False))
        t_pull = timed(lambda: arc.download("big", "*", work / "pulled", progress=False))
        t_write = timed(lambda: arc.write_key("bench/raw", _file_chunks(src)))
        t_read = timed(lambda: _drain(arc, "bench/raw"))
    rows.append(("large push: publish vs sftp put", t_push, t_sftp_put))
    rows.append(("large push: publish vs scp", t_push, t_scp_put))
    rows.append(("large pull: download vs sftp get", t_pull, t_sftp_get))
    rows.append(("large pull: download vs scp", t_pull, t_scp_get))
    rows.append(("large push: write_key vs sftp put", t_write, t_sftp_put))
    rows.append(("large pull: open_key vs sftp get", t_read, t_sftp_get))
    return rows


def bench_small(server: SSHServer, ssh: OpenSSH, work: Path, count: int, jobs: int | None) -> list[tuple[str, float, float]]:
    """Push of many small files: archive publish vs ``scp -r``."""
    src = make_small_files(work / "small", count)
    remote = work / "remote-small"
    remote.mkdir()
    t_scp = timed(lambda: ssh.scp("-r", str(src), ssh.remote(remote / "scp")))
    with archive.get_interface(server.url(remote / "store"), create=True) as arc:
        t_push = timed(lambda: arc.publish(src, "small", "1.0.0", jobs=jobs, progress=False))
    return [(f"{count} x 4 KiB push: publish vs scp -r", t_push, t_scp)]


def _file_chunks(path: Path):
    with open(path, "rb") as stream:
        while chunk := stream.read(MIB):
            yield chunk


def _drain(arc: archive.ArchiveInterface, key: str) -> None:
    with arc.open_key(key) as stream:
        while stream.read(MIB):
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sftp", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB and 1,000 files instead of 1 GiB and 10,000")
    parser.add_argument("--jobs", type=int, default=None, help="parallel transfers for the small files")
    parser.add_argument("--size-mib", type=int, default=None, help="size of the large file")
    parser.add_argument("--files", type=int, default=None, help="number of small files")
    args = parser.parse_args(argv)
    size, count = (64 * MIB, 1000) if args.quick else (1024 * MIB, 10_000)
    size, count = (args.size_mib * MIB if args.size_mib else size), (args.files or count)
    with tempfile.TemporaryDirectory(prefix="bench-sftp-") as tmp:
        work = Path(tmp)
        (work / "sshd").mkdir()
        proc, server = start_sshd(work / "sshd")
        try:
            setup_home(server, work / "home")
            ssh = OpenSSH(server, work / "home")
            rows = bench_large(server, ssh, work, size) + bench_small(server, ssh, work, count, args.jobs)
        finally:
            stop_process(proc)
    print(f"{'workload':<40} {'archive s':>10} {'OpenSSH s':>10} {'speed ratio':>12}")
    for label, ours, theirs in rows:
        print(f"{label:<40} {ours:>10.2f} {theirs:>10.2f} {theirs / ours:>11.2f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
