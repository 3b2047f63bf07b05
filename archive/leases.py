"""Leases: how a publish tells a concurrent gc which stored blobs it is about to reuse.

A publish that finds a blob already stored does not upload it again, and only references it
once its record is committed, at the very end. Until then the blob may look unreferenced, and
it may be old (left by a publish killed days ago), so gc could remove it in between and the
new release would name a blob that is gone. To close that window, a publish writes a lease,
``leases/<id>``, naming every stored blob it may reuse, *before* it checks whether they are
stored, and deletes the lease only after its release pointer exists.

gc reads the leases *after* it has set its candidates aside (see :mod:`archive.gc`), and then
the releases, so every reused blob is seen by gc in one of two ways: in a lease written before
gc read them (gc puts the blob back), or by a publish whose presence check came after gc set the
blob aside (the publish finds it missing and uploads it again). A lease left by a killed
publish only protects its blobs until gc removes it after the grace period.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterable, Iterator

from . import layout
from .errors import ArchiveError, IntegrityError, KeyNotFoundError
from .hashing import BlobId
from .records import MAX_RECORD_BYTES, canonical_json, load_json

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
LEASE_FORMAT = 1


@contextmanager
def lease(arc: "ArchiveInterface", blobs: Iterable[BlobId]) -> Iterator[None]:
    """Hold a lease on ``blobs`` for the duration of the ``with`` block (none if empty)."""
    wanted = sorted({str(blob) for blob in blobs})
    if not wanted:
        yield
        return
    key = layout.lease_key(f"{uuid.uuid4().hex}.json")
    arc.write_key(key, [canonical_json({"format": LEASE_FORMAT, "blobs": wanted})])
    logger.debug("leased %d stored blobs as %s", len(wanted), key)
    del wanted  # not held while the publish runs: 100,000 blob ids are 11 MiB of strings
    try:
        yield
    finally:
        _release(arc, key)


def _release(arc: "ArchiveInterface", key: str) -> None:
    """Delete a lease; one left behind only protects its blobs until gc's grace period ends."""
    try:
        arc.delete_key(key)
    except KeyNotFoundError:
        pass
    except ArchiveError as exc:
        logger.warning("could not remove the lease %s (gc removes it later): %s", key, exc)


def lease_keys(arc: "ArchiveInterface") -> list[str]:
    """The keys of every lease in the archive."""
    return [layout.lease_key(name) for name in sorted(arc.list_keys(layout.LEASES_DIR))]


def leased_blobs(arc: "ArchiveInterface") -> set[BlobId]:
    """Every blob any lease names; a lease that cannot be read stops gc (it might name any blob)."""
    leased: set[BlobId] = set()
    for key in lease_keys(arc):
        try:
            document = load_json(arc.read_key(key, MAX_RECORD_BYTES), key)
            blobs = document.get("blobs") if isinstance(document, dict) else None
            if not isinstance(blobs, list) or not all(isinstance(text, str) for text in blobs):
                raise IntegrityError(f"{key}: not a lease")
            leased.update(BlobId.parse(text) for text in blobs)
        except KeyNotFoundError:
            continue  # its publish finished: its release pointer exists, and gc reads those next
        except ValueError as exc:
            raise IntegrityError(f"{key}: not a lease ({exc})") from None
    return leased
