"""What a key may be, and what storage someone else controls may hold where a key points.

Shared by every backend, so that all of them refuse the same things with the same one-line
:class:`~archive.errors.UnsafeObjectError` and list the same names (see the contract in
:mod:`archive.interface`).
"""

from __future__ import annotations

import logging
import stat

from .errors import InvalidInputError, UnsafeObjectError

logger = logging.getLogger(__name__)


def check_key(key: str) -> str:
    """Return ``key`` if it names something inside the archive root (a relative POSIX path with
    no empty, ``.`` or ``..`` part), else raise :class:`InvalidInputError`. Keys come from
    :mod:`archive.layout` and from listings, so this only ever stops a programming error."""
    if key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidInputError(f"{key!r} is not a key inside the archive")
    return key


def kind_of(mode: int) -> str:
    """What a file mode says the thing is, for messages: ``a symbolic link``, ``a FIFO``..."""
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
             (stat.S_ISREG, "a file"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def check_regular(key: str, mode: int) -> None:
    """Raise :class:`UnsafeObjectError` unless ``mode`` (of an ``lstat``) is a regular file's."""
    if not stat.S_ISREG(mode):
        raise UnsafeObjectError(key, kind_of(mode))


def check_folder(path: str, mode: int) -> None:
    """Raise :class:`UnsafeObjectError` unless ``mode`` (of an ``lstat``) is a real folder's."""
    if not stat.S_ISDIR(mode):
        raise UnsafeObjectError(path, kind_of(mode), "a folder")


def usable_name(name: str, folder: str) -> bool:
    """Whether a listed name can be a key: not hidden, and valid UTF-8 (a name that is not is
    skipped with a warning, the same on every backend; the archive itself writes only ASCII)."""
    if name.startswith("."):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        logger.warning("%s: skipping a name that is not UTF-8: %r", folder or ".", name)
        return False
    return True


def usable_names(names: list[str], folder: str) -> list[str]:
    """The names of ``names`` that :func:`usable_name` keeps: all of them at once when they are
    ASCII and none is hidden (as every name the archive writes: a listing of 100,000 blobs then
    costs no Python call per name)."""
    joined = "/".join(names)  # no name holds "/"
    if joined.isascii() and not joined.startswith(".") and "/." not in joined:
        return list(names)
    return [name for name in names if usable_name(name, folder)]
