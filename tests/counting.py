"""A backend passed through, counting the objects it opens: the archive's reads seen at the
backend, as a server's access log would show them (not a stand-in: every call reaches the real
backend)."""

from __future__ import annotations

import threading

from archive import layout
from archive.hashing import BlobId
from archive.interface import ArchiveInterface


class Counting(ArchiveInterface):
    """``inner``, recording the key of every ``open_key`` call in :attr:`opened`."""

    def __init__(self, inner: ArchiveInterface) -> None:
        super().__init__(inner.location)
        self.inner = inner
        self.seen = inner.seen
        self.max_workers = inner.max_workers
        self.read_only = inner.read_only
        self.listable = inner.listable
        self.opened: list[str] = []
        self._lock = threading.Lock()

    def blobs_opened(self, *, besides: "list[BlobId] | tuple" = ()) -> list[str]:
        """The blob keys opened, leaving out those of ``besides`` (such as record ids)."""
        skip = {layout.blob_key(blob) for blob in besides}
        return [key for key in self.opened if key.startswith("blobs/") and key not in skip]

    def stat_key(self, key):
        return self.inner.stat_key(key)

    def open_key(self, key):
        with self._lock:
            self.opened.append(key)
        return self.inner.open_key(key)

    def write_key(self, key, chunks, *, exclusive=False):
        return self.inner.write_key(key, chunks, exclusive=exclusive)

    def list_keys(self, prefix):
        return self.inner.list_keys(prefix)

    def delete_key(self, key):
        return self.inner.delete_key(key)

    def move_key(self, source, target):
        return self.inner.move_key(source, target)
