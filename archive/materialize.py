"""Putting a verified cached blob at a path: by reflink, hard link, symbolic link or copy.

Every mode writes a temporary file beside the target and renames it over the target, so the
target is never seen partial. The modes trade speed for independence from the cache:

- ``copy``: an independent file (the kernel copies: ``sendfile``/``copy_file_range``).
- ``reflink``: an independent file that shares blocks until either is written
  (copy-on-write filesystems: Btrfs, XFS, APFS...). As safe as a copy, nearly free.
- ``hard``: the cache file itself, read-only. Instant, but shared: editing it after a
  ``chmod`` would change the cache and every other folder linked to it. Use for read-only data.
- ``symlink``: a link into the cache; instant, read-only, and broken if the cache is cleaned.
- ``auto`` (the default): ``reflink`` where the filesystem supports it, else ``copy``; so a
  user who edits a pulled file can never corrupt the cache.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterable

from .errors import InvalidInputError

logger = logging.getLogger(__name__)
LINK_MODES = ("auto", "reflink", "hard", "symlink", "copy")
#: Modes whose file is independent of its source: an edit of it never reaches the source.
INDEPENDENT_MODES = frozenset({"auto", "reflink", "copy"})
PART_SUFFIX = ".archive-part"
FICLONE = 0x40049409  # Linux ioctl: make the target share the source's blocks
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS}
_NO_REFLINK_DEVICES: set[int] = set()  # filesystems (st_dev) found unable to reflink


def check_link_mode(mode: str) -> str:
    if mode not in LINK_MODES:
        raise InvalidInputError(f"unknown link mode {mode!r}: use one of {', '.join(LINK_MODES)}")
    return mode


def place_file(source: Path, target: Path, mode: str, file_mode: int) -> None:
    """Make ``target`` hold the content of the cache file ``source``, atomically."""
    if mode == "auto":
        device = os.stat(target.parent).st_dev
        if device not in _NO_REFLINK_DEVICES:
            try:
                return place_file(source, target, "reflink", file_mode)
            except OSError as exc:
                if exc.errno not in _NO_REFLINK:
                    raise
                _NO_REFLINK_DEVICES.add(device)  # ask each filesystem once, not once per file
        mode = "copy"
    _atomically(target, lambda tmp: _MAKERS[mode](source, tmp, file_mode))


def write_file_atomically(target: Path, chunks: Iterable[bytes], file_mode: int) -> None:
    """Write ``chunks`` to ``target`` through a temporary file beside it, then rename.

    A process killed with SIGKILL cannot remove its temporary file; the next download into the
    same folder does (see :func:`archive.download.remove_stale_parts`).
    """
    def write(tmp: str) -> None:
        with _create(tmp) as out:
            for chunk in chunks:
                out.write(chunk)
            os.fchmod(out.fileno(), file_mode)

    _atomically(target, write)


def temporary_name(target: Path) -> str:
    """A hidden, unique name beside ``target``, recognizable as ours."""
    return str(target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}{PART_SUFFIX}")


def _atomically(target: Path, make: Callable[[str], None]) -> None:
    """Let ``make`` build a temporary file, then rename it over ``target``; clean up on error."""
    tmp = temporary_name(target)
    try:
        make(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _create(path: str):
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _copy(source: Path, tmp: str, file_mode: int) -> None:
    shutil.copyfile(source, tmp)  # the kernel copies where it can (sendfile, copy_file_range)
    os.chmod(tmp, file_mode)


def _reflink(source: Path, tmp: str, file_mode: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        raise OSError(errno.EOPNOTSUPP, "reflinks are not supported here") from None
    with open(source, "rb") as src, _create(tmp) as out:
        fcntl.ioctl(out.fileno(), FICLONE, src.fileno())
        os.fchmod(out.fileno(), file_mode)


def _hard(source: Path, tmp: str, file_mode: int) -> None:
    os.link(source, tmp)


def _symlink(source: Path, tmp: str, file_mode: int) -> None:
    os.symlink(source, tmp)


_MAKERS: dict[str, Callable[[Path, str, int], None]] = {
    "copy": _copy, "reflink": _reflink, "hard": _hard, "symlink": _symlink}
