"""The ``--json`` outputs of the commands: one function per schema, documented in docs/json.md.

Keeping every schema here, apart from the printing, lets a change to one be seen (and
versioned) in one place. Each function returns plain JSON values; fields are only ever added.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .download import PullReport
    from .gc import GcReport
    from .placed import Status
    from .records import Release
    from .verify import VerifyReport
    from .yank import YankMarker


def yank_json(marker: "YankMarker | None") -> dict[str, str] | None:
    """``{"reason", "by", "at"}`` of a yank, or None."""
    return None if marker is None else {"reason": marker.reason, "by": marker.by, "at": marker.at}


def pull_json(release: "Release", report: "PullReport", yank: "YankMarker | None") -> dict[str, Any]:
    return {"name": release.name, "version": release.version, "record": str(release.record_id),
            "folder": str(report.folder), "files": report.files, "written": report.written,
            "already_there": report.already_there, "removed": list(report.removed), "yanked": yank_json(yank)}


def status_json(folder: str, report: "Status") -> dict[str, Any]:
    pulled = report.pulled
    return {"folder": folder, "name": pulled.name, "version": pulled.version, "record": pulled.record_id,
            "archive": pulled.archive, "clean": report.clean, "modified": report.modified,
            "missing": report.missing, "extra": report.extra}


def verify_json(report: "VerifyReport", cache: bool, rehashed: bool) -> dict[str, Any]:
    return {"ok": report.ok, "cache": cache, "releases": None if cache else report.releases,
            "blobs": report.blobs, "bytes": report.bytes, "rehashed": rehashed,
            "errors": report.errors, "warnings": report.warnings}


def gc_json(report: "GcReport", dry_run: bool, grace_hours: float) -> dict[str, Any]:
    return {"dry_run": dry_run, "removed": report.removed, "restored": report.restored,
            "bytes_freed": report.bytes_freed, "kept_young": report.kept_young, "grace_hours": grace_hours}
