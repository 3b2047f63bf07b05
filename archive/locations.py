"""``get_interface``: from a location string to the backend that serves it.

A location is a path or ``file://`` URL today; ``sftp://``, ``http(s)://`` and ``s3://`` are
mapped to their backends as those arrive. No location means the default archive:
``$ARCHIVE_URL`` if set, else a folder in the user data dir, created on first use. Any other
location must already hold an archive (``archive init`` creates one), so that a typo never
scatters blobs into a random folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import InvalidInputError
from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
_SCHEMES = {"": "filesystem", "file": "filesystem", "sftp": "sftp"}


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
    scheme = _scheme(location)
    kind = _SCHEMES.get(scheme)
    if kind is None:
        raise InvalidInputError(f"unsupported archive location {location!r}: use a folder path or file:// URL")
    if kind == "sftp":
        from .backends.sftp import SFTPArchive

        return SFTPArchive(location)
    from .backends.filesystem import FileSystemArchive

    return FileSystemArchive(_file_path(location) if scheme else location)


def _scheme(location: str) -> str:
    """The URL scheme, or '' for a plain path (including Windows drive paths like C:\\data)."""
    if "://" not in location:
        return ""
    return location.split("://", 1)[0].lower()


def _file_path(location: str) -> str:
    parts = urlsplit(location)
    if parts.netloc not in ("", "localhost"):
        raise InvalidInputError(f"file:// URL with a host is not supported: {location!r}")
    return unquote(parts.path)
