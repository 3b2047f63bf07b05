"""Garbage collection: remove blobs no release references, stale temporaries and leases.

Only what is older than a grace period (24 hours by default) is removed, so a publish in
flight, whose new blobs are not referenced until its record is committed at the very end, is
never harmed. The same holds for its temporary files: those a folder archive keeps for a batch
of small writes (:mod:`archive.backends.filesystem_batch`) are flushed within seconds, younger
than the publish's new blobs; one taken anyway (a grace shorter than the publish) fails that
publish's flush with an error instead of leaving a release without it. If any release cannot be read, nothing is removed: an unreadable record might
reference any blob, and deleting data on a guess is the one mistake an archive cannot undo.

A publish may also *reuse* an old unreferenced blob (left by a publish killed days ago) while
gc runs. gc therefore never deletes a blob where it stands. It works in two steps:

1. **Set aside.** Each old unreferenced blob is moved to ``trash/`` (an atomic rename that keeps
   its mtime), then its mtime is read again: a blob a writer stored anew just before the move
   is young and goes straight back.
2. **Empty the trash.** gc reads the leases (:mod:`archive.leases`), then the releases again, and
   puts back every trashed blob either names; only the rest is deleted.

A publish writes its lease before it checks which blobs are stored, and removes it only after
its release pointer exists. So a reused blob is either named by a lease or a release that gc
reads in step 2, or it was already in the trash when the publish looked for it, and the
publish uploaded it again. A gc killed between the steps leaves blobs in ``trash/``; the next
gc run puts back those that are referenced before it removes anything.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from . import layout
from .errors import ArchiveError, IntegrityError, InvalidInputError, KeyNotFoundError
from .hashing import BlobId
from .leases import lease_keys, leased_blobs

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
DEFAULT_GRACE_HOURS = 24.0
_FAN = re.compile(r"[0-9a-f]{2}")
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass
class GcReport:
    """What gc removed (or, with ``dry_run``, would remove)."""

    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    kept_young: int = 0
    #: Blobs set aside (now or by an earlier, interrupted gc) and put back because a release or
    #: a publish in flight references them.
    restored: list[str] = field(default_factory=list)

    def count(self, key: str, size: int) -> None:
        self.removed.append(key)
        self.bytes_freed += size


def list_blob_keys(arc: "ArchiveInterface", top: str = layout.BLOBS_DIR) -> Iterator[str]:
    """Every blob key below ``top`` (the store, or the trash); names that are not blob ids are skipped."""
    for fan in sorted(arc.list_keys(top)):
        if _FAN.fullmatch(fan):
            for name in sorted(arc.list_keys(f"{top}/{fan}")):
                if _HEX.fullmatch(name) and name.startswith(fan):
                    yield f"{top}/{fan}/{name}"


def live_blobs(arc: "ArchiveInterface", skip: frozenset[tuple[str, str]] = frozenset()) -> \
        tuple[set[BlobId], set[tuple[str, str]]]:
    """Every blob the releases reference (records included), and the releases read.

    Releases in ``skip`` (read before) are not read again. Any unreadable release raises.
    """
    live: set[BlobId] = set()
    read: set[tuple[str, str]] = set()
    for name in arc.names():
        for version in arc.versions(name):
            if (name, version) in skip:
                continue
            try:
                release = arc.get_release(name, version)
            except ArchiveError as exc:
                raise IntegrityError(f"gc stopped, nothing removed: {name} {version} cannot be read ({exc})") from None
            live.add(release.record_id)
            live.update(entry.blob for entry in release.files.values())
            read.add((name, version))
    return live, read


def check_grace(grace_hours: float) -> float:
    """``grace_hours`` if it is a finite number of hours >= 0, else :class:`InvalidInputError`."""
    if not isinstance(grace_hours, (int, float)) or not math.isfinite(grace_hours) or grace_hours < 0:
        raise InvalidInputError(f"grace period must be a finite number of hours >= 0, not {grace_hours!r}")
    return float(grace_hours)


def collect_garbage(arc: "ArchiveInterface", *, grace_hours: float = DEFAULT_GRACE_HOURS,
                    dry_run: bool = False, now: float | None = None) -> GcReport:
    """Remove unreferenced blobs, temporary files and leases older than ``grace_hours``."""
    arc.check_writable()
    cutoff = (time.time() if now is None else now) - check_grace(grace_hours) * 3600
    live, read = live_blobs(arc)
    report = GcReport()
    for key in list_blob_keys(arc):
        if layout.blob_id_from_key(key) not in live:
            _set_aside(arc, key, cutoff, dry_run, report)
    if not dry_run:
        _empty_trash(arc, live, frozenset(read), report)
    temporaries = [f"{layout.TMP_DIR}/{name}" for name in sorted(arc.list_keys(layout.TMP_DIR))]
    for key in [*temporaries, *lease_keys(arc)]:
        _remove_if_old(arc, key, cutoff, dry_run, report)
    logger.info("gc: %d objects, %d bytes %s", len(report.removed), report.bytes_freed,
                "would be freed" if dry_run else "freed")
    return report


def _set_aside(arc: "ArchiveInterface", key: str, cutoff: float, dry_run: bool, report: GcReport) -> None:
    """Move an unreferenced blob older than ``cutoff`` to the trash; put it back if it turns out
    young (a writer stored it anew between the first look and the move)."""
    try:
        info = arc.stat_key(key)
        if info.mtime > cutoff:
            report.kept_young += 1
            return
        if dry_run:
            report.count(key, info.size)
            return
        trash = layout.trash_key(layout.blob_id_from_key(key))
        arc.move_key(key, trash)
        if arc.stat_key(trash).mtime > cutoff:
            arc.move_key(trash, key)
            report.kept_young += 1
    except KeyNotFoundError:
        return  # removed or moved meanwhile (another gc); whoever has it decides


def _empty_trash(arc: "ArchiveInterface", live: set[BlobId], read: frozenset[tuple[str, str]],
                 report: GcReport) -> None:
    """Put back every trashed blob a lease or a release names; delete the rest.

    ``live`` holds the blobs of the releases ``read`` in the first pass. The leases are read
    first and the releases published since after: a publish removes its lease only once its
    release pointer exists, so one of the two always shows its blobs.
    """
    trashed = list(list_blob_keys(arc, f"{layout.TRASH_DIR}/{layout.BLOBS_DIR}"))
    if not trashed:
        return
    wanted = leased_blobs(arc)
    wanted |= live_blobs(arc, read)[0]
    wanted |= live
    for trash in trashed:
        blob = layout.blob_id_from_key(trash)
        key = layout.blob_key(blob)
        try:
            if blob in wanted:
                arc.move_key(trash, key)
                report.restored.append(key)
                logger.info("gc: kept %s, which a release or a publish in flight references", key)
            else:
                size = arc.stat_key(trash).size
                arc.delete_key(trash)
                report.count(key, size)
        except KeyNotFoundError:
            continue  # another gc run took care of it


def _remove_if_old(arc: "ArchiveInterface", key: str, cutoff: float, dry_run: bool, report: GcReport) -> None:
    try:
        info = arc.stat_key(key)
        if info.mtime > cutoff:
            report.kept_young += 1
            return
        if not dry_run:
            arc.delete_key(key)
    except KeyNotFoundError:
        return  # removed meanwhile (another gc, or a writer finishing its temporary file)
    report.count(key, info.size)
