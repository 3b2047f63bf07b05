"""How much an archive holds, and how much deduplication saves: ``archive stats``.

From the records alone (one read per release, in parallel; no blob is listed or fetched):

* **logical bytes**: what pulling every release would write, the sum of their sizes;
* **stored bytes**: what the archive keeps of their content, each distinct blob once;
* **dedup savings**: the difference, what storing by content spared.

Per name the stored bytes count that name's distinct blobs; in total, the distinct blobs of all
names (a blob two names share is stored once), so the total is at most the sum of the names.
Records, index files and unreferenced blobs (``archive gc`` removes those) are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from .hashing import BlobId
from .records import Release
from .transfer import run_jobs

if TYPE_CHECKING:
    from .interface import ArchiveInterface


@dataclass(frozen=True)
class UsageStats:
    """The numbers of one name, or (``name`` None) of all the names counted together."""

    name: str | None
    releases: int
    files: int
    logical_bytes: int
    stored_bytes: int

    @property
    def dedup_savings(self) -> int:
        return self.logical_bytes - self.stored_bytes

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name} if self.name is not None else {}
        out.update(releases=self.releases, files=self.files, logical_bytes=self.logical_bytes,
                   stored_bytes=self.stored_bytes, dedup_savings=self.dedup_savings)
        return out


@dataclass(frozen=True)
class ArchiveStats:
    """The numbers of each name counted, and their total."""

    names: list[UsageStats]
    total: UsageStats

    def to_json(self) -> dict[str, Any]:
        """The stable ``archive stats --json`` schema (docs/json.md)."""
        return {"format": 1, "names": [n.to_json() for n in self.names], "total": self.total.to_json()}


def archive_stats(arc: "ArchiveInterface", names: Iterable[str] | None = None, *,
                  jobs: int | None = None) -> ArchiveStats:
    """The :class:`UsageStats` of ``names`` (default: every name of ``arc``) and their total.

    Every record read is verified as any read is (:meth:`ArchiveInterface.get_release`).
    """
    chosen = list(arc.names() if names is None else names)
    workers = jobs or arc.max_workers
    listed = run_jobs([lambda n=n: arc.versions(n) for n in chosen], workers)
    pairs = [(name, version) for name, versions in zip(chosen, listed) for version in versions]
    records = run_jobs([lambda p=p: arc.get_release(*p) for p in pairs], workers)
    by_name: dict[str, list[Release]] = {name: [] for name in chosen}
    for (name, _), record in zip(pairs, records):
        by_name[name].append(record)
    return ArchiveStats([usage(name, by_name[name]) for name in chosen], usage(None, records))


def usage(name: str | None, releases: list[Release]) -> UsageStats:
    """The numbers of ``releases``: their count, files, logical and stored (distinct) bytes."""
    distinct: dict[BlobId, int] = {}
    for release in releases:
        for entry in release.files.values():
            distinct[entry.blob] = entry.size
    return UsageStats(name, len(releases), sum(len(r.files) for r in releases),
                      sum(r.total_size for r in releases), sum(distinct.values()))
