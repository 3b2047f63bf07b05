"""Remembered record ids: a release, once seen, may never change.

Releases are immutable, so the record id of ``NAME VERSION`` in an archive is fixed forever.
The first time this machine reads a release from an archive, its record id is written down
(like ssh's known_hosts); every later read must find the same id. An archive is known by the
random id in its ``archive.json`` (older archives without one: by their location), so an archive
deleted and created anew at the same place starts with no history, while a copy of it (a
mirror) is held to the same records. A record that was replaced
on the storage, or an archive rolled back to or swapped for another copy with different
releases under the same versions, is then refused instead of silently served. The notes live
in the cache folder (``seen/``); deleting them only forgets, it never lets bad data in.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from . import layout
from .errors import IntegrityError
from .hashing import BlobId

logger = logging.getLogger(__name__)


class SeenRecords:
    """The record ids of every release read from each archive, under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def check(self, identity: str, location: str, name: str, version: str, record_id: BlobId) -> None:
        """Remember ``record_id`` for this release of the archive ``identity`` (its id, see
        :attr:`ArchiveInterface.identity`), or raise if another one was seen before."""
        note = self._note(identity, name, version)
        try:
            known = note.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            self._remember(note, record_id)
            return
        if known != str(record_id):
            raise IntegrityError(
                f"{name} {version} in {location} has changed: record {known[7:19]} was read here before,"
                f" now it is {record_id.short}; releases never change, so the archive was altered"
                f" (to accept it, delete {note})")

    def _note(self, identity: str, name: str, version: str) -> Path:
        archive_key = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
        return self.root / archive_key / layout.name_folder(name) / version

    def _remember(self, note: Path, record_id: BlobId) -> None:
        from .materialize import write_file_atomically

        try:
            note.parent.mkdir(parents=True, exist_ok=True)
            write_file_atomically(note, [f"{record_id}\n".encode()], 0o644)
        except OSError as exc:  # a read-only cache must not stop reading releases
            logger.warning("cannot remember record %s in %s: %s", record_id.short, note, exc.strerror)
