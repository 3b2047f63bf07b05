"""Many small files of an SFTP archive made durable together: one ``sync -f`` run on the server.

SFTP makes a file durable only through its own handle (``fsync@openssh.com``), one file at a
time, and OpenSSH's server answers one request at a time per session: a durable push of 10,000
small files waits mostly on those fsyncs (10,000 x 4 KiB on loopback: 3.58 s with them, 2.15 s
without; ``scp -r`` took 5.16 s and syncs nothing). Where the account may run a command, one
``sync -f FOLDER`` (``syncfs(2)`` of the filesystem holding the folder; GNU coreutils since
8.24, BusyBox) makes the data of all of them durable at once, as the folder backend does
locally (:mod:`archive.backends.filesystem_batch`).

The order per file stays that of an fsync'd write: its data durable, then its name. Inside
:meth:`~archive.interface.ArchiveInterface.batched_writes` the small files are written to
temporaries without an fsync (:mod:`archive.backends.sftp_batch`); when the batch is flushed,
or has grown to :data:`MAX_FILES` files or :data:`MAX_BYTES` bytes, the sync runs, and only once
it has said it succeeded (exit status 0) are they renamed into place. The renames are then as
durable as any rename over SFTP (which cannot sync a folder): the server's journal commits them
before the record that names them, which is written and fsync'd after them.

Whether a server can do this is found once per archive, by running the command on the archive's
root before the first file relies on it: in the background from the first small file a batch
holds (a push of large files only never runs it), when the transport is known by then, so that
no group waits for that command. The command runs only on Linux (``uname``),
where ``syncfs`` and ``sync`` wait until the data is on disk (BSD's ``sync(2)`` may return
before). A run counts only if it exits with 0 *and* prints the word it was given, new each
time: a server that runs something else in its place (a ``ForceCommand``, a menu) and exits
with 0 has not synced anything. A server that refuses (an SFTP-only account, ``ForceCommand internal-sftp``, a chroot
without ``sync``, Windows, an old ``sync`` without ``-f``, a shell that does not speak POSIX)
keeps the per-file fsync; so does ``$ARCHIVE_SFTP_REMOTE_SYNC=0``, for a server where running a
command is unwelcome.
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import threading
from typing import Callable

from ..errors import BackendError, BackendUnavailableError, InvalidInputError

logger = logging.getLogger(__name__)

#: ``0`` keeps the per-file fsync even where the server could sync many files at once.
REMOTE_SYNC_ENV = "ARCHIVE_SFTP_REMOTE_SYNC"
#: Files written and not yet synced wait at most in this number, or this many bytes: each is a
#: name kept in memory until the sync, and the sync writes all their data at once.
MAX_FILES = 65536
MAX_BYTES = 512 * 1024 * 1024
#: Seconds the first run (which decides whether the server can) and a later one may take.
PROBE_TIMEOUT = 30.0
SYNC_TIMEOUT = 600.0

#: Runs a shell command on the server: its exit status (-1 if it could not run or took too
#: long) and the start of its output.
CommandRunner = Callable[[str, float], tuple[int, bytes]]


def remote_sync_wanted() -> bool:
    """Whether ``$ARCHIVE_SFTP_REMOTE_SYNC`` allows running ``sync`` on the server (the default)."""
    value = os.environ.get(REMOTE_SYNC_ENV, "1").strip()
    if value not in ("0", "1"):
        raise InvalidInputError(f"${REMOTE_SYNC_ENV} must be 0 or 1, not {value!r}")
    return value == "1"


class RemoteSync:
    """``sync -f`` of one folder's filesystem on the server, if the server can run it."""

    def __init__(self, run: CommandRunner, folder: str, root: str) -> None:
        self._run = run
        self._folder, self._root = folder, root
        self._usable: bool | None = None if remote_sync_wanted() else False
        self._lock = threading.Lock()
        self._asked = False  # whether find_out_ahead() started finding out
        self._asking = threading.Lock()  # not _lock, which a probe holds while it runs

    def usable(self) -> bool:
        """Whether the server syncs on request; found by running the sync once, of the archive's
        root (which exists before its ``tmp/`` may), remembered for the archive's life."""
        with self._lock:
            if self._usable is None:
                self._usable = self._synced(PROBE_TIMEOUT, self._root) == 0
                logger.debug("the server %s new files together", "syncs" if self._usable else "cannot sync")
            return self._usable

    def find_out_ahead(self) -> None:
        """Start finding out :meth:`usable` in the background, once, so that the first group does
        not wait for a login of its own (on a distant server, several round trips)."""
        if self._usable is None and not self._asked:
            with self._asking:
                start, self._asked = not self._asked, True
            if start:
                threading.Thread(target=self.usable, name="archive-sync-probe", daemon=True).start()

    def run(self, files: int) -> None:
        """Make the data of everything written so far durable.

        Raises
        ------
        BackendUnavailableError
            The command could not run, or did not end in time (worth a retry).
        BackendError
            It ran and failed (an I/O error writing the data back, say).
        """
        status = self._synced(SYNC_TIMEOUT, self._folder)
        if status == -1:
            raise BackendUnavailableError(f"could not run sync on the server for {files} new objects")
        if status != 0:
            raise BackendError(f"the server could not make {files} new objects durable (sync exited with {status})")
        logger.debug("one sync on the server made %d new objects durable", files)

    def command(self, word: str, folder: str) -> str:
        """The shell command that syncs ``folder``'s filesystem and then says ``word``."""
        return f'test "$(uname -s)" = Linux && sync -f -- {shlex.quote(folder)} && echo {word}'

    def _synced(self, timeout: float, folder: str) -> int:
        """Run the sync: its exit status, -1 if it did not run or did not say its word."""
        word = f"archive-synced-{secrets.token_hex(8)}"
        status, out = self._run(self.command(word, folder), timeout)
        if status == 0 and out.split(b"\n", 1)[0].strip() != word.encode():
            logger.debug("the server answered the sync without running it")
            return -1
        return status
