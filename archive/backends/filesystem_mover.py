"""The renames of a batch flushed behind the writers, made by a helper process.

A flushed batch of small files (:mod:`~archive.backends.filesystem_batch`) is moved into place
by one ``renameat`` per file. Made from a thread of this process while the writers write the
next batch, each rename needs the interpreter's lock back once it returns, and the writers,
who make a system call for nearly every step of a file, hand that lock to and fro with it: at
100,000 files of 1 KiB the handovers cost more than the renames (a push took 7.0-7.4 s with
the renames in threads, 6.0-6.1 s with them in a helper). A helper process has a lock of its
own: a few lines of Python, run isolated (``-I -S``, no site, no environment), given the
descriptors of ``tmp/`` and of the target folders, rename every file it is told of and say,
file by file, whether it could.

What the helper did not report as moved is left to the caller, who moves it as before (with
its fallbacks and its errors): a helper that cannot start, or stops early, costs only time.
It starts in a session of its own (a Ctrl-C on the terminal is for the command, which ends it)
and, on Linux, is killed if the thread that started it dies, so it never outlives the command
by more than the rename it is making.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

logger = logging.getLogger(__name__)

#: Flushes of fewer files move them in this process: the helper's start (about 10 ms of CPU)
#: is worth it only where it spares thousands of handovers.
MIN_FILES = 1024

#: The helper: argv is the pid of its parent and the descriptor of ``tmp/``; each line of its
#: input ``NAME<TAB>FOLDER_FD<TAB>TARGET`` asks for one rename, answered by one byte on its
#: output, ``.`` when made and ``x`` when not, in the order asked.
HELPER = r"""
import os, sys
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the thread that started us
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(3)  # that thread is gone already
tmp, out = int(sys.argv[2]), sys.stdout.buffer
for line in sys.stdin.buffer:
    name, folder, target = line.rstrip(b"\n").split(b"\t")
    try:
        os.replace(name, target, src_dir_fd=tmp, dst_dir_fd=int(folder))
        out.write(b".")
    except OSError:
        out.write(b"x")
out.flush()
"""


def rename_in_helper(tmp: int, moves: list[tuple[str, int, str]]) -> list[bool]:
    """Rename each ``(name in tmp, target folder descriptor, target name)`` in a helper process.

    Returns, for each move in order, whether the helper reported it made; the list is shorter
    (empty when the helper could not start) when it stopped early. A move not reported made
    may still have been made (the one in progress when the helper stopped): the caller checks.
    """
    if not moves or not sys.executable:
        return []
    request = "".join(f"{name}\t{folder}\t{target}\n" for name, folder, target in moves).encode()
    descriptors = sorted({tmp, *(folder for _, folder, _ in moves)})
    try:
        helper = subprocess.Popen([sys.executable, "-I", "-S", "-c", HELPER, str(os.getpid()), str(tmp)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  pass_fds=descriptors, start_new_session=True)
    except (OSError, ValueError) as exc:  # no process to be had: the caller moves every file
        logger.debug("no helper process for the renames: %s", exc)
        return []
    try:
        answer, _ = helper.communicate(request)
    except BaseException:
        helper.kill()
        helper.wait()
        raise
    if helper.returncode != 0:
        logger.debug("the rename helper exited with status %s after %d of %d files",
                     helper.returncode, len(answer), len(moves))
    return [status == ord(".") for status in answer[:len(moves)]]
