"""Checking an archive, or the local cache, against its own contract.

``verify`` reads every release record (pointer, record hash, schema, name and version), checks
that every blob it references exists with the recorded size, and with ``full`` re-hashes each
blob. It also compares the derived index files with the pointers; a stale index is a warning
(the releases themselves are sound, and the next publish, or ``repair``, rewrites it), not an
error. Findings are returned, never printed: the CLI decides how to show them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from . import layout
from .errors import ArchiveError, KeyNotFoundError, NoMatchingVersionError
from .namespaces import no_release_named
from .hashing import BlobId, iter_chunks, verified_chunks
from .index import list_versions, update_indexes, versions_in_index
from .transfer import make_progress, run_jobs
from .versions import parse_range, parse_version

if TYPE_CHECKING:
    from .cache import BlobCache
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """What a verification found: errors make it fail, warnings do not."""

    releases: int = 0
    blobs: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def verify_archive(arc: "ArchiveInterface", name: str | None = None, range: str | None = None, *,
                   full: bool = False, repair: bool = False, jobs: int | None = None,
                   progress: bool | None = None) -> VerifyReport:
    """Verify the releases of ``name`` matching ``range`` (default: every release).

    Raises
    ------
    ReleaseNotFoundError
        ``name`` is given but has no release (a typo must not verify nothing and pass).
    NoMatchingVersionError
        ``name`` and ``range`` are given, but no version of ``name`` matches.
    """
    if repair:
        arc.check_writable()  # a repair writes: refused at once, not skipped in silence
    report = VerifyReport()
    names = [name] if name is not None else arc.names()
    spec = parse_range(range or "*", include_prerelease=True)
    sizes: dict[BlobId, int] = {}
    for each in names:
        versions = arc.versions(each)
        matching = [v for v in versions if spec.matches(parse_version(v))]
        if name is not None and not versions:
            raise no_release_named(arc, name)
        if name is not None and range is not None and not matching:
            raise NoMatchingVersionError(f"no version of {name!r} matches {range!r} (have {', '.join(versions[:8])}"
                                         f"{', ...' if len(versions) > 8 else ''})")
        for version in matching:
            _check_release(arc, each, version, report, sizes)
        _check_index(arc, each, report, repair)
    report.blobs, report.bytes = len(sizes), sum(sizes.values())
    _check_blobs(arc, sizes, full, report, jobs or arc.max_workers, progress, repair)
    return report


def _check_release(arc: "ArchiveInterface", name: str, version: str, report: VerifyReport,
                   sizes: dict[BlobId, int]) -> None:
    try:
        release = arc.get_release(name, version)
    except ArchiveError as exc:
        report.errors.append(f"{name} {version}: {exc}")
        return
    report.releases += 1
    for path, entry in release.files.items():
        known = sizes.setdefault(entry.blob, entry.size)
        if known != entry.size:
            report.errors.append(f"{name} {version}: {path} says blob {entry.blob.short} has {entry.size}"
                                 f" bytes, another record says {known}")


def _check_index(arc: "ArchiveInterface", name: str, report: VerifyReport, repair: bool) -> None:
    """Compare the derived versions index with the pointers (only where listing is possible)."""
    if not arc.listable:
        return
    try:
        missing = set(list_versions(arc, name)) - set(versions_in_index(arc, name))
    except ArchiveError as exc:
        missing, problem = {"?"}, str(exc)
    else:
        problem = f"index lacks {', '.join(sorted(missing))}"
    if not missing:
        return
    if repair and not arc.read_only:
        update_indexes(arc, name)
        report.warnings.append(f"{name}: {problem}; repaired")
    else:
        report.warnings.append(f"{name}: {problem} (publish again or run verify --repair)")


def _check_blobs(arc: "ArchiveInterface", sizes: dict[BlobId, int], full: bool, report: VerifyReport,
                 workers: int, progress: bool | None, repair: bool = False) -> None:
    total = sum(sizes.values()) if full else 0
    bar = make_progress("verifying", total, len(sizes), progress)
    try:
        def job(blob: BlobId, size: int) -> str | None:
            problem = _blob_problem(arc, blob, size, full, bar.advance)
            if problem == _MISSING:
                problem = _missing_blob(arc, blob, repair, report)
            bar.file_done()
            return problem

        problems = run_jobs([lambda b=b, s=s: job(b, s) for b, s in sorted(sizes.items())], workers)
    finally:
        bar.close()
    report.errors.extend(p for p in problems if p)


def _blob_problem(arc: "ArchiveInterface", blob: BlobId, size: int, full: bool, advance) -> str | None:
    """None if the blob is sound, else a one-line description."""
    key = layout.blob_key(blob)
    try:
        stored = arc.stat_key(key).size
        if stored != size:
            return f"blob {blob.short}: {stored} bytes stored, {size} recorded"
        if full:
            with arc.open_key(key) as stream:
                for chunk in verified_chunks(iter_chunks(stream), blob, size, f"blob {blob.short}"):
                    advance(len(chunk))
    except KeyNotFoundError:
        return _MISSING
    except ArchiveError as exc:
        return str(exc)
    return None


_MISSING = "missing"


def _missing_blob(arc: "ArchiveInterface", blob: BlobId, repair: bool, report: VerifyReport) -> str | None:
    """Describe a missing blob; one that an interrupted gc left in ``trash/`` is put back with
    ``repair`` (as the next gc would do)."""
    trash = layout.trash_key(blob)
    if not arc.has_key(trash):
        return f"blob {blob.short} is missing"
    if not repair or arc.read_only:
        return f"blob {blob.short} is missing: an interrupted gc left it in {trash} (verify --repair puts it back)"
    arc.move_key(trash, layout.blob_key(blob))
    report.warnings.append(f"blob {blob.short} was in {trash}, left by an interrupted gc; repaired")
    return None


def verify_cache(cache: "BlobCache", *, jobs: int = 4, progress: bool | None = None) -> VerifyReport:
    """Re-hash every blob in the local cache; corrupt ones are evicted (the cache is disposable).

    What killed downloads left there (partial blobs, half-built snapshots) is removed first,
    and reported as a warning; what live downloads are writing is left alone.
    """
    report = VerifyReport()
    stale = cache.clean_stale()
    if stale:
        report.warnings.append(f"removed {len(stale)} temporary file(s) left by interrupted downloads")
    blobs = [(blob, cache.store.stat_key(layout.blob_key(blob)).size) for blob in _cached_blobs(cache)]
    report.blobs, report.bytes = len(blobs), sum(size for _, size in blobs)

    def job(blob: BlobId, size: int) -> str | None:
        problem = _blob_problem(cache.store, blob, size, True, lambda n: None)
        if problem == _MISSING:
            return None  # removed meanwhile: nothing to check
        if problem:
            cache.evict(blob)
            return f"{problem} (evicted)"
        return None

    report.errors.extend(p for p in run_jobs([lambda b=b, s=s: job(b, s) for b, s in blobs], jobs) if p)
    return report


def _cached_blobs(cache: "BlobCache") -> Iterator[BlobId]:
    from .gc import list_blob_keys

    for key in list_blob_keys(cache.store):
        yield layout.blob_id_from_key(key)

