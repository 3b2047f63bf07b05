"""The versions of a name with what a person choosing one wants to see: date, message, yank.

``archive ls NAME`` reads each version's record (verified, as every read is) for its date and
message, in parallel over the backend's connections, and the yank markers of the name once
(see :mod:`archive.yank`). A version whose record cannot be read is listed without its
details, with a warning naming the problem (``archive verify`` tells more).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import IntegrityError
from .yank import YankMarker, yanked

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .interface import ArchiveInterface


@dataclass(frozen=True)
class VersionInfo:
    """One version of a name: its record id, creation time, message, and the yank if yanked."""

    version: str
    record: str
    created: str
    message: str | None
    yank: YankMarker | None

    def to_json(self) -> dict[str, Any]:
        yank = None if self.yank is None else {k: v for k, v in self.yank.to_json().items()
                                               if k in ("reason", "by", "at")}
        return {"version": self.version, "record": self.record, "created": self.created,
                "message": self.message, "yanked": yank}


def version_details(arc: "ArchiveInterface", name: str) -> list[VersionInfo]:
    """Every version of ``name``, newest first, with its date, message and yank state."""
    versions = arc.versions(name)
    yanks = yanked(arc, name)

    def info(version: str) -> VersionInfo:
        try:
            release = arc.get_release(name, version)
        except IntegrityError as exc:  # one damaged record must not hide the others: verify tells more
            logger.warning("%s", exc)
            return VersionInfo(version, "", "", None, yanks.get(version))
        message = release.metadata.get("message")
        return VersionInfo(version, str(release.record_id), release.created,
                           message if isinstance(message, str) else None, yanks.get(version))

    with ThreadPoolExecutor(max_workers=max(1, min(arc.max_workers, len(versions)))) as pool:
        return list(pool.map(info, versions))
