"""Downloading a release: fetch missing blobs into the cache, then materialize the files.

Every byte placed in a destination comes from a blob verified against its id: a cache blob,
when it was fetched and again before use unless the stat cache knows it unchanged since; a
blob streamed from the archive (large files, :data:`archive.placing.LARGE_BLOB`, kept out of
the cache, and every file with ``use_cache=False``), as it streams. Each file is
placed through a temporary file beside its target and renamed over it only once complete, so
an interrupted download never leaves a partial or corrupt file under a release path; the
temporaries of a killed download are removed by the next one, never those of a live one
(:mod:`archive.inflight`). Files already there with the right content are kept (their
executable bit fixed if needed); every conflict (other content, a link, a special file, a
folder where a file goes, a file where a folder goes) is found before anything is written, and
the whole download is refused unless ``force`` settles them. Nothing is ever written outside
the destination, whatever the record says and whatever symbolic links the destination holds.

A pull of many small files in a mode that copies places them from worker processes first
(:mod:`archive.place_workers`: one core cannot keep up with ``cp -r``), and the files they
could not place through the path described here, which also says what went wrong.

A pull into a folder ends by writing its marker (:mod:`archive.placed`), which ``status`` and
``exact`` read. In the ``hard`` and ``symlink`` modes an executable file is a read-only copy,
never a link: a cache blob is never made executable.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .cache import BlobCache, default_cache
from .destination import (Conflict, Folders, Found, Kind, as_placed_before, check_inside, compare,
                          conflict_of, find, in_the_way, make_folders, refuse, remove_files)
from .errors import DestinationError, InvalidInputError, InvalidPathError
from .materialize import INDEPENDENT_MODES, check_link_mode, creation_gives_mode, remove_stale_temporaries
from .staging import can_stage, reveal_folder, staged_folder
from .placed import MARKER_DIR, MARKER_FILE, is_reserved, leftovers, read_marker, remove_empty_folders, \
    write_marker
from .records import FileEntry, Release
from .selection import PartOfRelease
from .placing import LARGE_BLOB, Caching, Placement, Route, SmallWriter, Source, place, source_of
from .place_workers import place_small, plan_split
from .small_blobs import cache_small_blobs, fetch_small_blobs
from .transfer import Progress, make_progress, run_jobs

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
SMALL_FILE = 256 * 1024


@dataclass(frozen=True)
class PullReport:
    """What a pull did: the folder, how many files the release has, how many were written and
    how many were already there, and (``exact``) the files of an earlier pull removed or kept."""

    folder: Path
    files: int
    written: int
    already_there: int
    removed: tuple[str, ...] = ()
    kept_edited: tuple[str, ...] = ()


def download(arc: "ArchiveInterface", release: Release, dest: Path | None, *, force: bool = False,
             link: str = "auto", jobs: int | None = None, progress: bool | None = None,
             cache: BlobCache | None = None, use_cache: bool = True, exact: bool = False,
             cache_large: bool = False) -> Path:
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
    cache_large
        Also keep large blobs (:data:`~archive.placing.LARGE_BLOB` and up) in the cache when
        pulling a remote archive into ``dest`` in a mode that makes independent files: by
        default they are written once, straight into ``dest``, and only smaller blobs are kept
        (a later pull into another folder, or offline, then needs no download of them).
    exact
        Make ``dest`` equal the release: also remove the files an earlier pull placed there that
        this release lacks, if unchanged since (edited ones too with ``force``), and the folders
        that leaves empty. A file no pull placed is never removed.

    Raises
    ------
    DestinationConflictError
        Paths in ``dest`` conflict with the release (all are named) and ``force`` does not
        settle them; nothing was written.
    IntegrityError
        A blob does not match its id or size, in the archive or (twice) in the cache.
    """
    return pull(arc, release, dest, force=force, link=link, jobs=jobs, progress=progress, cache=cache,
                use_cache=use_cache, exact=exact, cache_large=cache_large).folder


def pull(arc: "ArchiveInterface", release: Release, dest: Path | None, *, force: bool = False,
         link: str = "auto", jobs: int | None = None, progress: bool | None = None,
         cache: BlobCache | None = None, use_cache: bool = True, exact: bool = False,
         cache_large: bool = False) -> PullReport:
    """:func:`download`, reporting what was done (for the command line's summary)."""
    cache = cache or default_cache()
    check_link_mode(link)
    workers = jobs or arc.max_workers
    if not use_cache and (dest is None or link not in INDEPENDENT_MODES):
        raise InvalidInputError("a pull without the cache needs a destination folder and a link mode"
                                f" that makes independent files ({', '.join(sorted(INDEPENDENT_MODES))})")
    if cache_large and not use_cache:
        raise InvalidInputError("a pull cannot both keep large files in the cache and keep nothing there")
    if dest is None and isinstance(release, PartOfRelease):
        raise InvalidInputError("a pull of part of a release (--include/--exclude) needs a destination folder (--to)")
    cache.clean_stale()
    if dest is None:
        return _snapshot(arc, release, cache, workers, progress)
    reserved = [path for path in release.files if is_reserved(path)]
    if reserved:
        raise InvalidPathError(f"{release.name} {release.version} has {reserved[0]!r}: '.archive' at the top of"
                               " a folder is reserved for the record of what a pull placed")
    caching = Caching.of(use_cache, cache_large)
    return _fill(arc, release, dest, force, link, workers, progress, cache, caching, exact, marker=True)


def _fill(arc: "ArchiveInterface", release: Release, dest: Path, force: bool, link: str, workers: int,
          progress: bool | None, cache: BlobCache, caching: Caching, exact: bool, marker: bool) -> PullReport:
    """Plan everything, refuse conflicts, then write: leftovers out, files in, marker last."""
    if dest.exists() and not dest.is_dir():
        raise InvalidInputError(f"destination {str(dest)!r} exists and is not a folder")
    root = Path(os.path.realpath(dest))
    if marker and link in INDEPENDENT_MODES and can_stage(root) and not _streams(arc, cache, release, link, caching):
        report = _fill_new_folder(arc, release, dest, root, link, workers, progress, cache, caching)
        if report is not None:
            return report
    fresh = not os.path.lexists(root)
    previous = read_marker(root) if marker else None
    old = leftovers(root, previous, release, force, cache.stat_cache) if exact else None
    removing = set(old.remove) if old else set()
    placed_before = {**previous.earlier, **previous.files} if previous else {}
    placements, kept, in_the_way = plan(release, root, dest, force, cache, link, removing, marker, placed_before)
    early = sorted(p for p in removing if p in in_the_way)  # leftovers where folders must go
    remove_files(root, early)
    remove_files(root, [p for p in in_the_way if p not in removing])
    if not fresh:  # a folder that did not exist holds no leftover of a killed pull
        remove_stale_parts(placements)
    elif marker:  # but a killed pull that built it aside may have left its hidden folder beside it
        remove_stale_temporaries(root.parent, {root.name})
    if marker:
        remove_stale_temporaries(root / MARKER_DIR, {"pulled.json"})
    _place_all(arc, cache, root, placements, link, workers, progress, caching)
    remove_files(root, sorted(removing.difference(early)))  # the rest once the new files are in place
    remove_empty_folders(root, sorted(removing))
    if marker:
        earlier = old.kept if old else placed_before
        write_marker(root, release, arc.location, earlier)
    written = sum(1 for p in placements if not p.mode_only)
    logger.info("downloaded %s %s into %s (%d files written)", release.name, release.version, dest, written)
    return PullReport(dest, len(release.files), written, len(release.files) - written, tuple(sorted(removing)),
                      tuple(sorted(old.kept)) if old else ())


def _fill_new_folder(arc: "ArchiveInterface", release: Release, dest: Path, root: Path, link: str, workers: int,
                     progress: bool | None, cache: BlobCache, caching: Caching) -> PullReport | None:
    """Pull into ``root``, which does not exist yet: build it aside, every file and the marker,
    and give it its name whole (:mod:`archive.staging`). An error or an interrupt leaves
    nothing at ``root``. None, having written nothing there, where it cannot be built aside or
    came to exist meanwhile: the caller then fills it as it finds it.
    """
    with staged_folder(root) as building:
        if building is None:
            return None
        placements = _all_new(release, building)
        _place_all(arc, cache, building, placements, link, workers, progress, caching, in_place=True)
        write_marker(building, release, arc.location, {})
        if not reveal_folder(building, root):
            logger.info("%s appeared while the pull ran: filling it as it is", dest)
            return None
    logger.info("downloaded %s %s into %s (%d files written)", release.name, release.version, dest, len(placements))
    return PullReport(dest, len(release.files), len(placements), 0)


def _streams(arc: "ArchiveInterface", cache: BlobCache, release: Release, link: str, caching: Caching) -> bool:
    """Whether some file of ``release`` would stream straight from the archive into the
    destination. Such a pull is not built aside: one interrupted keeps the files it placed (a
    large download's worth), for the next to reuse, where a folder built aside would be removed."""
    if caching is Caching.NONE:
        return True
    large = {entry.blob.hexdigest: entry for entry in release.files.values() if entry.size >= LARGE_BLOB}
    shared = _large_blobs_used_twice(release.files.values())
    return any(key not in shared and source_of(arc, cache, entry, link, caching).route is Route.STREAM
               for key, entry in large.items())


def _large_blobs_used_twice(entries: Iterable[FileEntry]) -> set[str]:
    """The large blobs more than one of ``entries`` holds (hex digests). A pull fetches such a
    blob once, into the cache, and copies it from there to each file, instead of streaming it
    from the archive once per file."""
    seen: set[str] = set()
    twice: set[str] = set()
    for entry in entries:
        if entry.size >= LARGE_BLOB:
            key = entry.blob.hexdigest
            (twice if key in seen else seen).add(key)
    return twice


def _all_new(release: Release, root: Path) -> list[Placement]:
    """A placement for every file of ``release``, into ``root``, a folder known to be new."""
    target_of = Folders(root).target_of
    return [Placement(path, entry, target_of(path)) for path, entry in release.files.items()]


def _place_all(arc: "ArchiveInterface", cache: BlobCache, root: Path, placements: list[Placement], link: str,
               workers: int, progress: bool | None, caching: Caching, in_place: bool = False) -> None:
    """Place every file, in parallel; a blob the cache lacks is fetched by the job of the first
    file that needs it, just before that file is placed. ``in_place``: ``root`` is a staged
    folder (:mod:`archive.staging`), where small files are written straight at their names.

    Fetching and placing in the same job overlaps the copy out of the cache (a second write
    of each byte, by the kernel) with the transfers of the other jobs, instead of running all
    the copies after the last transfer. Files of one blob wait for its one fetch.
    """
    writes = [p for p in placements if not p.mode_only]
    started = time.time_ns()
    write_small = SmallWriter(_make_parent_folders(root, placements), in_place)
    split = plan_split(arc, cache, writes, link, caching, workers)
    sources, missing = _sources(arc, cache, writes, link, caching) if split is None else ({}, {})
    fetching = missing or any(source.route is Route.STREAM for source in sources.values())
    bar = make_progress("downloading" if fetching else "writing", sum(p.entry.size for p in writes), len(writes),
                        progress)
    try:
        if split is not None:  # the small files from local blobs, in worker processes first
            placements = place_small(placements, split, write_small, bar)
            sources, missing = _sources(arc, cache, [p for p in placements if not p.mode_only], link, caching)
        no_source = Source(Route.CACHE)
        rest = _fetch_small(arc, cache, placements, sources, set(missing), link, workers, bar, write_small)

        def job(placement: Placement) -> None:
            entry = placement.entry
            key = entry.blob.hexdigest
            fetching = missing.get(key)
            if fetching is not None:
                with fetching:  # the first job of a blob fetches it (reporting its bytes); the others wait
                    fetched = not cache.has(entry.blob, entry.size)
                    if fetched:
                        cache.fetch(arc, entry.blob, entry.size, bar.advance)
            else:
                fetched = False
            place(arc, cache, placement, sources.get(key, no_source), link, None if fetched else bar.advance,
                  write_small=write_small)
            bar.file_done()

        threads = workers if missing else _placing_workers(rest, sources, workers)
        if threads == 1:  # what run_jobs does on one thread, without a callable per file
            for placement in rest:
                job(placement)
        else:
            run_jobs([functools.partial(job, p) for p in rest], threads)
    finally:
        bar.close()
        cache.save_verified()
    _remember_placed(cache, placements, started, link)


def _sources(arc: "ArchiveInterface", cache: BlobCache, writes: list[Placement], link: str, caching: Caching,
             ) -> tuple[dict[str, Source], dict[str, threading.Lock]]:
    """Each blob's source (asked once per blob), and a lock for each the cache must fetch first.

    Keyed by the hex digest, whose hash Python keeps, not by the BlobId, whose hash is computed
    anew by each lookup (a few per file).
    """
    blobs = {p.entry.blob.hexdigest: p.entry for p in writes}
    sources = {key: source_of(arc, cache, entry, link, caching) for key, entry in blobs.items()}
    if caching is Caching.SMALL:
        for key in _large_blobs_used_twice(p.entry for p in writes):
            if sources[key].route is Route.STREAM:
                sources[key] = Source(Route.CACHE)
    missing = {key: threading.Lock() for key, source in sources.items()
               if source.route is Route.CACHE and not cache.has(blobs[key].blob, blobs[key].size)}
    return sources, missing


def _fetch_small(arc: "ArchiveInterface", cache: BlobCache, placements: list[Placement], sources: dict[str, Source],
                 missing: set[str], link: str, workers: int, bar: Progress, write_small: SmallWriter) -> list[Placement]:
    """Read the small blobs the cache lacks, or that a pull without the cache streams, in groups
    (:meth:`~archive.interface.ArchiveInterface.read_keys`), and place their files; return the
    placements left to the per-file jobs (see :mod:`archive.small_blobs`)."""
    wanted = missing.union(key for key, source in sources.items() if source.route is Route.STREAM)
    return fetch_small_blobs(arc, cache, placements, sources, wanted, link, workers, bar, write_small)


def _make_parent_folders(root: Path, placements: list[Placement]) -> set[str]:
    """Create the folders the files go in, iteratively and each once, in this thread, and check
    each again (once) just before the writes: none may have become a link leading outside.

    Returns those (release-relative, ``""`` for ``root``) where a new file gets its mode from
    its creation alone (:func:`~archive.materialize.creation_gives_mode`): asked once per folder
    here, it spares a ``chmod`` per file.
    """
    root.mkdir(parents=True, exist_ok=True)
    made: set[str] = set()
    folders = {placement.path.rpartition("/")[0] for placement in placements}  # strings: 1 per file
    for folder in folders:
        make_folders(root, folder, made)
    prefix = os.path.join(str(root), "")
    paths = {folder: prefix + folder.replace("/", os.sep) if folder else str(root) for folder in folders}
    _check_folders_inside(root, prefix, made)
    return creation_gives_mode(paths)


def _check_folders_inside(root: Path, prefix: str, folders: set[str]) -> None:
    """Refuse the pull if one of ``folders`` (release-relative, with all their parents) leads
    outside ``root``: an ``lstat`` each, and the full check only for a symbolic link (one an
    earlier pull or the user made, which may lead inside). A path of real folders below
    ``root`` (already resolved) cannot leave it; a ``realpath`` of each costs a ``stat`` per level.
    """
    for folder in folders:
        path = prefix + folder.replace("/", os.sep)
        try:
            mode = os.lstat(path).st_mode
        except OSError as exc:
            raise DestinationError(f"cannot read {path!r}: {exc.strerror or exc}") from exc
        if stat.S_ISLNK(mode):
            check_inside(root, Path(path), folder)
        elif not stat.S_ISDIR(mode):
            raise DestinationError(f"{path!r} exists and is not a folder")


def _placing_workers(placements: list[Placement], sources: dict[str, Source], workers: int) -> int:
    """Threads for placing files: all of them when files stream from the archive (each waits on
    the network) or are large (the kernel copies without the GIL); one for small local files,
    where per-file Python work dominates and threads only contend."""
    if not placements:
        return 1
    if any(source.route is Route.STREAM for source in sources.values()):
        return workers
    average = sum(p.entry.size for p in placements) / len(placements)
    return workers if average >= SMALL_FILE else 1


def plan(release: Release, root: Path, dest: Path, force: bool, cache: BlobCache, link: str,
         removing: set[str], marker: bool, placed_before: dict[str, FileEntry] | None = None,
         ) -> tuple[list[Placement], int, list[str]]:
    """The files to write into ``root``: all but those already there as the release has them.

    A file still exactly as an earlier pull placed it (``placed_before``, from the folder's
    marker) is replaced without asking: it holds nothing of the user's.

    Returns the placements, how many files are already there, and the non-folders standing
    where folders must go (removed before writing: leftovers of an earlier pull, or with
    ``force``). Every conflict is found before any is reported, and reported in one
    :class:`DestinationConflictError`.
    """
    if not os.path.isdir(root):  # a new folder: nothing there to compare, nothing in the way
        return _all_new(release, root), 0, []
    folders = Folders(root)
    todo: list[Placement] = []
    conflicts: list[Conflict] = []
    kept = 0
    for path, entry in release.files.items():
        found = find(folders, path)
        if found.kind is Kind.ABSENT:
            todo.append(Placement(path, entry, found.target))
            continue
        state = compare(found, entry, cache, link)
        if state == "same":
            kept += 1
        elif state == "mode":
            todo.append(Placement(path, entry, found.target, mode_only=True))
        else:
            if state == "conflict" and not as_placed_before(found, (placed_before or {}).get(path), cache):
                conflicts.append(Conflict(path, "other content", True) if found.kind is Kind.FILE
                                 else conflict_of(found))
            todo.append(Placement(path, entry, found.target))
    if marker:
        folders.ancestors_clear(MARKER_FILE)
    conflicts.extend(in_the_way(p) for p, info in folders.in_the_way.items() if p not in removing
                     and not as_placed_before(Found(p, folders.target_of(p), Kind.FILE, info),
                                              (placed_before or {}).get(p), cache))
    refuse(conflicts, dest, f"{release.name} {release.version}", force)
    return todo, kept, list(folders.in_the_way)


def fetch_blobs(arc: "ArchiveInterface", cache: BlobCache, entries: list[FileEntry], workers: int,
                progress: bool | None) -> None:
    """Copy every distinct blob the cache lacks from ``arc``, in parallel, verified."""
    wanted = {e.blob: e.size for e in entries}
    missing = [(blob, size) for blob, size in wanted.items() if not cache.has(blob, size)]
    bar = make_progress("downloading", sum(size for _, size in missing), len(missing), progress)
    try:
        missing = cache_small_blobs(arc, cache, missing, workers, bar)  # in groups (archive.small_blobs)

        def job(blob, size) -> None:
            cache.fetch(arc, blob, size, bar.advance)
            bar.file_done()

        run_jobs([lambda b=b, s=s: job(b, s) for b, s in missing], workers)
    finally:
        bar.close()
        cache.save_verified()


def _remember_placed(cache: BlobCache, placements: list[Placement], started: int, link: str) -> None:
    """Remember what was placed, so the next pull into this folder need not re-hash it.

    Only files whose content is older than this pull can be remembered (the racily-clean rule
    of :mod:`archive.statcache`): links to the cache's files, and files only made executable or
    not. A file this pull wrote is newer than ``started``, so it is not even looked at.
    """
    entries = []
    for placement in placements:
        if link in INDEPENDENT_MODES and not placement.mode_only:
            continue
        try:
            entries.append((placement.target, os.stat(placement.target), placement.entry.blob))
        except OSError:
            continue
    cache.stat_cache.remember(entries, started)


def remove_stale_parts(placements: list[Placement]) -> None:
    """Remove the temporaries a killed download left beside the files this one writes."""
    wanted: dict[str, set[str]] = {}
    for placement in placements:
        if not placement.mode_only:
            folder, name = os.path.split(placement.target)
            wanted.setdefault(folder, set()).add(name)
    for folder, names in wanted.items():
        remove_stale_temporaries(Path(folder), names)


def _snapshot(arc: "ArchiveInterface", release: Release, cache: BlobCache, workers: int,
              progress: bool | None) -> PullReport:
    """A read-only copy of the release in the cache, built aside and renamed into place whole.

    Its files are hard links to the (read-only) cache blobs: the snapshot belongs to the cache.
    One that exists is checked again like any destination (a ``stat`` per file while its files
    are still the cache's verified blobs) and repaired: a file deleted, edited or left behind by
    an evicted blob is placed again.
    """
    final = cache.snapshot_dir(release.name, release.version, release.record_id)
    if final.is_dir():
        return _fill(arc, release, final, True, "hard", workers, progress, cache, Caching.ALL, False, marker=False)
    with cache.building_folder() as building:
        report = _fill(arc, release, building, False, "hard", workers, progress, cache, Caching.ALL, False,
                       marker=False)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(building, final)
        except OSError:
            if not final.is_dir():
                raise
            # another process finished the same snapshot first: use (and check) its copy
            return _fill(arc, release, final, True, "hard", workers, progress, cache, Caching.ALL, False, marker=False)
    return PullReport(final, report.files, report.written, report.already_there)
