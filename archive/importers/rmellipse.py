"""``import_rmellipse``: every release of an rmellipse archive becomes a release of ours.

The import is all or nothing, in the order a publish writes:

1. Read every record of the rmellipse archive (:mod:`.rmellipse_source`) and build our record
   of each release (name, version, files; everything else rmellipse recorded under
   ``metadata["rmellipse"]``). A release our archive holds already with the same content is
   skipped (a rerun imports nothing new); one held with other content stops the import here.
2. Read every blob the new releases use, checking its sha256 and size as it streams, and
   store the ones our archive lacks (content rmellipse stored once per title is stored once).
   One damaged or missing blob stops the import with one line naming it and the release and
   path that use it, before any release is created.
3. Create each release (record blob, then its pointer), then the indexes.

The rmellipse archive is only read, through our backends' read primitives (every file opened
read-only), so a folder or an ``sftp://`` location works. The blobs an import stored before it
failed are taken back (:mod:`.rollback`), so a failed import leaves the archive as it found it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .. import layout
from ..errors import ArchiveError, IntegrityError, InvalidInputError, KeyNotFoundError, ReleaseExistsError, \
    ReleaseNotFoundError
from ..hashing import BlobId, iter_chunks, verified_chunks
from ..index import update_indexes
from ..leases import lease
from ..publish import commit_release
from ..records import FileEntry, Release, check_metadata, parse_record
from ..transfer import make_progress, reporting, run_jobs, with_retries
from .rollback import take_back
from .rmellipse_source import EMPTY, SourceFile, SourceRelease, check_marker, read_releases

if TYPE_CHECKING:
    from ..interface import ArchiveInterface

logger = logging.getLogger(__name__)


@dataclass
class ImportReport:
    """What an import did (or, with ``dry_run``, would do)."""

    imported: list[str] = field(default_factory=list)  # "NAME VERSION" of each release created
    present: list[str] = field(default_factory=list)  # ... already in our archive, same content
    dry_run: bool = False
    blobs_read: int = 0
    bytes_read: int = 0
    blobs_stored: int = 0
    bytes_stored: int = 0


@dataclass(frozen=True)
class _Blob:
    """One blob of the rmellipse archive and the first release path that uses it (for messages)."""

    source: SourceFile
    user: str

    def describe(self) -> str:
        return f"rmellipse blob {self.source.key} (used by {self.user})"


def import_rmellipse(src: "ArchiveInterface", arc: "ArchiveInterface", *, dry_run: bool = False,
                     jobs: int | None = None, progress: bool | None = None) -> ImportReport:
    """Import every release of every workspace of the rmellipse archive ``src`` into ``arc``.

    Parameters
    ----------
    src
        The rmellipse archive, opened with :func:`archive.locations.make_backend` (it has no
        marker of ours); only read.
    arc
        Our archive.
    dry_run
        Only find out what would be imported (records are read, blobs are not).
    jobs, progress
        Parallel transfers and progress bars, as for a publish.

    Returns
    -------
    ImportReport
        The releases imported (or to import) and those present already.

    Raises
    ------
    InvalidInputError
        ``src`` is not an rmellipse archive, or holds a name or version we cannot take.
    IntegrityError
        A record or a blob of ``src`` is damaged or missing; nothing was imported.
    ReleaseExistsError
        ``arc`` holds one of these versions with other content; nothing was imported.
    """
    arc.check_writable()
    check_marker(src)
    report = ImportReport(dry_run=dry_run)
    todo = [(source, release) for source, release in _planned(read_releases(src))
            if not _is_present(arc, release, report)]
    if dry_run:
        report.imported = [release.shown for release, _ in todo]
        return report
    stored: set[BlobId] = set()
    try:
        _store_and_commit(src, arc, todo, jobs, progress, report, stored)
    except BaseException:
        if not report.imported:  # nothing references what was stored: take it back
            report.blobs_stored -= take_back(arc, stored)
        raise
    for name in sorted({release.name for _, release in todo}):
        update_indexes(arc, name)
    return report


def _store_and_commit(src: "ArchiveInterface", arc: "ArchiveInterface", todo: list[tuple[SourceRelease, Release]],
                      jobs: int | None, progress: bool | None, report: ImportReport, stored: set[BlobId]) -> None:
    """Steps 2 and 3: every blob read, checked and (when new) stored, then every release created.
    ``stored`` receives each blob this import wrote, as it is written."""
    blobs = _blobs_of(todo)
    with lease(arc, {blob.source.blob for blob in blobs} | {EMPTY}):
        _read_and_store(src, arc, blobs, jobs or min(src.max_workers, arc.max_workers), progress, report, stored)
        if any(not entry.size for _, release in todo for entry in release.files.values()) \
                and not arc.has_key(layout.blob_key(EMPTY)):
            arc.write_key(layout.blob_key(EMPTY), [b""])  # rmellipse may store no blob for an empty file
            stored.add(EMPTY)
        for source, release in todo:
            commit_release(arc, release)
            report.imported.append(source.shown)
            logger.info("imported %s from %s", source.shown, source.record_key)


def _planned(releases: list[SourceRelease]) -> list[tuple[SourceRelease, Release]]:
    """Our record of each rmellipse release (built and checked like a stored one)."""
    planned = []
    for source in releases:
        files = {each.path: FileEntry(each.blob, each.size) for each in source.files}
        try:
            release = Release(source.name, source.version, source.created, check_metadata(source.metadata),
                              dict(sorted(files.items())))
            planned.append((source, parse_record(release.to_bytes(), source.record_key)))
        except ArchiveError as exc:
            raise InvalidInputError(f"rmellipse record {source.record_key}: {exc}") from None
    return planned


def _is_present(arc: "ArchiveInterface", release: Release, report: ImportReport) -> bool:
    """True if ``arc`` holds ``release`` with the same content; raise if with other content."""
    try:
        stored = arc.get_release(release.name, release.version)
    except ReleaseNotFoundError:
        return False
    if not stored.same_content(release):
        raise ReleaseExistsError(f"{release.name} {release.version} exists in {arc.location} with other content;"
                                 " nothing was imported")
    report.present.append(f"{release.name} {release.version}")
    return True


def _blobs_of(todo: list[tuple[SourceRelease, Release]]) -> list[_Blob]:
    """Each blob key of the rmellipse archive the new releases use, once, with its first user."""
    blobs: dict[str, _Blob] = {}
    for source, _ in todo:
        for each in source.files:
            if each.key is not None and each.key not in blobs:
                blobs[each.key] = _Blob(each, f"{source.shown} {each.path!r}")
    return list(blobs.values())


def _read_and_store(src: "ArchiveInterface", arc: "ArchiveInterface", blobs: list[_Blob], workers: int,
                    progress: bool | None, report: ImportReport, stored: set[BlobId]) -> None:
    """Read and check every blob; store in ``arc`` the first copy of each content it lacks."""
    missing = _missing(arc, blobs, workers)
    claimed: set = set()
    lock = threading.Lock()

    def job(blob: _Blob) -> None:
        with lock:
            store = blob.source.blob in missing and blob.source.blob not in claimed
            claimed.add(blob.source.blob)
        with_retries(lambda: _copy(src, arc if store else None, blob, bar.advance), f"reading {blob.source.key}")
        if store:
            with lock:
                stored.add(blob.source.blob)
                report.blobs_stored += 1
                report.bytes_stored += blob.source.size
        bar.file_done()

    bar = make_progress("importing", sum(b.source.size for b in blobs), len(blobs), progress)
    try:
        run_jobs([lambda b=b: job(b) for b in blobs], workers)
    finally:
        bar.close()
    report.blobs_read, report.bytes_read = len(blobs), sum(b.source.size for b in blobs)


def _missing(arc: "ArchiveInterface", blobs: list[_Blob], workers: int) -> set:
    """The contents ``arc`` lacks (or holds at another size), asked once each, in parallel."""
    sizes = {blob.source.blob: blob.source.size for blob in blobs}

    def lacks(blob_id, size: int) -> bool:
        try:
            return arc.stat_key(layout.blob_key(blob_id)).size != size
        except KeyNotFoundError:
            return True

    items = sorted(sizes.items())
    answers = run_jobs([lambda b=b, s=s: with_retries(lambda: lacks(b, s), f"checking blob {b.short}")
                        for b, s in items], workers)
    return {blob_id for (blob_id, _), lacking in zip(items, answers) if lacking}


def _copy(src: "ArchiveInterface", target: "ArchiveInterface | None", blob: _Blob,
          advance: Callable[[int], None]) -> None:
    """Stream one rmellipse blob, checking it; into ``target`` (None: only check it)."""
    what = blob.describe()
    try:
        with src.open_key(blob.source.key) as stream:
            chunks = verified_chunks(reporting(iter_chunks(stream), advance), blob.source.blob, blob.source.size, what)
            if target is None:
                for _ in chunks:
                    pass
            else:
                target.write_key(layout.blob_key(blob.source.blob), chunks)
    except KeyNotFoundError:
        raise IntegrityError(f"{what} is missing; nothing was imported") from None
    except IntegrityError as exc:
        raise IntegrityError(f"{exc}; nothing was imported") from None
