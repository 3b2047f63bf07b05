"""The folders of a local archive, opened below its root without ever following a link.

Everything inside the archive is reached from a descriptor of its root folder, one component
at a time, with ``O_DIRECTORY | O_NOFOLLOW``: a symbolic link (or a file) where a folder of
the archive should be is refused, and nothing below the root can lead outside it, however the
folders are changed while the archive is in use. The root itself may be a link (``/data`` ->
``/mnt/share`` is the user's choice); it is resolved once, when it is first opened.

Descriptors of the folders used are kept (up to :data:`MAX_KEPT`; the blob fan-out of 256
folders fits), so a key costs no more system calls than a path would: the walk is done once
per folder and process. A kept folder that was removed since (by hand, or by another process)
is noticed when an operation in it finds nothing, and walked (and made) again.
A folder *renamed* away while it is kept is still used where it went: restore an archive
with no process using it.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from ..keys import check_folder, check_key

logger = logging.getLogger(__name__)
T = TypeVar("T")
MAX_KEPT = 300  # descriptors kept per archive: the blob fan-out (256) and a few more
FOLDER_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class Folders:
    """Descriptors of the folders below ``root``, opened once, never through a link."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._kept: dict[str, int] = {}
        self._retired: list[int] = []  # of removed folders: closed with the rest, never in use
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_all, self._kept, self._retired)

    @contextmanager
    def folder(self, path: str, create: bool) -> Iterator[int]:
        """A descriptor of the folder ``path`` (``a/b``, ``""`` for the root) for the block.

        With ``create`` missing folders are made; without, a missing one raises
        ``FileNotFoundError``. Anything but a real folder on the way raises
        :class:`UnsafeObjectError` naming it.
        """
        fd = self._kept.get(path)
        if fd is not None:
            yield fd
            return
        fd, kept = self._walk(path, create)
        try:
            yield fd
        finally:
            if not kept:
                os.close(fd)

    def kept(self, path: str) -> int | None:
        """The descriptor kept for the folder ``path``, if any (valid until :meth:`close`)."""
        return self._kept.get(path)

    def within(self, path: str, create: bool, action: Callable[[int], T]) -> T:
        """``action(fd)`` in the folder ``path``; once more, walked anew, if the folder kept for
        it was removed since (``action`` then failed with ``FileNotFoundError``). A kept folder
        is used without :meth:`folder`'s context manager: a publish comes here once per file."""
        for attempt in (1, 2):
            try:
                kept = self._kept.get(path)
                if kept is not None:
                    return action(kept)
                with self.folder(path, create) as fd:
                    return action(fd)
            except FileNotFoundError:
                if attempt == 2 or not self._forget_removed(path):
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the descriptors kept (call when no operation is in flight)."""
        with self._lock:
            _close_all(self._kept, self._retired)

    # ------------------------------------------------------------------ helpers
    def _walk(self, path: str, create: bool) -> tuple[int, bool]:
        """Open ``path`` from its nearest kept ancestor; keep what was opened while there is room."""
        parts = check_key(path).split("/") if path else []
        start = len(parts)
        while start > 0 and "/".join(parts[:start]) not in self._kept:
            start -= 1
        fd = self._kept.get("/".join(parts[:start]))
        kept = fd is not None
        if fd is None:  # the root, not opened yet (or removed since)
            fd = self._open_root(create)
            kept = self._keep("", fd)
        for i in range(start, len(parts)):
            try:
                child = _open_child(fd, parts[i], "/".join(parts[:i + 1]), create)
            finally:
                if not kept:
                    os.close(fd)
            fd, kept = child, self._keep("/".join(parts[:i + 1]), child)
        return fd, kept

    def _open_root(self, create: bool) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)  # the root may be a link
        try:
            return os.open(self.root, flags)
        except FileNotFoundError:
            if not create:
                raise
        self.root.mkdir(parents=True, exist_ok=True)
        return os.open(self.root, flags)

    def _keep(self, path: str, fd: int) -> bool:
        """Keep ``fd`` as the descriptor of ``path``; False (the caller closes it) if there is no
        room or another thread kept one first."""
        with self._lock:
            if path in self._kept or len(self._kept) >= MAX_KEPT:
                return False
            self._kept[path] = fd
            return True

    def _forget_removed(self, path: str) -> bool:
        """Forget the highest kept folder on the way to ``path`` (itself included) that was
        removed since it was opened, and those below it; True if there was one."""
        parts = path.split("/") if path else []
        removed = None
        for i in range(len(parts) + 1):
            fd = self._kept.get("/".join(parts[:i]))
            if fd is not None and os.fstat(fd).st_nlink == 0:
                removed = "/".join(parts[:i])
                break
        if removed is None:
            return False
        logger.debug("%s/%s was removed since it was opened; opening it again", self.root, removed)
        with self._lock:
            gone = [p for p in self._kept if not removed or p == removed or p.startswith(removed + "/")]
            self._retired.extend(self._kept.pop(p) for p in gone)  # another thread may still use one
        return True


def _open_child(parent: int, name: str, path: str, create: bool) -> int:
    """Open the folder ``name`` in ``parent`` without following a link; make it if missing."""
    for _ in range(2):
        try:
            return os.open(name, FOLDER_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise
            check_folder(path, os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
            raise
        try:
            os.mkdir(name, dir_fd=parent)
        except FileExistsError:
            pass  # made meanwhile by another writer (or not a folder: the open says which)
    return os.open(name, FOLDER_FLAGS, dir_fd=parent)


def _close_all(kept: dict[str, int], retired: list[int]) -> None:
    for fd in [*kept.values(), *retired]:
        try:
            os.close(fd)
        except OSError:
            pass
    kept.clear()
    retired.clear()
