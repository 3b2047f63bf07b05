"""Comparing releases: what changed between two versions, and what they share.

A reviewer asking what changed between two calibrations gets the paths added, removed and
changed, with sizes, from the two records alone: no content is fetched, since a file's blob id
says whether its content changed. "Shared" bytes are those of distinct contents both releases
hold, which the archive stores once (what a new version really cost to store).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ReleaseNotFoundError
from .records import FileEntry, Release
from .versions import key_of

if TYPE_CHECKING:
    from .interface import ArchiveInterface


@dataclass(frozen=True)
class Change:
    """One path that differs: ``old`` is None when added, ``new`` is None when removed."""

    path: str
    old: FileEntry | None
    new: FileEntry | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.old is not None and self.new is not None:
            out.update(old_size=self.old.size, new_size=self.new.size, old_blob=str(self.old.blob),
                       new_blob=str(self.new.blob), content_changed=self.old.blob != self.new.blob,
                       executable_changed=self.old.executable != self.new.executable)
        else:
            entry = self.new or self.old
            assert entry is not None
            out.update(size=entry.size, blob=str(entry.blob))
        return out


@dataclass(frozen=True)
class Diff:
    """What changed from release ``old`` to release ``new`` (paths sorted in each list)."""

    old: Release
    new: Release
    added: list[Change]
    removed: list[Change]
    changed: list[Change]
    unchanged: int

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, Any]:
        """The stable ``archive diff --json`` schema (docs/json.md)."""
        side = lambda r: {"version": r.version, "record": str(r.record_id), "files": len(r.files),  # noqa: E731
                          "size": r.total_size}
        return {"format": 1, "name": self.new.name, "from": side(self.old), "to": side(self.new),
                "added": [c.to_json() for c in self.added], "removed": [c.to_json() for c in self.removed],
                "changed": [c.to_json() for c in self.changed], "unchanged": self.unchanged,
                "shared_bytes": shared_bytes(self.old, self.new)}


def diff_releases(old: Release, new: Release) -> Diff:
    """The paths added, removed and changed (content or executable bit) from ``old`` to ``new``.

    A file whose only difference is its media type (a hint, not content) is unchanged.
    """
    added = [Change(p, None, e) for p, e in sorted(new.files.items()) if p not in old.files]
    removed = [Change(p, e, None) for p, e in sorted(old.files.items()) if p not in new.files]
    both = sorted(p for p in new.files if p in old.files)
    changed = [Change(p, old.files[p], new.files[p]) for p in both if old.files[p] != new.files[p]]
    return Diff(old, new, added, removed, changed, len(both) - len(changed))


def shared_bytes(one: Release, other: Release) -> int:
    """Bytes of the distinct contents both releases hold (stored once for the two)."""
    mine = {e.blob: e.size for e in one.files.values()}
    return sum(size for blob, size in {e.blob: e.size for e in other.files.values()}.items() if blob in mine)


def previous_release(arc: "ArchiveInterface", release: Release) -> Release | None:
    """The release of the same name with the highest version below ``release``'s (prereleases
    count), or None for the first one."""
    current = key_of(release.version)
    lower = next((v for v in arc.versions(release.name) if (key_of(v) or current) < current), None)  # newest first
    if lower is None:
        return None
    try:
        return arc.get_release(release.name, lower)
    except ReleaseNotFoundError:  # removed by hand since the listing
        return None
