"""archive: a content-addressed, versioned release archive.

Publish a folder as an immutable release ``NAME`` + SemVer ``VERSION``; every file is stored
once as a blob named by its sha256; fetch exactly the right version back by a SemVer range::

    import archive

    arc = archive.get_interface()                 # the default local archive
    arc.publish("data/", "calib", "1.2.0", {"message": "new gains"})
    folder = arc.download("calib", "^1.2", dest="calib")
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from . import errors
from .errors import (ArchiveError, AuthenticationError, BackendError, BackendUnavailableError,
                     BlobNotFoundError, CredentialsError, DestinationConflictError, DestinationError,
                     FileNotInReleaseError, FolderProblemsError, HostKeyError, IntegrityError, InvalidInputError, InvalidNameError, InvalidPathError,
                     InvalidRangeError, InvalidVersionError, KeyExistsError, KeyNotFoundError,
                     NoMatchingVersionError, NotAnArchiveError, NotFoundError, ReadOnlyArchiveError,
                     ReleaseExistsError, ReleaseNotFoundError, StorageFullError,
                     TransferInterruptedError, UnsafeObjectError)
from .interface import ArchiveInterface
from .locations import get_interface
from .records import FileEntry, Release

if TYPE_CHECKING:
    from .importers.rmellipse import ImportReport
    from .lock import Lock
    from .placed import Status

# Every exception of archive.errors is public: scripts catch them by name (a test checks that
# each one is imported above).
__all__ = sorted(["ArchiveInterface", "FileEntry", "Release", "download", "get_interface", "import_rmellipse",
                  "load_lock",
                  "publish", "status",
                  *(name for name, value in vars(errors).items()
                    if isinstance(value, type) and issubclass(value, ArchiveError))])
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def publish(folder: str | Path, name: str, version: str, metadata: Mapping[str, Any] | None = None,
            location: str | None = None, *, exclude: Iterable[str] = ()) -> Release:
    """Publish ``folder`` as ``name`` ``version`` to the archive at ``location`` (default archive),
    leaving out paths that match the gitignore patterns ``exclude`` or ``.archiveignore``."""
    with get_interface(location) as arc:
        return arc.publish(folder, name, version, metadata, exclude=exclude)


def download(name: str, range: str = "*", dest: str | Path | None = None,
             location: str | None = None) -> Path:
    """Download the highest version of ``name`` matching ``range``; return the folder."""
    with get_interface(location) as arc:
        return arc.download(name, range, dest)


def load_lock(path: str | Path = "archive.lock") -> "Lock":
    """The pins of the lock file at ``path`` (written by ``archive lock``); materialize them with
    ``arc.sync(lock)``. See :mod:`archive.lock`."""
    from .lock import load_lock as load

    return load(path)


def status(folder: str | Path) -> "Status":
    """Whether ``folder`` still holds what a pull placed there: its modified, missing and extra
    files (see :func:`archive.placed.status`)."""
    from .placed import status as folder_status

    return folder_status(folder)


def import_rmellipse(src: "str | Path | ArchiveInterface", arc: "str | Path | ArchiveInterface | None" = None, *,
                     dry_run: bool = False, jobs: int | None = None, progress: bool | None = None,
                     user: str | None = None, password: str | None = None) -> "ImportReport":
    """Import every release of the rmellipse archive at ``src`` (a folder or ``sftp://`` URL,
    only read; ``user`` and ``password`` log in to it) into ``arc`` (default archive); see
    :func:`archive.importers.rmellipse.import_rmellipse`."""
    from .importers.rmellipse import import_rmellipse as run_import
    from .locations import make_backend, with_login

    source = src if isinstance(src, ArchiveInterface) else make_backend(with_login(str(src), user, password))
    target = arc if isinstance(arc, ArchiveInterface) else get_interface(arc)
    try:
        return run_import(source, target, dry_run=dry_run, jobs=jobs, progress=progress)
    finally:
        for opened, given in ((source, src), (target, arc)):
            if opened is not given:
                opened.close()
