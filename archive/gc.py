"""Garbage collection: remove blobs no release references, and stale temporary files.

Only what is older than a grace period (24 hours by default) is removed, so a publish in
flight, whose blobs are not referenced until its record is committed at the very end, is never
harmed. If any release cannot be read, nothing is removed: an unreadable record might
reference any blob, and deleting data on a guess is the one mistake an archive cannot undo.

Known limit: a publish that *reuses* a blob left unreferenced for longer than the grace period
(by an abandoned publish) can race with a concurrent gc. Run gc when nobody publishes, or
with a grace period longer than any publish takes.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from . import layout
from .errors import ArchiveError, IntegrityError, KeyNotFoundError
from .hashing import BlobId

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


def list_blob_keys(arc: "ArchiveInterface") -> Iterator[str]:
    """Every blob key in the store (names that are not blob ids are skipped)."""
    for fan in sorted(arc.list_keys(layout.BLOBS_DIR)):
        if _FAN.fullmatch(fan):
            for name in sorted(arc.list_keys(f"{layout.BLOBS_DIR}/{fan}")):
                if _HEX.fullmatch(name) and name.startswith(fan):
                    yield f"{layout.BLOBS_DIR}/{fan}/{name}"


def live_blobs(arc: "ArchiveInterface") -> set[BlobId]:
    """Every blob a release references, and the records themselves; any unreadable release raises."""
    live: set[BlobId] = set()
    for name in arc.names():
        for version in arc.versions(name):
            try:
                release = arc.get_release(name, version)
            except ArchiveError as exc:
                raise IntegrityError(f"gc stopped, nothing removed: {name} {version} cannot be read ({exc})") from None
            live.add(release.record_id)
            live.update(entry.blob for entry in release.files.values())
    return live


def collect_garbage(arc: "ArchiveInterface", *, grace_hours: float = DEFAULT_GRACE_HOURS,
                    dry_run: bool = False, now: float | None = None) -> GcReport:
    """Remove unreferenced blobs and temporary files older than ``grace_hours``."""
    arc.check_writable()
    live = live_blobs(arc)
    cutoff = (time.time() if now is None else now) - grace_hours * 3600
    report = GcReport()
    dead = (key for key in list_blob_keys(arc) if layout.blob_id_from_key(key) not in live)
    temporaries = (f"{layout.TMP_DIR}/{name}" for name in sorted(arc.list_keys(layout.TMP_DIR)))
    for key in [*dead, *temporaries]:
        _remove_if_old(arc, key, cutoff, dry_run, report)
    logger.info("gc: %d objects, %d bytes %s", len(report.removed), report.bytes_freed,
                "would be freed" if dry_run else "freed")
    return report


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
    report.removed.append(key)
    report.bytes_freed += info.size
