"""The renames of a batch flushed behind the writers, made by a helper process.

A flushed batch of small files (:mod:`~archive.backends.filesystem_batch`) is moved into place
by one ``renameat`` per file. Made from a thread of this process while the writers write the
next batch, each rename needs the interpreter's lock back once it returns, and the writers,
who make a system call for nearly every step of a file, hand that lock to and fro with it: at
100,000 files of 1 KiB the handovers cost more than the renames (a push took 7.0-7.4 s with
the renames in threads, 6.0-6.1 s with them in a helper). A helper process has a lock of its
own (:mod:`archive.helper_process`): given the descriptors of ``tmp/`` and of the target
folders, it renames every file it is told of and says, file by file, whether it could.

What the helper did not report as moved is left to the caller, who moves it as before (with
its fallbacks and its errors): a helper that cannot start, or stops early, costs only time.
"""

from __future__ import annotations

import logging

from ..helper_process import start_helper, stop_helper

logger = logging.getLogger(__name__)

#: Flushes of fewer files move them in this process: the helper's start (about 10 ms of CPU)
#: is worth it only where it spares thousands of handovers.
MIN_FILES = 1024

#: What the helper says first: output without it is not the helper's, and is not believed.
GREETING = b"archive-mover 1\n"
#: The helper (after :data:`archive.helper_process.PRELUDE`): its argument is the descriptor of
#: ``tmp/``; after the :data:`GREETING`, each line of its input ``NAME<TAB>FOLDER_FD<TAB>TARGET``
#: asks for one rename, answered by one byte on its output, ``.`` when made and ``x`` when not,
#: in order.
HELPER = r"""
tmp, out = int(sys.argv[2]), sys.stdout.buffer
out.write(GREETING)
for line in sys.stdin.buffer:
    name, folder, target = line.rstrip(b"\n").split(b"\t")
    try:
        os.replace(name, target, src_dir_fd=tmp, dst_dir_fd=int(folder))
        out.write(b".")
    except OSError:
        out.write(b"x")
out.flush()
""".replace("GREETING", repr(GREETING))


def rename_in_helper(tmp: int, moves: list[tuple[str, int, str]]) -> list[bool]:
    """Rename each ``(name in tmp, target folder descriptor, target name)`` in a helper process.

    Returns, for each move in order, whether the helper reported it made; the list is shorter
    (empty when the helper could not start) when it stopped early. A move not reported made
    may still have been made (the one in progress when the helper stopped): the caller checks.
    """
    if not moves:
        return []
    request = "".join(f"{name}\t{folder}\t{target}\n" for name, folder, target in moves).encode()
    helper = start_helper(HELPER, [str(tmp)], sorted({tmp, *(folder for _, folder, _ in moves)}))
    if helper is None:  # no process to be had: the caller moves every file
        return []
    try:
        answer, _ = helper.communicate(request)
    except BaseException:
        stop_helper(helper)
        raise
    if helper.returncode != 0 or not answer.startswith(GREETING):
        logger.debug("the rename helper exited with status %s after %d bytes for %d files",
                     helper.returncode, len(answer), len(moves))
    return _statuses(answer, len(moves))


def _statuses(answer: bytes, count: int) -> list[bool]:
    """Whether each move was made, from the helper's ``answer``: nothing is believed of an
    answer without the greeting, nor from its first byte that is neither ``.`` nor ``x``."""
    if not answer.startswith(GREETING):
        return []
    statuses = answer[len(GREETING):len(GREETING) + count]
    made = []
    for status in statuses:
        if status not in b".x":
            break
        made.append(status == ord("."))
    return made

