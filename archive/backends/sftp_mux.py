"""One SSH connection for all the sessions of an archive: OpenSSH's connection sharing.

Each ``ssh`` started for an SFTP session (or a command) used to make a connection of its own:
a key exchange and a login, about 0.17 s of CPU (ssh and sshd together, on loopback) and a
quarter of a second before the first byte. A publish of 64 files of 4 MiB opened nine, which
was most of its CPU. So the first session of an archive starts a *master* (``ssh -M``): the
one connection that logs in, holding a control socket in a private folder (mode 0700) of the
temporary folder; every session after it is a ``ssh -o ControlMaster=no -S SOCKET`` client of
that connection: a new channel, a few milliseconds, no login (what ``ControlMaster`` in
``~/.ssh/config`` does, confined to one archive and one process).

The master is a child of this process that runs an SFTP session it never uses, fed by a pipe
that only this process holds: when the archive closes, or this process dies in any way, the
pipe ends, the master's session with it, and the master exits as soon as its last client has
(OpenSSH waits for them). So no ssh is ever left behind, even after a ``kill -9``.

Where the master cannot be had (its socket path would be too long, or it does not log in
within the connect timeout) the sessions connect each on their own, as before: ``ssh`` falls
back by itself when the socket is missing. A master that exits instead (a refused key, an
unknown host key) is reported as a session's failure would be.

Shared, all sessions go through the crypto of one ssh process and one sshd process: on fast
links that is one core each way, the speed of one ``scp``. ``$ARCHIVE_SSH_SHARE=0`` turns
sharing off.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Callable

logger = logging.getLogger(__name__)
SHARE_ENV = "ARCHIVE_SSH_SHARE"
#: Longest control socket path ssh can use: sun_path holds 104 bytes on macOS (108 on Linux),
#: and ssh first binds the path with 17 characters more (``.`` and 16 random ones).
MAX_SOCKET_PATH = 104 - 17 - 1
POLL_SECONDS = 0.005  # how often the socket is looked for while the master logs in
STOP_WAIT = 1.0  # seconds a master may take to end with its last channels, then it is killed


class MasterFailed(Exception):
    """The ssh master exited before it could share its connection; ``args[0]``: its stderr."""

    @property
    def stderr(self) -> str:
        return str(self.args[0])


def sharing_wanted() -> bool:
    """False when ``$ARCHIVE_SSH_SHARE`` says no (``0``, ``false``, ``no``, ``off``)."""
    return os.environ.get(SHARE_ENV, "").strip().lower() not in ("0", "false", "no", "off")


class SharedConnection:
    """The master of one archive's SSH connection and the options of its clients.

    ``master_argv(options)`` is the ssh argv of an SFTP session with ``options`` (``-o ...``)
    added: the master runs it. Thread-safe: the first caller of :meth:`client_options` starts
    the master and waits for its socket; the others wait for that.
    """

    def __init__(self, master_argv: Callable[[list[str]], list[str]]) -> None:
        self._master_argv = master_argv
        self._lock = threading.Lock()
        self._folder: str | None = None
        self._proc: subprocess.Popen | None = None
        self._feed: int | None = None  # the write end of the master's stdin, never written

    @property
    def socket(self) -> str | None:
        return os.path.join(self._folder, "s") if self._folder else None

    def client_options(self, wait: float) -> tuple[list[str], Callable[[], None] | None]:
        """The ssh options that make a session a client of the master, started here if it is
        not running, and what to call if that session stalls or is interrupted (:meth:`_retire`
        of this very master); ``([], None)`` (a connection of its own) if there is no master to be had.

        ``wait``: seconds the master may take to log in.

        Raises
        ------
        MasterFailed
            The master exited before its socket appeared (a refused key or host key, no
            SFTP service...): what it wrote to stderr says why, as a session's would.
        """
        with self._lock:
            if not self._running() and not self._start(wait):
                return [], None
            master = self._proc
            return ["-o", "ControlMaster=no", "-o", f"ControlPath={self.socket}"], lambda: self._retire(master)

    def close(self) -> None:
        """End the master (after its clients: close them first) and remove its folder."""
        with self._lock:
            self._stop()

    def _retire(self, master: subprocess.Popen | None) -> None:
        """A session over ``master`` got no reply in time (the connection may have stalled: the
        server, or the network, gone silent with the socket open, and every session on it with
        it), or was interrupted (the command is stopping). Stop that master, if it is still the
        current one: retries start afresh, and the other sessions end now."""
        with self._lock:
            if master is not None and master is self._proc:
                logger.debug("dropping the shared ssh connection (pid %d): a session stalled or was interrupted",
                             master.pid)
                master.kill()
                self._stop()

    def _running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and os.path.exists(self.socket or "")

    def _start(self, wait: float) -> bool:
        self._stop()
        folder = _private_folder()
        if folder is None:
            return False
        self._folder = folder
        read_end, self._feed = os.pipe()
        options = ["-o", "ControlMaster=yes", "-o", f"ControlPath={self.socket}", "-o", "ControlPersist=no"]
        with tempfile.TemporaryFile() as said:
            try:
                self._proc = subprocess.Popen(self._master_argv(options), stdin=read_end, stdout=subprocess.DEVNULL,
                                              stderr=said, start_new_session=True)
            except OSError as exc:
                logger.debug("cannot start an ssh master: %s", exc)
                self._stop()
                return False
            finally:
                os.close(read_end)
            deadline = time.monotonic() + wait
            while not os.path.exists(self.socket or ""):
                if self._proc.poll() is not None:
                    self._stop()
                    said.seek(0)
                    raise MasterFailed(said.read().decode("utf-8", "replace"))
                if time.monotonic() > deadline:
                    logger.debug("the ssh master (pid %d) did not log in in time; sessions connect on their own",
                                 self._proc.pid)
                    self._proc.kill()
                    self._stop()
                    return False
                time.sleep(POLL_SECONDS)
        logger.debug("ssh master (pid %d) shares one connection at %s", self._proc.pid, self.socket)
        return True

    def _stop(self) -> None:
        if self._feed is not None:
            os.close(self._feed)  # its session ends; it exits once its clients have
            self._feed = None
        if self._proc is not None:
            try:  # at once when its clients are gone; not after an interrupt left channels busy
                self._proc.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                self._proc.kill()  # nothing is lost: every request that counts was answered
                self._proc.wait()
            self._proc = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _private_folder() -> str | None:
    """A new folder only this user can enter, for the control socket, with a path short enough
    for one (the temporary folder, else ``/tmp``); None if there is none."""
    for parent in (tempfile.gettempdir(), "/tmp"):
        if len(os.path.join(parent, "archive-ssh-12345678", "s")) > MAX_SOCKET_PATH:
            continue
        try:
            return tempfile.mkdtemp(prefix="archive-ssh-", dir=parent)  # mode 0700
        except OSError as exc:
            logger.debug("cannot make a folder for an ssh control socket in %s: %s", parent, exc)
    return None
