"""``get_interface``: from a location string to the backend that serves it.

A location is a path or ``file://`` URL today; ``sftp://``, ``http(s)://`` and ``s3://`` are
mapped to their backends as those arrive. No location means the default archive:
``$ARCHIVE_URL`` if set, else a folder in the user data dir, created on first use. Any other
location must already hold an archive (``archive init`` creates one), so that a typo never
scatters blobs into a random folder.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from pathlib import Path

from .errors import InvalidInputError
from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
# scheme -> "module:class" in archive.backends, imported only when used (fast start-up)
_BACKENDS = {"": "filesystem:FileSystemArchive", "file": "filesystem:FileSystemArchive",
             "sftp": "sftp:SFTPArchive"}
_PASSWORD = re.compile(r"//([^/@:]*):[^/@]*@")


def default_location() -> str:
    """``$ARCHIVE_URL``, else ``<user data dir>/archive``."""
    location = os.environ.get("ARCHIVE_URL")
    if location:
        return location
    import platformdirs

    return str(Path(platformdirs.user_data_dir("archive", appauthor=False)) / "archive")


def get_interface(location: str | os.PathLike[str] | None = None, *, create: bool = False) -> ArchiveInterface:
    """Open the archive at ``location``.

    Parameters
    ----------
    location
        A folder path or ``file://`` URL; None for the default archive.
    create
        Create an empty archive there if there is none (``archive init``). The built-in
        default archive (no location and no ``$ARCHIVE_URL``) is always created on first use.

    Raises
    ------
    InvalidInputError
        The location is malformed or of an unknown kind.
    NotAnArchiveError
        Nothing there is an archive, and ``create`` is false.
    """
    if location is None:
        create = create or not os.environ.get("ARCHIVE_URL")
        location = default_location()
    arc = make_backend(os.fspath(location))
    if create:
        arc.initialize()
    else:
        arc.check_archive()
    from .cache import default_cache
    from .pins import SeenRecords

    arc.seen = SeenRecords(default_cache().root / "seen")
    return arc


def make_backend(location: str) -> ArchiveInterface:
    """The backend object for ``location``, not yet checked for an archive."""
    if not location:
        raise InvalidInputError("empty archive location")
    scheme = "" if "://" not in location else location.split("://", 1)[0].lower()
    spec = _BACKENDS.get(scheme)
    if spec is None:
        raise InvalidInputError(f"unsupported archive location {redact(location)!r}:"
                                f" use a folder path or a {', '.join(s + '://' for s in _BACKENDS if s)} URL")
    module, _, name = spec.partition(":")
    backend = getattr(importlib.import_module(f".backends.{module}", __package__), name)
    return backend.from_location(location)


def redact(location: str) -> str:
    """``location`` with any password in it replaced by ``***``, safe to show and log."""
    return _PASSWORD.sub(r"//\1:***@", location)
