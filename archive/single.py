"""One file of a release without the rest: open it, get a local path to it, or prefetch blobs.

An analysis that reads one 2 MB file of a 20 GiB release resolves the release (its pointer and
record), then fetches that one blob into the verified cache (:class:`archive.cache.BlobCache`),
and nothing else: a second ``open`` of the same file reads the cache and asks the archive
only for the record. Every byte handed out was checked against the record's sha256 when it
entered the cache, and again since unless the stat cache knows the file unchanged.
"""

from __future__ import annotations

import io
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterable, Iterator

from . import layout
from .cache import default_cache
from .download import fetch_blobs
from .errors import FileNotInReleaseError
from .materialize import place_file
from .records import FileEntry, Release
from .selection import select_files

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
#: Below the cache root: the read-only, named copies :func:`fetch_file` hands out.
FILES_DIR = "files"


def entry_of(release: Release, path: str) -> FileEntry:
    """The entry of ``path`` in ``release``; :class:`FileNotInReleaseError` (naming a few of its
    files) if it has none."""
    entry = release.files.get(path.strip("/") if isinstance(path, str) else path)
    if entry is None:
        some = ", ".join(list(release.files)[:5]) + (", ..." if len(release.files) > 5 else "")
        raise FileNotInReleaseError(f"{release.name} {release.version} has no file {path!r} (it has {some})")
    return entry


@contextmanager
def open_file(arc: "ArchiveInterface", name: str, path: str, range: str = "*", *, encoding: str | None = None,
              include_prerelease: bool = False) -> Iterator[IO[Any]]:
    """Open one file of the best release of ``name`` matching ``range``, fetching only its blob.

    Parameters
    ----------
    encoding
        None: a binary file object; else a text one decoding with this encoding.

    Raises
    ------
    FileNotInReleaseError
        The release has no such file.
    IntegrityError
        The blob does not match the record, in the archive or (twice) in the cache.
    """
    release = arc.resolve(name, range, include_prerelease=include_prerelease)
    entry = entry_of(release, path)
    stream: IO[Any] = open(default_cache().verified_path(arc, entry.blob, entry.size), "rb")
    if encoding is not None:
        stream = io.TextIOWrapper(stream, encoding=encoding)
    with stream:
        yield stream


def fetch_file(arc: "ArchiveInterface", name: str, path: str, range: str = "*", *,
               include_prerelease: bool = False) -> Path:
    """A local path holding one file of a release, verified, under its own name (what pooch's
    ``fetch`` gives), fetching only its blob.

    The path is a read-only hard link to the cache's blob, in
    ``<cache>/files/<name>/<version>/<record id>/<path>``, so libraries that look at a file's
    extension see the right one and no byte is stored twice. Do not modify it: copy it first.
    """
    cache = default_cache()
    release = arc.resolve(name, range, include_prerelease=include_prerelease)
    entry = entry_of(release, path)
    source = cache.verified_path(arc, entry.blob, entry.size)
    target = (cache.root / FILES_DIR / layout.name_folder(release.name) / release.version
              / release.record_id.hexdigest[:16]).joinpath(*path.strip("/").split("/"))
    try:
        if os.path.samefile(source, target):
            return target
    except OSError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    place_file(source, target, "hard", 0o444)
    logger.info("fetched %s of %s %s to %s", path, release.name, release.version, target)
    return target


def prefetch(arc: "ArchiveInterface", release: Release, *, include: Iterable[str] = (),
             exclude: Iterable[str] = (), jobs: int | None = None, progress: bool | None = None) -> Release:
    """Fill the cache with the blobs of ``release`` (or of its part matching ``include`` and not
    ``exclude``), verified, without writing any folder; return what was prefetched.

    A later pull, ``open`` or ``fetch`` of those files then needs no transfer of content, also
    without a network (their records aside).
    """
    cache = default_cache()
    part = select_files(release, include, exclude)
    cache.clean_stale()
    fetch_blobs(arc, cache, list(part.files.values()), jobs or arc.max_workers, progress)
    logger.info("prefetched %d files of %s %s", len(part.files), release.name, release.version)
    return part
