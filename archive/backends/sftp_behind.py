"""A large file written to disk while it streams: fsyncs from another session, behind the writes.

A file's data becomes durable through ``fsync@openssh.com`` before the file gets its name. Sent
once, at the end, that fsync finds all of the file still in the server's page cache (Linux
starts writing dirty pages back only after 30 s, or past a tenth of memory), so the server's
disk starts on a 1 GiB file only once the last byte has crossed the network, and the push waits
for all of it: 0.5 to 2.3 s of a 1 GiB push on loopback here, after 3 s of transfer.

So while a file streams, every :data:`SYNC_BEHIND_BYTES` bytes that the server has acknowledged
(they are in its page cache), another session fsyncs the file through a handle of its own: the
disk writes what has arrived while the rest is still on its way, and the final fsync has at
most the last stretch left. At most one such fsync runs at a time per file, in a thread of its
own, so the streaming session never waits for the disk. They only start work early: none of
them decides anything. A failed one is logged and forgotten; the file's final fsync (see
:func:`~archive.backends.sftp_io.sync_file`) still comes before its rename, and it is the one
that is checked.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

logger = logging.getLogger(__name__)

#: Bytes acknowledged between two fsyncs behind a streaming file: what the final fsync has left
#: at most, beside the writes in flight. Smaller means more journal commits for the same data.
SYNC_BEHIND_BYTES = 64 * 1024 * 1024


class SyncBehind:
    """Calls ``sync`` (an fsync of the file on another session) in a thread of its own each time
    it is :meth:`due`, unless the last one still runs; :meth:`finish` waits for the last one."""

    def __init__(self, sync: Callable[[], None], every: int | None = None) -> None:
        self.every = every or SYNC_BEHIND_BYTES
        self._sync = sync
        self._thread: threading.Thread | None = None

    def due(self) -> None:
        """Another :attr:`every` bytes are on the server: start an fsync of them, unless one runs."""
        if self._thread is not None and self._thread.is_alive():
            return  # the next mark asks again: one fsync at a time is all the disk takes
        self._thread = threading.Thread(target=self._run, name="archive-sync-behind", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """Wait for the fsync running, if any (it holds a connection of the archive)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        try:
            self._sync()
        except Exception as exc:  # only early work: the file's final fsync is checked
            logger.debug("an fsync behind a streaming file failed (its final fsync decides): %s", exc)
