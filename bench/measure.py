"""Running one command and measuring it: wall time and the process's own peak RSS.

Every workload runs as a subprocess of the real CLI, so interpreter start-up and imports are
counted the way a user pays for them.

Peak RSS needs care. ``getrusage(RUSAGE_CHILDREN)`` gives the maximum over every child so far,
and even ``os.wait4`` on one child is floored at this process's own peak: Linux carries the
high-water mark of the forked (or vforked) parent image across ``exec``. GNU time forks the
command from its own small image, so ``/usr/bin/time -f %M`` reports the command's own peak;
without it the number is an upper bound and :data:`RSS_IS_EXACT` says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

STDERR_TAIL = 2000
GNU_TIME = "/usr/bin/time"
RSS_IS_EXACT = os.access(GNU_TIME, os.X_OK)


@dataclass(frozen=True)
class Sample:
    """One timed run: wall seconds and peak resident memory in KiB (Linux ``ru_maxrss``)."""

    seconds: float
    max_rss_kib: int


class CommandFailed(RuntimeError):
    """A measured command exited non-zero; the benchmark stops rather than time an error."""

    def __init__(self, argv: Sequence[str], code: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)} exited {code}: {stderr.strip()[-STDERR_TAIL:]}")
        self.argv = list(argv)
        self.code = code


def run_timed(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> Sample:
    """Run ``argv`` to completion with output discarded; return its time and peak RSS.

    Raises
    ------
    CommandFailed
        The command exited with a non-zero status (its stderr tail is in the message).
    """
    fd, rss_name = tempfile.mkstemp(prefix="bench-rss-")
    os.close(fd)
    wrapped = [GNU_TIME, "-f", "%M", "-o", rss_name, *argv] if RSS_IS_EXACT else list(argv)
    try:
        with tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, env=None if env is None else dict(env), cwd=cwd)
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                err.seek(0)
                raise CommandFailed(argv, proc.returncode, err.read().decode("utf-8", "replace"))
        rss = parse_time_rss(Path(rss_name).read_text()) if RSS_IS_EXACT else usage.ru_maxrss
    finally:
        os.unlink(rss_name)
    return Sample(seconds, rss)


def compile_package(python: str, *, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> None:
    """Write the bytecode of the ``archive`` package that ``python`` imports (from ``cwd``, with
    ``env``), as installing it does. Where bytecode is never written on import
    (``PYTHONDONTWRITEBYTECODE``, a read-only tree) every command would otherwise compile again
    each module changed since its last ``.pyc``, and time that as part of the command."""
    script = "import archive, compileall, os, sys; sys.exit(not compileall.compile_dir(os.path.dirname(archive.__file__), quiet=2))"
    done = subprocess.run([python, "-c", script], cwd=cwd, env=None if env is None else dict(env),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise CommandFailed([python, "-c", "compileall archive"], done.returncode, done.stderr + done.stdout)


def parse_time_rss(text: str) -> int:
    """The ``%M`` value (KiB) that GNU time wrote: its last line, after any status line.

    >>> parse_time_rss("Command exited with non-zero status 1\\n5120\\n")
    5120
    """
    return int(text.strip().splitlines()[-1])


def run_sequence(commands: Sequence[Sequence[str]], *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> Sample:
    """Run commands one after another, as a person would type them; sum their times."""
    samples = [run_timed(argv, env=env, cwd=cwd) for argv in commands]
    return Sample(sum(s.seconds for s in samples), max(s.max_rss_kib for s in samples))


def drop_page_cache() -> bool:
    """Write back dirty pages and drop the page cache; False where that is not allowed.

    Only root may write ``/proc/sys/vm/drop_caches`` (and not in every container), so the
    benchmark asks for it only with ``--cold`` and says in its output which case it ran.
    """
    if os.geteuid() != 0:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")
    except OSError:
        return False
    return True


PREFAULT_SCRIPT = """
import mmap, sys
size = int(sys.argv[1])
memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
zeros = bytes(1 << 20)
for _ in range(size >> 20):
    memory.write(zeros)
memory.close()
"""


def prefault_memory(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory in a child process, then free it.

    On a VM whose host takes back the guest's free pages (free page reporting, ballooning),
    the first touch of such a page costs a fault on the host: writing 1 GiB into the page
    cache took 0.3 s right after this and 1.2 to 2.9 s without it, on the same machine,
    minutes apart. Both sides of a comparison write, so left alone this noise decides
    ratios. Just-freed pages stay backed for a few seconds, long enough for the next command.
    A child does the touching, so the bench's own peak RSS stays small.
    """
    subprocess.run([sys.executable, "-c", PREFAULT_SCRIPT, str(nbytes)], check=True)


def describe_filesystem(path: Path) -> str:
    """The file system under ``path`` and, for ext4, whether it keeps a journal.

    It matters for every row with many files: ext4 without a journal will not reuse an inode
    freed in the last few seconds (minutes while its table block is dirty) and checks each
    candidate on the way, so after a benchmark deletes 100,000 files, every new file costs a
    walk past them. On this machine's root file system (no journal) ``cp -r`` of 20,000 small
    files took 2.7 s, then 6.2, 11.1, 17.6 and 20.5 s on the next runs, and 0.6-0.75 s every time
    on a journaled ext4 (perf: ``recently_deleted`` in ``find_inode_bit``).
    """
    mount = _mount_of(Path(path).resolve())
    if mount is None:
        return "unknown file system"
    device, point, kind = mount
    text = f"{kind} on {device} at {point}"
    if kind == "ext4":
        name = Path(device).name
        jbd2 = Path("/proc/fs/jbd2")
        journaled = jbd2.is_dir() and any(entry.name.startswith(f"{name}-") for entry in jbd2.iterdir())
        text += ", journaled" if journaled else ", NO journal: new files slow down after mass deletes"
    return text


def _mount_of(path: Path) -> tuple[str, str, str] | None:
    """(device, mount point, type) of the deepest mount in ``/proc/mounts`` holding ``path``."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best: tuple[str, str, str] | None = None
    for line in lines:
        device, point, kind = line.split()[:3]
        inside = path == Path(point) or Path(point) in path.parents
        if inside and (best is None or len(point) > len(best[1])):
            best = (device, point, kind)
    return best
