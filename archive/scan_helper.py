"""The ``lstat`` calls of a large scan, shared with a helper process.

A scan of 100,000 files spends most of its time in one ``lstat`` per file (the kernel's work,
and the interpreter's to build each result). Threads of this process cannot share the calls
without handing the interpreter's lock to and fro at every one, so a scan that finds many files
gives part of them to a helper process (:mod:`archive.helper_process`): the same
``os.stat(name, dir_fd=folder, follow_symlinks=False)`` on another core, its results sent back
as plain numbers. On a network file system, where each call waits on the server, the two wait
side by side.

How they share, without either knowing the other's pace: the scan offers each folder it lists
(its location and the names of its regular files) in a request log; the helper takes them from
the first on, as they come; the scan, once it has listed all (or too many wait), takes them
from the last back. Each marks what it takes in a shared table, so they meet where their paces
put the middle; a folder both take at once is done twice, and the scan's own result is used.
The helper appends its answers to an answer log, which the scan reads between its own folders.
The three are memory files (``memfd_create``: Linux), so neither side ever blocks on the other.

Whatever the helper does not answer, or answers in a form it would never use, the scan stats
itself: the helper only ever saves time.
"""

from __future__ import annotations

import logging
import marshal
import mmap
import os
import struct
import subprocess
from typing import Any, Iterator

from .helper_process import start_helper, stop_helper

logger = logging.getLogger(__name__)

#: A scan starts the helper once it has listed this many regular files. Its start costs this
#: process 3 to 5 ms (the helper's own 20 ms are on another core): a scan of 10,000 files
#: took 40 ms with the helper started here, 45 ms without one and 50 ms with it started at 8,192.
MIN_FILES = 2048
#: Folders the shared table has room for; those after it are stated by the scan alone.
MAX_FOLDERS = 1 << 22
#: What the helper writes first in its answer log: a log without it is not the helper's.
GREETING = b"archive-stat 1\n"
#: The shared table's head: folders offered, bytes of requests written, whether the scan has
#: listed them all, bytes of answers written. The marks of the folders follow it, one byte each:
#: 0 untaken, 1 taken by the helper, 2 by the scan.
_HEAD = struct.Struct("=qqqq")
_FRAME = struct.Struct("=I")  # the length of each marshalled request or answer in a log
_UNTAKEN, _HELPER, _SCAN = 0, 1, 2
#: The helper (after :data:`archive.helper_process.PRELUDE`): its arguments are the descriptors
#: of the table, the request log and the answer log. Each request is a marshalled ``(folder,
#: [name, ...])``; each answer a marshalled ``(number, [numbers or None, ...])``, one per name:
#: ``st_mode, st_size, st_dev, st_ino, st_mtime_ns, st_ctime_ns, st_uid``, None where the stat
#: failed. A folder that cannot be opened is not answered.
HELPER = r"""
import marshal, mmap, struct, time
table_fd, requests_fd, answers_fd = map(int, sys.argv[2:5])
table = mmap.mmap(table_fd, 0)
head, frame = struct.Struct("=qqqq"), struct.Struct("=I")
flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
os.write(answers_fd, GREETING)
written = len(GREETING)
struct.pack_into("=q", table, 24, written)
requests, read, number, pause = [], 0, 0, 0.0002
while True:
    offered, request_bytes, listed, _ = head.unpack_from(table)
    if number >= offered:
        if listed:
            break
        time.sleep(pause)
        pause = min(pause * 2, 0.01)  # a walk among folders without files offers nothing for a while
        continue
    pause = 0.0002
    if number >= len(requests):  # read the requests written since, up to the last whole one
        data, at = os.pread(requests_fd, request_bytes - read, read), 0
        while at + 4 <= len(data) and at + 4 + frame.unpack_from(data, at)[0] <= len(data):
            size = frame.unpack_from(data, at)[0]
            requests.append(marshal.loads(data[at + 4:at + 4 + size]))
            at += 4 + size
        read += at
        if number >= len(requests):
            time.sleep(pause)
            continue
    mark = head.size + number
    if table[mark] == 0:
        table[mark] = 1
        folder, names = requests[number]
        try:
            fd = os.open(folder, flags)
        except OSError:
            fd = -1
        if fd >= 0:
            found = []
            try:
                for name in names:
                    try:
                        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except OSError:
                        found.append(None)
                        continue
                    found.append((info.st_mode, info.st_size, info.st_dev, info.st_ino, info.st_mtime_ns,
                                  info.st_ctime_ns, info.st_uid))
            finally:
                os.close(fd)
            answer = marshal.dumps((number, found))
            os.write(answers_fd, frame.pack(len(answer)) + answer)
            written += frame.size + len(answer)
            struct.pack_into("=q", table, 24, written)
    requests[number] = None
    number += 1
os._exit(0)
""".replace("GREETING", repr(GREETING))

Found = list[Any]  # per name: a tuple of the seven numbers, or None


class StatHelper:
    """The helper process of one scan: offer folders, take them back, read what it stated.

    Folder numbers are given by :meth:`offer`, from 0 on. :meth:`take` claims a folder for the
    scan (False: the helper has it); :meth:`answers` yields ``(number, found)`` for the folders
    the helper stated, as they come, each once; :meth:`finish` waits for its end. A helper that
    could not start takes nothing and answers nothing.
    """

    def __init__(self) -> None:
        self._offered = self._request_bytes = self._read = 0
        self._table: mmap.mmap | None = None
        self._fds: list[int] = []
        self._helper: subprocess.Popen[bytes] | None = None
        self._believed = False
        try:
            self._fds = [os.memfd_create(name, os.MFD_CLOEXEC) for name in ("archive-scan", "requests", "answers")]
            os.ftruncate(self._fds[0], _HEAD.size + MAX_FOLDERS)  # untouched pages of it take no memory
            self._table = mmap.mmap(self._fds[0], 0)
            self._helper = start_helper(HELPER, [str(fd) for fd in self._fds], self._fds,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except (AttributeError, OSError) as exc:  # no memfd_create (not Linux), or no memory for it
            logger.debug("no stat helper: %s", exc)
        if self._helper is None:
            self.close()

    @property
    def running(self) -> bool:
        """True when a helper was started (and not given up on since)."""
        return self._table is not None

    def offer(self, location: str, names: list[str]) -> int:
        """Offer the stats of ``names`` in the folder at ``location``; return its number."""
        number = self._offered
        if self._table is not None and number < MAX_FOLDERS:
            try:
                request = marshal.dumps((location, names))
            except ValueError:  # not a string marshal can carry: kept by the scan, a frame all the same
                self._table[_HEAD.size + number] = _SCAN
                request = marshal.dumps(None)
            try:
                os.write(self._fds[1], _FRAME.pack(len(request)) + request)
            except OSError as exc:  # no memory left for the log: the scan states the rest itself
                self._give_up(exc)
            else:
                self._request_bytes += _FRAME.size + len(request)
                struct.pack_into("=q", self._table, 8, self._request_bytes)  # the bytes, then the count
                struct.pack_into("=q", self._table, 0, number + 1)
        self._offered = number + 1
        return number

    def take(self, number: int) -> bool:
        """Claim folder ``number`` for the scan: False when the helper has taken it."""
        if self._table is None or number >= MAX_FOLDERS:
            return True
        mark = _HEAD.size + number
        if self._table[mark] == _HELPER:
            return False
        self._table[mark] = _SCAN
        return True

    def answers(self) -> Iterator[tuple[int, Found]]:
        """``(number, found)`` of each folder the helper stated since the last call."""
        if self._table is None:
            return
        written = _HEAD.unpack_from(self._table)[3]
        if written <= self._read:
            return
        try:
            data = os.pread(self._fds[2], written - self._read, self._read)
        except OSError as exc:
            self._give_up(exc)
            return
        at = 0
        if not self._believed:
            if not data.startswith(GREETING):
                if len(data) >= len(GREETING):  # not the helper's output: never read again
                    self._give_up(f"its output begins {data[:len(GREETING)]!r}")
                return
            self._believed, at = True, len(GREETING)
        while at + _FRAME.size <= len(data):
            size, = _FRAME.unpack_from(data, at)
            if at + _FRAME.size + size > len(data):
                break
            answer = _loaded(data[at + _FRAME.size:at + _FRAME.size + size])
            at += _FRAME.size + size
            if answer is not None:
                yield answer
        self._read += at

    def finish(self) -> None:
        """Tell the helper every folder is offered, and wait for it to end (it ends once no
        folder is left untaken)."""
        if self._table is None or self._helper is None:
            return
        struct.pack_into("=q", self._table, 16, 1)
        try:
            self._helper.wait()
        except BaseException:
            stop_helper(self._helper)
            raise

    def _give_up(self, why: object) -> None:
        """Stop using the helper: what it has not answered yet, the scan states itself."""
        logger.debug("not using the stat helper any more: %s", why)
        self.close()

    def close(self) -> None:
        """Stop the helper if it still runs; release the shared memory."""
        if self._helper is not None and self._helper.returncode is None:
            stop_helper(self._helper)
        if self._table is not None:
            self._table.close()
            self._table = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> "StatHelper":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _loaded(data: bytes) -> tuple[int, Found] | None:
    """An answer as the helper writes it, else None."""
    try:
        answer = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        return None
    if (type(answer) is tuple and len(answer) == 2 and type(answer[0]) is int and type(answer[1]) is list):
        return answer
    return None
