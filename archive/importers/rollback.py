"""Taking back the blobs a failed import stored, without harming a concurrent publish.

An import stores blobs before it creates any release; when it then fails, those blobs are
referenced by nothing, and leaving them would leave the archive holding part of the import.
They cannot simply be deleted: a publish running meanwhile may have found one stored and be
about to reference it. So they are taken back the way gc removes blobs (:mod:`archive.gc`):
each is moved to ``trash/``, then the leases are read and then the releases, and every blob
one of them names is put back; only the rest is deleted. A publish that looked for a blob
after it was moved found it missing and uploaded it again, so no interleaving loses data.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable

from .. import layout
from ..errors import ArchiveError, KeyNotFoundError
from ..gc import live_blobs
from ..hashing import BlobId
from ..leases import leased_blobs

if TYPE_CHECKING:
    from ..interface import ArchiveInterface

logger = logging.getLogger(__name__)


def take_back(arc: "ArchiveInterface", blobs: Iterable[BlobId]) -> int:
    """Remove ``blobs`` (stored by this process, now unreferenced) unless a lease or a release
    names them; return how many were removed. Called once this process's own lease is gone.

    Failures are logged, not raised: the import's own error is the one to report, and a blob
    left behind is only garbage that gc removes after its grace period.
    """
    try:
        trashed = [blob for blob in sorted(blobs) if _set_aside(arc, blob)]
        if not trashed:
            return 0
        wanted = leased_blobs(arc) | live_blobs(arc)[0]
        removed = 0
        for blob in trashed:
            if blob in wanted:
                arc.move_key(layout.trash_key(blob), layout.blob_key(blob))
            else:
                arc.delete_key(layout.trash_key(blob))
                removed += 1
        return removed
    except ArchiveError as exc:
        logger.warning("could not take back every blob of the failed import (gc removes them later): %s", exc)
        return 0


def _set_aside(arc: "ArchiveInterface", blob: BlobId) -> bool:
    try:
        arc.move_key(layout.blob_key(blob), layout.trash_key(blob))
    except KeyNotFoundError:
        return False  # a gc took it meanwhile
    return True
