"""Downloading a release: fetch missing blobs into the cache, then materialize the files.

Every byte placed in a destination comes from a cache blob verified against its id: when it
was fetched, and again before use unless the stat cache knows it unchanged since. Each file is
placed through a temporary file beside its target and renamed over it only once complete, so
an interrupted download never leaves a partial or corrupt file under a release path. Files
already there with the right content are kept; files with other content are only replaced
with ``force``, and otherwise the whole download is refused before anything is written.
Nothing is ever written outside the destination, whatever the record says and whatever
symbolic links the destination holds.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

from . import layout
from .cache import BlobCache, default_cache
from .errors import (DestinationConflictError, DestinationError, IntegrityError, InvalidInputError,
                     InvalidPathError, KeyNotFoundError)
from .hashing import BlobId, hash_file, iter_chunks, verified_chunks
from .materialize import INDEPENDENT_MODES, PART_SUFFIX, check_link_mode, place_file, write_file_atomically
from .records import FileEntry, Release
from .statcache import identity
from .transfer import make_progress, reporting, run_jobs, with_retries

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
SMALL_FILE = 256 * 1024
_PART = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}" + re.escape(PART_SUFFIX))


class Existing(Enum):
    """What a destination path holds before a download."""

    ABSENT = "absent"
    SAME = "the release's content, known from the stat cache"
    SAME_BY_HASH = "the release's content, found by hashing"
    DIFFERENT = "something else"


@dataclass(frozen=True)
class Placement:
    """One file to write: its release path, its entry, and the target path."""

    path: str
    entry: FileEntry
    target: Path


def download(arc: "ArchiveInterface", release: Release, dest: Path | None, *, force: bool = False,
             link: str = "auto", jobs: int | None = None, progress: bool | None = None,
             cache: BlobCache | None = None, use_cache: bool = True) -> Path:
    """Materialize ``release`` into ``dest`` (or a read-only snapshot in the cache); return the folder.

    Parameters
    ----------
    link
        How files are placed: ``auto`` (reflink, else copy), ``reflink``, ``hard``, ``symlink``
        or ``copy``; see :mod:`archive.materialize`.
    use_cache
        False: write each file straight from the archive, verified as it streams, without
        keeping a copy in the cache (a one-off pull: each byte written once). Needs ``dest``
        and a link mode that makes independent files. An archive on a local disk is never
        cached whatever this says.

    Raises
    ------
    DestinationConflictError
        Files in ``dest`` differ from the release and ``force`` is not set; nothing was written.
    IntegrityError
        A blob does not match its id or size, in the archive or (twice) in the cache.
    """
    cache = cache or default_cache()
    check_link_mode(link)
    workers = jobs or arc.max_workers
    if not use_cache and (dest is None or link not in INDEPENDENT_MODES):
        raise InvalidInputError("a pull without the cache needs a destination folder and a link mode"
                                f" that makes independent files ({', '.join(sorted(INDEPENDENT_MODES))})")
    if dest is None:
        return _snapshot(arc, release, cache, workers, progress)
    placements = plan(release, dest, force, cache)
    remove_stale_parts(placements)
    file_mode = 0o666 & ~_umask()
    routes = {p.path: _route(arc, p.entry, link, use_cache) for p in placements}
    fetch_blobs(arc, cache, [p.entry for p in placements if routes[p.path] is Route.CACHE], workers, progress)
    started = time.time_ns()
    bar = make_progress("writing", sum(p.entry.size for p in placements), len(placements), progress)
    try:
        def job(placement: Placement) -> None:
            place(arc, cache, placement, routes[placement.path], link, file_mode, bar.advance)
            bar.file_done()

        run_jobs([lambda p=p: job(p) for p in placements], _placing_workers(placements, routes, workers))
    finally:
        bar.close()
    _remember_placed(cache, placements, started)
    logger.info("downloaded %s %s into %s (%d files written)", release.name, release.version, dest, len(placements))
    return dest


def _placing_workers(placements: list[Placement], routes: dict[str, "Route"], workers: int) -> int:
    """Threads for placing files: all of them when files stream from the archive (each waits on
    the network) or are large (the kernel copies without the GIL); one for small local files,
    where per-file Python work dominates and threads only contend."""
    if not placements:
        return 1
    if any(route is Route.STREAM for route in routes.values()):
        return workers
    average = sum(p.entry.size for p in placements) / len(placements)
    return workers if average >= SMALL_FILE else 1


def plan(release: Release, dest: Path, force: bool, cache: BlobCache) -> list[Placement]:
    """The files to write into ``dest``: all but those already there with the same content."""
    if dest.exists() and not dest.is_dir():
        raise InvalidInputError(f"destination {str(dest)!r} exists and is not a folder")
    root = Path(os.path.realpath(dest))
    todo: list[Placement] = []
    conflicts: list[str] = []
    hashed_same: list[tuple[Path, os.stat_result, BlobId]] = []
    started = time.time_ns()
    for path, entry in release.files.items():
        target = safe_target(root, path)
        state = _existing_state(target, entry, cache)
        if state is Existing.SAME_BY_HASH:
            hashed_same.append((target, target.stat(), entry.blob))
        if state in (Existing.SAME, Existing.SAME_BY_HASH):
            continue
        if state is Existing.DIFFERENT:
            conflicts.append(path)
        todo.append(Placement(path, entry, target))
    cache.stat_cache.remember(hashed_same, started)
    if conflicts and not force:
        shown = ", ".join(conflicts[:5]) + (f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
        raise DestinationConflictError(
            f"{len(conflicts)} file(s) in {str(dest)!r} differ from {release.name} {release.version}"
            f" and would be overwritten: {shown} (use --force to replace them)", conflicts)
    return todo


def safe_target(root: Path, path: str) -> Path:
    """``root/path``, refused if a symbolic link would take the write outside ``root``."""
    target = root.joinpath(*path.split("/"))
    parent = Path(os.path.realpath(target.parent))
    if parent != root and root not in parent.parents:
        raise InvalidPathError(f"{path!r} would be written outside {str(root)!r} (through a symbolic link)")
    return target


def _existing_state(target: Path, entry: FileEntry, cache: BlobCache) -> "Existing":
    """What is at ``target`` now, compared with the release's file."""
    if not os.path.lexists(target):
        return Existing.ABSENT
    if target.is_dir() and not target.is_symlink():
        raise DestinationConflictError(f"{str(target)!r} is a folder where the release has a file", [str(target)])
    if target.is_symlink() or not target.is_file():
        return Existing.DIFFERENT
    try:
        info = target.stat()
        if info.st_size != entry.size:
            return Existing.DIFFERENT
        if cache.stat_cache.lookup(target, info) == entry.blob:
            return Existing.SAME
        return Existing.SAME_BY_HASH if hash_file(target)[0] == entry.blob else Existing.DIFFERENT
    except OSError as exc:
        raise DestinationError(f"cannot read {str(target)!r}: {exc.strerror or exc}") from exc


def fetch_blobs(arc: "ArchiveInterface", cache: BlobCache, entries: list[FileEntry], workers: int,
                progress: bool | None) -> None:
    """Copy every distinct blob the cache lacks from ``arc``, in parallel, verified."""
    wanted = {e.blob: e.size for e in entries}
    missing = [(blob, size) for blob, size in wanted.items() if not cache.has(blob, size)]
    bar = make_progress("downloading", sum(size for _, size in missing), len(missing), progress)
    try:
        def job(blob, size) -> None:
            cache.fetch(arc, blob, size, bar.advance)
            bar.file_done()

        run_jobs([lambda b=b, s=s: job(b, s) for b, s in missing], workers)
    finally:
        bar.close()


class Route(Enum):
    """Where a file's bytes come from."""

    LOCAL = "the archive's own blob file, on a local disk"
    CACHE = "the user's cache, filled from the archive first"
    STREAM = "the archive, streamed straight into the destination"


def _route(arc: "ArchiveInterface", entry: FileEntry, link: str, use_cache: bool) -> Route:
    """How to place a file. A link (hard or symbolic) must point into the cache, never into the
    archive, where an edit of a pulled file would corrupt the only copy; an independent file
    is copied from a local archive directly (caching it would only double the bytes written),
    and streamed from a remote one when the cache is not wanted."""
    if link not in INDEPENDENT_MODES:
        return Route.CACHE
    if arc.local_file(layout.blob_key(entry.blob)) is not None:
        return Route.LOCAL
    return Route.CACHE if use_cache else Route.STREAM


def place(arc: "ArchiveInterface", cache: BlobCache, placement: Placement, route: Route, link: str,
          file_mode: int, on_bytes: Callable[[int], None] | None = None) -> None:
    """Place one file, atomically, by ``route``; ``on_bytes`` hears of the bytes written."""
    entry, target = placement.entry, placement.target
    source = cache.verified_path(arc, entry.blob, entry.size) if route is Route.CACHE else None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        safe_target(Path(os.path.realpath(target.parent)), target.name)
        if route is Route.LOCAL:
            _place_from_local_archive(arc, cache, placement, link, file_mode, on_bytes)
        elif route is Route.STREAM:
            with_retries(lambda: _stream_from_archive(arc, placement, file_mode, on_bytes),
                         f"download of {placement.path}")
        else:
            place_file(source, target, link, file_mode)
            if on_bytes is not None:
                on_bytes(entry.size)
    except OSError as exc:
        raise DestinationError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc


def _verified_copy(arc: "ArchiveInterface", stream: BinaryIO, placement: Placement, file_mode: int,
                   on_bytes: Callable[[int], None] | None) -> None:
    """Write ``stream`` (a blob) to the placement's target, checked against its id and size as
    it goes: a corrupt blob raises :class:`IntegrityError` before the target appears."""
    entry = placement.entry
    chunks = verified_chunks(reporting(iter_chunks(stream), on_bytes), entry.blob, entry.size,
                             f"blob {entry.blob.short} in {arc.location}")
    write_file_atomically(placement.target, chunks, file_mode)


def _stream_from_archive(arc: "ArchiveInterface", placement: Placement, file_mode: int,
                         on_bytes: Callable[[int], None] | None) -> None:
    try:
        with arc.open_key(layout.blob_key(placement.entry.blob)) as stream:
            _verified_copy(arc, stream, placement, file_mode, on_bytes)
    except KeyNotFoundError:
        raise IntegrityError(f"blob {placement.entry.blob.short} is missing from {arc.location}") from None


def _place_from_local_archive(arc: "ArchiveInterface", cache: BlobCache, placement: Placement, link: str,
                              file_mode: int, on_bytes: Callable[[int], None] | None) -> None:
    """Copy a blob file of a local archive to its target, verified.

    A blob file hashed before and unchanged since (the stat cache knows its identity, ctime
    included) is copied by the kernel (or reflinked); any other is read once, hashed as it is
    written, and then remembered. Blob files are read-only and replaced only by a rename (a
    new inode), never written in place, so like the cache's own files they need no
    racily-clean margin.
    """
    entry = placement.entry
    blob_file = arc.local_file(layout.blob_key(entry.blob))
    assert blob_file is not None
    try:
        info = os.stat(blob_file)
    except FileNotFoundError:
        raise IntegrityError(f"blob {entry.blob.short} is missing from {arc.location}") from None
    if cache.stat_cache.lookup(blob_file, info) == entry.blob:
        place_file(blob_file, placement.target, link, file_mode)
        if on_bytes is not None:
            on_bytes(entry.size)
        return
    with open(blob_file, "rb") as stream:
        _verified_copy(arc, stream, placement, file_mode, on_bytes)
        unchanged = identity(os.fstat(stream.fileno())) == identity(info)
    if unchanged:
        cache.stat_cache.remember([(blob_file, info, entry.blob)], hashed_at_ns=None)


def _remember_placed(cache: BlobCache, placements: list[Placement], started: int) -> None:
    """Remember what was written, so the next pull into this folder need not re-hash it."""
    entries = []
    for placement in placements:
        try:
            entries.append((placement.target, os.stat(placement.target), placement.entry.blob))
        except OSError:
            continue
    cache.stat_cache.remember(entries, started)


def remove_stale_parts(placements: list[Placement]) -> None:
    """Remove temporary files that a killed download left beside the files it was writing."""
    wanted: dict[Path, set[str]] = {}
    for placement in placements:
        wanted.setdefault(placement.target.parent, set()).add(placement.target.name)
    for folder, names in wanted.items():
        try:
            entries = [e.name for e in os.scandir(folder)]
        except OSError:
            continue
        for entry in entries:
            match = _PART.fullmatch(entry)
            if match and match["name"] in names:
                (folder / entry).unlink(missing_ok=True)
                logger.info("removed %s, left by an interrupted download", folder / entry)


_UMASK: int | None = None


def _umask() -> int:
    """The process umask, read once (reading it means setting it for a moment: main thread only)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def _snapshot(arc: "ArchiveInterface", release: Release, cache: BlobCache, workers: int,
              progress: bool | None) -> Path:
    """A read-only copy of the release in the cache, built aside and renamed into place whole.

    Its files are hard links to the (read-only) cache blobs: the snapshot belongs to the cache.
    """
    final = cache.snapshot_dir(release.name, release.version, release.record_id)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=final.parent, prefix=".building-"))
    try:
        download(arc, release, building, link="hard", jobs=workers, progress=progress, cache=cache)
        os.rename(building, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return final
