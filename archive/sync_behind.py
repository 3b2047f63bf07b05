"""A long file written to disk while it is still being written: fsyncs behind the writes.

A file's data is made durable (``fsync``) before the file gets its name. Sent once, after the
last byte, that fsync finds all of the file in the page cache: Linux writes dirty pages back
only after 30 s, or past a tenth of memory. So the disk starts on a 1 GiB file only once all
of it is written, and the writer waits for all of it: 0.3 to 2.1 s of a 1 GiB push over SFTP on
loopback here, after 2.5 to 3 s of transfer.

So every :data:`SYNC_BEHIND_BYTES` written, a writer asks for an fsync of what is there, run in
a thread of its own (an SFTP archive's on another session, the folder archive's ``fdatasync``
on the same descriptor), at most one at a time per file, so the writer never waits for the
disk: it writes what has arrived while the rest is on its way, and the final fsync has at most
the last stretch left. These fsyncs only start work early; none of them decides anything. One
that fails is logged and forgotten: the file's final fsync still comes after the last write,
before the rename, and it is the one that is checked.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

logger = logging.getLogger(__name__)

#: Bytes written between two fsyncs behind a file: what the final fsync has left at most (beside
#: an SFTP writer's requests in flight). Smaller means more journal commits for the same data.
SYNC_BEHIND_BYTES = 64 * 1024 * 1024


class SyncBehind:
    """Calls ``sync`` (an fsync of the file being written) in a thread of its own each time
    another :attr:`every` bytes are written, unless the last one still runs; :meth:`finish`
    waits for the last one."""

    def __init__(self, sync: Callable[[], None], every: int | None = None) -> None:
        self.every = every or SYNC_BEHIND_BYTES
        self._sync = sync
        self._thread: threading.Thread | None = None
        self._next = self.every  # bytes written at which the next fsync starts

    def wrote(self, total: int) -> None:
        """``total`` bytes of the file are written (for SFTP: acknowledged by the server)."""
        if total >= self._next:
            self._next = total + self.every
            self._start()

    def _start(self) -> None:
        """Another :attr:`every` bytes are written: start an fsync of them, unless one still runs."""
        if self._thread is not None and self._thread.is_alive():
            return  # the next mark asks again: one fsync at a time is all the disk takes
        self._thread = threading.Thread(target=self._run, name="archive-sync-behind", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """Wait for the fsync running, if any (it uses the file's descriptor, or a connection)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        try:
            self._sync()
        except Exception as exc:  # only early work: the file's final fsync is checked
            logger.debug("an fsync behind a file being written failed (its final fsync decides): %s", exc)
