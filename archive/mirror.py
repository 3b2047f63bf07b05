"""Mirroring: copy releases from one archive to another, in the order a publish writes them.

Blobs first, each verified against its id as it streams from the source (a corrupt source blob
is never copied), then each release's record blob, and last its pointer, created by a write
that never replaces one. So a mirror, like a publish, is all or nothing per release: a mirror
killed at any point leaves at most blobs no release references yet, and running it again
skips what the target already holds. Blobs the target holds already are leased while they are
looked up and until the pointers exist (see :mod:`archive.leases`), so a gc on the target never
removes them in between. This is how a folder archive moves to other storage, or is published
to the folder a web server serves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import layout
from .errors import KeyExistsError, KeyNotFoundError, ReleaseExistsError, ReleaseNotFoundError
from .hashing import BlobId
from .index import update_indexes
from .leases import lease
from .namespaces import prepare_for_name
from .records import Release
from .transfer import make_progress, run_jobs, with_retries
from .versions import parse_range, parse_version
from .yank import copy_markers

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)


@dataclass
class MirrorReport:
    """What a mirror copied, and what the target held already."""

    copied: list[str] = field(default_factory=list)  # "NAME VERSION" of each release copied
    present: list[str] = field(default_factory=list)  # ... already in the target, identical
    blobs_copied: int = 0
    bytes_copied: int = 0
    blobs_present: int = 0


def mirror(source: "ArchiveInterface", target: "ArchiveInterface", name: str | None = None,
           range: str | None = None, *, jobs: int | None = None, progress: bool | None = None) -> MirrorReport:
    """Copy the releases of ``name`` matching ``range`` (default: every release) to ``target``.

    Raises
    ------
    ReleaseNotFoundError
        ``name`` has no release, or none matches ``range``.
    ReleaseExistsError
        The target holds one of these versions with another record; every other release is
        copied first, and the target's release is left as it is.
    """
    target.check_writable()
    releases = selected_releases(source, name, range)
    report = MirrorReport()
    wanted = {entry.blob: entry.size for release, _ in releases for entry in release.files.values()}
    wanted.update({record: source.stat_key(layout.blob_key(record)).size for _, record in releases})
    workers = jobs or min(source.max_workers, target.max_workers)
    with lease(target, wanted):
        missing = _missing_blobs(target, wanted, workers)
        report.blobs_present = len(wanted) - len(missing)
        _copy_blobs(source, target, missing, workers, progress, report)
        conflicts = [conflict for release, record in releases if (conflict := _commit(target, release, record, report))]
    for each in sorted({release.name for release, _ in releases}):
        update_indexes(target, each)
    copy_markers(source, target, [(release.name, release.version) for release, _ in releases])  # yanks too
    logger.info("mirrored %d releases from %s to %s (%d blobs copied, %d present)", len(report.copied),
                source.location, target.location, report.blobs_copied, report.blobs_present)
    if conflicts:
        raise ReleaseExistsError(f"{len(conflicts)} release(s) exist in {target.location} with other content and"
                                 f" were left as they are: {', '.join(conflicts[:5])}")
    return report


def selected_releases(source: "ArchiveInterface", name: str | None,
                      range: str | None) -> list[tuple[Release, BlobId]]:
    """The releases to copy, read and verified from ``source`` (every version matching ``range``,
    prereleases included), each with the id its pointer names: the record is copied as stored."""
    spec = parse_range(range or "*", include_prerelease=True)
    names = [name] if name else source.names()
    releases = [(source.get_release(each, version), source.release_id(each, version))
                for each in names for version in source.versions(each) if spec.matches(parse_version(version))]
    if name and not releases:
        what = f"no release of {name!r}" + (f" matches {range!r}" if range else "")
        raise ReleaseNotFoundError(f"{what} in {source.location}")
    return releases


def _missing_blobs(target: "ArchiveInterface", wanted: dict[BlobId, int], workers: int) -> dict[BlobId, int]:
    """The blobs ``target`` lacks or holds at another size (asked in parallel)."""
    def holds(blob: BlobId, size: int) -> bool:
        try:
            return target.stat_key(layout.blob_key(blob)).size == size
        except KeyNotFoundError:
            return False

    items = sorted(wanted.items())
    there = run_jobs([lambda b=b, s=s: with_retries(lambda: holds(b, s), f"checking blob {b.short}")
                      for b, s in items], workers)
    return {blob: size for (blob, size), held in zip(items, there) if not held}


def _copy_blobs(source: "ArchiveInterface", target: "ArchiveInterface", missing: dict[BlobId, int],
                workers: int, progress: bool | None, report: MirrorReport) -> None:
    bar = make_progress("mirroring", sum(missing.values()), len(missing), progress)
    try:
        def job(blob: BlobId, size: int) -> None:
            with_retries(lambda: source.copy_blob_to(blob, size, target, bar.advance), f"copy of blob {blob.short}")
            bar.file_done()

        run_jobs([lambda b=b, s=s: job(b, s) for b, s in sorted(missing.items())], workers)
    finally:
        bar.close()
    report.blobs_copied, report.bytes_copied = len(missing), sum(missing.values())


def _commit(target: "ArchiveInterface", release: Release, record: BlobId, report: MirrorReport) -> str | None:
    """Create the release's pointer to ``record`` in ``target`` (whose blobs are all there);
    return ``"NAME VERSION"`` if the target has that version with another record."""
    shown = f"{release.name} {release.version}"
    prepare_for_name(target, release.name)
    try:
        target.write_key(layout.release_key(release.name, release.version), [f"{record}\n".encode()],
                         exclusive=True)
    except KeyExistsError:
        if target.release_id(release.name, release.version) != record:
            return shown
        report.present.append(shown)
        return None
    report.copied.append(shown)
    return None
