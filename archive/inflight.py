"""Temporary files in flight, and those a dead process left: the one rule every cleaner follows.

A download writes each file through a temporary beside its target, and the cache fills through
temporaries in its ``tmp/`` folder. A process killed with SIGKILL cannot remove its own, so the
next process must; but it must never remove a temporary another *live* process is writing, as
two pulls into one folder would otherwise do to each other.

Liveness is an ``flock``, which the kernel drops when its holder dies, however it dies:

- A writer takes a shared lock on each temporary file (or folder) it creates and holds it until
  the rename that ends it. A cleaner removes a temporary only when it can take an exclusive
  lock on it without waiting, and unlinks it while holding that lock. A writer whose lock is granted
  on a file already unlinked (a cleaner came between its create and its lock) starts again under
  a new name (:func:`claim`), so that window cannot lose a file either.
- A file written unnamed (Linux ``O_TMPFILE``) needs no lock while it is written: no other
  process can see it, it gets its final name whole, and a killed writer's vanishes with it.
  Only when it must replace a file does it get a temporary name first, locked before it has one.
- Temporaries that are links (the ``hard`` and ``symlink`` link modes: alive for two system
  calls), and all temporaries on a filesystem without locks, are stale by age instead: unchanged
  for :data:`STALE_AGE_S`.
- The cache's own ``tmp/`` files are written by :class:`FileSystemArchive`, which takes no
  locks; there, every process that uses the cache holds a shared lock on one file
  (:class:`SharedUse`), and a cleaner that gets it exclusively is alone: everything in ``tmp/``
  is stale. Not alone, it removes only what has not changed for :data:`STALE_AGE_S`.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)
#: A temporary unchanged for this long has no writer (used only where locks cannot tell).
STALE_AGE_S = 3600.0
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.EBADF}

try:
    import fcntl
except ImportError:  # Windows: no flock; age alone decides
    fcntl = None  # type: ignore[assignment]


def claim(fd: int) -> bool:
    """Take the writer's shared lock on a temporary just created; False if a cleaner removed it
    before the lock was granted (the caller then creates another)."""
    claim_unnamed(fd)
    return os.fstat(fd).st_nlink > 0


def claim_unnamed(fd: int) -> None:
    """Take the writer's shared lock on a file not named yet (``O_TMPFILE``), before it gets a
    temporary name: no cleaner can have seen it, so none can have removed it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise


def remove_if_stale(path: Path, remove=None, now: float | None = None) -> bool:
    """Remove the temporary ``path`` (with ``remove``; by default ``os.unlink``, or
    :func:`remove_tree` for a folder) if no live process writes it; True if removed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    is_folder = stat.S_ISDIR(info.st_mode)
    if remove is None:
        remove = remove_tree if is_folder else os.unlink
    if not (stat.S_ISREG(info.st_mode) or is_folder) or (not is_folder and info.st_nlink > 1):
        return _remove_if_old(path, info, remove, now)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not _lock_exclusive(fd):
            return _remove_if_old(path, info, remove, now) if fcntl is None else False
        if os.fstat(fd).st_ino != info.st_ino:
            return False
        remove(path)
        logger.info("removed %s, left by an interrupted download", path)
        return True
    except _LocksUnsupported:
        return _remove_if_old(path, info, remove, now)
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


class _LocksUnsupported(Exception):
    pass


def _lock_exclusive(fd: int) -> bool:
    """True when the exclusive lock was granted at once; False when someone holds a lock."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            raise _LocksUnsupported() from exc
        raise
    return True


def is_old(info: os.stat_result, now: float | None = None) -> bool:
    """True when nothing changed ``info``'s file for :data:`STALE_AGE_S` (ctime: links change it)."""
    changed = max(info.st_mtime, info.st_ctime)
    return (time.time() if now is None else now) - changed > STALE_AGE_S


def _remove_if_old(path: Path, info: os.stat_result, remove, now: float | None) -> bool:
    if not is_old(info, now):
        return False
    try:
        remove(path)
    except FileNotFoundError:
        return False
    logger.info("removed %s, left by an interrupted download", path)
    return True


class SharedUse:
    """A lock file that every user of a shared folder holds shared for as long as it runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._shared = False

    def try_alone(self) -> bool:
        """Take the lock exclusively if nobody else uses the folder; True if so (then call
        :meth:`share` when done cleaning)."""
        fd = self._open()
        if fd is None:
            return False
        try:
            alone = _lock_exclusive(fd)
        except _LocksUnsupported:
            return False
        if alone:
            self._shared = False
        elif self._shared:  # a failed conversion may have dropped our shared lock: take it again
            self._shared = False
            self.share()
        return alone

    def share(self) -> None:
        """Hold the lock shared (waits only while a cleaner holds it exclusively)."""
        if self._shared:
            return
        fd = self._open()
        if fd is not None and fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    raise
        self._shared = True

    def _open(self) -> int | None:
        if self._fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                logger.debug("cannot open lock file %s: %s", self.path, exc)
                return None
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._shared = None, False

    def __del__(self) -> None:
        self.close()


class ClaimedFolder:
    """A new folder, held locked as alive while in use (as :func:`claim` locks a temporary
    file), and removed with all it holds on leaving, unless it was renamed away meanwhile.

    ``new_path()`` names it (called again if a cleaner removed the folder between its
    ``mkdir`` and its lock). Raises ``OSError`` if it cannot be made.
    """

    def __init__(self, new_path: Callable[[], Path]) -> None:
        while True:
            path = new_path()
            os.mkdir(path)
            fd = os.open(path, os.O_RDONLY)
            if claim(fd):
                break
            os.close(fd)
        self.path, self._fd = path, fd

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc_info: object) -> None:
        try:
            if os.path.lexists(self.path):
                remove_tree(self.path)
        finally:
            os.close(self._fd)


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a folder and everything below it, iteratively: :func:`shutil.rmtree` recurses once
    per level and fails on a 1,200-deep tree. Read-only files are removed like any other."""
    stack = [os.fspath(path)]
    while stack:
        folder = stack[-1]
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            stack.pop()
            continue
        subfolders = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass
        if subfolders:
            stack.extend(subfolders)
            continue
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            pass
        stack.pop()
