"""SFTP connections for :class:`~archive.backends.sftp.SFTPArchive`: two transports and a pool.

A connection is one SFTP session, used by one thread at a time. It runs over one of two
transports, picked once per archive:

* the system ``ssh`` client as a child process (:mod:`archive.backends.sftp_pipe`), whenever
  an ``ssh`` binary exists and it logs in without a password (keys, agent, ssh_config). Its
  C crypto runs on its own core: on loopback this is what reaches OpenSSH's own speed. The
  sessions of an archive are channels of one SSH connection, logged in once
  (:mod:`archive.backends.sftp_mux`);
* paramiko's own SSH transport (:mod:`archive.ssh_login`) otherwise: a password in the URL,
  a password from the keyring or a prompt, or no ``ssh`` on this machine.

``$ARCHIVE_SFTP_TRANSPORT`` (``ssh`` or ``paramiko``) forces one of them; ``auto`` (the
default) tries ssh first and falls back to paramiko only when ssh's keys were refused.
Errors of both are mapped here to :mod:`archive.errors`, at the backend boundary.

Nothing here waits on a server without a bound (:mod:`archive.timeouts`): each step of
connecting, and every reply afterwards; a request left unanswered breaks the connection. An
interrupt (Ctrl-C) closes the connection it hit at once, without waiting for any reply.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from ..credentials import SSHTarget
from ..ssh_login import SSHConnector
from ..timeouts import io_timeout
from ..errors import ArchiveError, BackendError, BackendUnavailableError, InvalidInputError, KeyNotFoundError
from .sftp_io import free_space, interrupted, server_limits
from .sftp_proto import SFTPClient, SFTPConnectionLost
from .sftp_mux import MasterFailed, SharedConnection, sharing_wanted
from .sftp_ciphers import cipher_options
from .sftp_pipe import (KeysRefusedError, SSHPipe, config_options, find_ssh, open_pipe_sftp, ssh_command,
                        startup_error)

if TYPE_CHECKING:
    from paramiko import Transport

logger = logging.getLogger(__name__)
TRANSPORT_ENV = "ARCHIVE_SFTP_TRANSPORT"
WINDOW_SIZE = 8 * 1024 * 1024  # paramiko's SSH channel window: enough in flight to fill a fast link
MAX_CONNECTING = 4  # below sshd's MaxStartups (10), which drops extra handshakes
BULK_CONNECTIONS = 2  # enough for streaming large files on loopback with 2 cores (measured: 8 took twice the CPU)
BULK_BYTES = 512 * 1024  # transfers moving more than this each are streaming, not waiting on round trips
RECENT_TRANSFERS = 4  # how many transfers tell small files from large ones
COMMAND_OUTPUT = 4096  # bytes of a command's output kept (its first line is what counts)
BULK_WAIT = 2.0  # seconds a transfer waits for a connection before opening one anyway (never a deadlock)


def _paramiko_errors() -> tuple[type[Exception], ...]:
    """paramiko's base error, once paramiko is in use; nothing before (none can be raised then).

    paramiko is imported only by a connection that needs it (a password login, no ``ssh``): the
    ssh transport starts about 90 ms sooner without it (``python -X importtime``)."""
    module = sys.modules.get("paramiko")
    return (module.SSHException,) if module is not None else ()


class Link(Protocol):
    """What a connection needs of its transport: :class:`ParamikoLink` or :class:`SSHPipe`."""

    def is_active(self) -> bool: ...

    def hang_up(self) -> None: ...

    def close(self) -> None: ...


class ParamikoLink:
    """paramiko's transport as a :class:`Link` that also sees a cut the transport has not.

    The transport's own flag turns false only once its thread has read to the end of the
    stream, after any data still waiting; a connection cut while it sat idle in the pool would
    be lent once more and fail its first request. The socket tells at once (the check urllib3
    makes of a pooled connection before it reuses one).
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def is_active(self) -> bool:
        return self.transport.is_active() and not _hung_up(self.transport.sock)

    def hang_up(self) -> None:
        """Nothing to start ahead: :meth:`close` does not wait for another process."""

    def close(self) -> None:
        self.transport.close()


_RDHUP = getattr(select, "POLLRDHUP", 0)  # Linux: the stream's end is in, whatever data is ahead of it


def _hung_up(sock: object) -> bool:
    """True if ``sock`` has seen the end of its stream (the peer's, or its own shutdown) or an
    error; never waits. Data waiting ahead of the end does not hide it where the system says
    so (``POLLRDHUP``); elsewhere only an end with nothing before it is seen. Anything but a
    socket (a proxy command's pipe) is taken as open."""
    if not isinstance(sock, socket.socket) or not hasattr(select, "poll"):
        return False
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | _RDHUP)
        flags = sum(events for _, events in poller.poll(0))
        if flags & (select.POLLHUP | select.POLLERR | select.POLLNVAL | _RDHUP):
            return True
        return bool(flags & select.POLLIN) and not _RDHUP and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, TimeoutError):  # the transport's thread read what was there first
        return False
    except (OSError, ValueError):  # closed by the transport already
        return True


@dataclass(frozen=True)
class Endpoint:
    """Where to connect, as the URL said it (ssh applies ``~/.ssh/config`` to this itself)."""

    host: str
    user: str | None
    port: int | None
    password: str | None = field(default=None, repr=False)  # never in a repr, log or traceback


class Connection:
    """One SFTP session on one SSH connection, used by one thread at a time."""

    def __init__(self, link: Link, sftp: SFTPClient, host: str, drop_shared: Callable[[], None] | None = None) -> None:
        self.link, self.sftp, self.host = link, sftp, host
        self.read_size, self.write_size = server_limits(sftp)
        self._drop_shared = drop_shared  # ends the SSH connection this session is a channel of

    def alive(self) -> bool:
        return self.link.is_active()

    def hang_up(self) -> None:
        """Start ending the session; :meth:`close` finishes (see :meth:`ConnectionPool.close`)."""
        self.link.hang_up()

    def close(self) -> None:
        self.link.close()

    def abandon(self) -> None:
        """Close at once after an interrupt (Ctrl-C, SIGTERM): a request or reply may have
        stopped mid-packet. The SSH connection this session shares with the command's others
        ends too, so that they stop now rather than after their next reply: the command is
        stopping."""
        if self._drop_shared is not None:
            self._drop_shared()
        self.close()

    def broken(self, exc: BaseException) -> bool:
        """True if ``exc`` (or the state of the link) means this connection is gone.

        A request left unanswered (:class:`TimeoutError`) counts: its reply may still come, so
        the session is out of step and cannot serve another request.
        """
        lost = (EOFError, ConnectionError, TimeoutError, *_paramiko_errors())
        return isinstance(exc, lost) or not self.alive()

    @contextmanager
    def errors(self, key: str) -> Iterator[None]:
        """Turn SFTP, paramiko, pipe and socket errors into the archive's errors for ``key``.

        A broken connection is closed here, so the pool drops it and a retry reconnects.
        """
        try:
            yield
        except FileNotFoundError:
            raise KeyNotFoundError(key) from None
        except ArchiveError:
            raise
        except (EOFError, OSError, *_paramiko_errors()) as exc:
            if self.broken(exc):
                raise BackendUnavailableError(f"cannot reach {self.host}: {self._lost_reason(exc)}") from exc
            if isinstance(exc, PermissionError):
                raise BackendError(f"{key}: permission denied on {self.host}") from exc
            raise BackendError(f"{key}: {sftp_reason(exc)} on {self.host}") from exc

    def _lost_reason(self, exc: BaseException) -> str:
        """ssh's own words when the session ended; ours for a timeout or a reply that is no SFTP."""
        garbled = isinstance(exc, SFTPConnectionLost) and self.alive()
        if isinstance(self.link, SSHPipe) and not isinstance(exc, TimeoutError) and not garbled:
            return self.link.reason()
        self.close()
        return sftp_reason(exc)

    def storage_full(self, exc: BaseException, folder: str) -> bool:
        """True if ``exc`` of a write means the server's disk is full.

        OpenSSH's server reports ENOSPC as a bare "Failure"; a failure while (almost) no space
        is left in ``folder`` is taken for one. Call it before removing the failed file.
        """
        if not isinstance(exc, OSError) or isinstance(exc, PermissionError):
            return False
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        try:
            free = free_space(self.sftp, folder)
        except (EOFError, OSError, *_paramiko_errors()):
            return False
        return free is not None and free < max(self.write_size, 64 * 1024)


class Connector:
    """Opens connections over the transport that works, decided on the first connection."""

    def __init__(self, endpoint: Endpoint, target: SSHTarget, keyring_service: str) -> None:
        self.target = target
        self._endpoint = endpoint
        self._requested = _requested_transport(endpoint)
        self._chosen: str | None = None if self._requested == "auto" else self._requested
        self._ssh = find_ssh()
        self._paramiko = SSHConnector(target, endpoint.password, keyring_service=keyring_service,
                                      window_size=WINDOW_SIZE)
        self._shared = SharedConnection(self._ssh_argv) if self._ssh and sharing_wanted() else None
        self._ciphers: list[str] | None = None  # -o Ciphers=... (sftp_ciphers), found at the first ssh
        self._ciphers_lock = threading.Lock()

    @property
    def transport(self) -> str:
        """``ssh`` or ``paramiko`` once decided; ``auto`` before the first connection."""
        return self._chosen or "auto"

    def open(self) -> Connection:
        """A new connection; see :func:`archive.backends.sftp_pipe.open_pipe_sftp` for errors."""
        if self._chosen in (None, "ssh"):
            try:
                conn = self._open_pipe()
                self._chosen = "ssh"
                return conn
            except KeysRefusedError:
                if self._chosen == "ssh":
                    raise
                logger.debug("%s: ssh found no usable key; logging in with paramiko", self.target.account)
                self._chosen = "paramiko"
        return self._open_paramiko()

    def run_command(self, command: str, timeout: float) -> tuple[int, bytes]:
        """Run the shell ``command`` on the server, over the transport the first connection
        chose; its exit status and the start of its output, or -1 if it could not run or did
        not end within ``timeout`` seconds (then it is stopped). Its errors are only logged."""
        try:
            if self._chosen == "ssh" and self._ssh is not None:
                argv = self._ssh_argv(self._shared_options()[0], command)
                done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                                      start_new_session=True)  # a Ctrl-C reaches this process, which stops it
                status, out, said = done.returncode, done.stdout[:COMMAND_OUTPUT], done.stderr
            else:
                status, out, said = self._run_over_paramiko(command, timeout)
        except (ArchiveError, EOFError, OSError, subprocess.TimeoutExpired, *_paramiko_errors()) as exc:
            logger.debug("%s: could not run %r: %s", self.target.account, command, exc)
            return -1, b""
        logger.debug("%s: %r exited with %d: %s", self.target.account, command, status,
                     said.decode(errors="replace").strip()[-200:])
        return status, out

    def _run_over_paramiko(self, command: str, timeout: float) -> tuple[int, bytes, bytes]:
        transport = self._paramiko.connect()
        try:
            channel = transport.open_session(timeout=timeout)
            channel.settimeout(timeout)
            channel.exec_command(command)
            if not channel.status_event.wait(timeout):
                raise TimeoutError(f"no exit status within {timeout:g} s")
            return channel.recv_exit_status(), channel.recv(COMMAND_OUTPUT), channel.recv_stderr(COMMAND_OUTPUT)
        finally:
            transport.close()

    def close(self) -> None:
        """End the shared SSH connection, if any (after the connections of the pool)."""
        if self._shared is not None:
            self._shared.close()

    def _ssh_argv(self, options: list[str], command: str | None = None) -> list[str]:
        assert self._ssh is not None
        e = self._endpoint
        return ssh_command(self._ssh, self.target, e.host, e.user, e.port, command, [*self._cipher_order(), *options])

    def _cipher_order(self) -> list[str]:
        """The options that put AES-GCM first where it is faster (:mod:`~archive.backends.sftp_ciphers`), found once."""
        with self._ciphers_lock:
            if self._ciphers is None:
                assert self._ssh is not None
                e = self._endpoint
                self._ciphers = cipher_options(self._ssh, config_options(self.target, e.user, e.port), e.host)
            return self._ciphers

    def _shared_options(self) -> tuple[list[str], Callable[[], None] | None]:
        """The options that make an ssh session a client of this archive's shared connection
        (:mod:`~archive.backends.sftp_mux`) and what ends that connection (when the session stalls
        or is interrupted); ``([], None)`` when it has none."""
        if self._shared is None:
            return [], None
        try:
            return self._shared.client_options(2 * self.target.connect_timeout)
        except MasterFailed as exc:
            raise startup_error(exc.stderr, self.target) from None

    def _open_pipe(self) -> Connection:
        if self._ssh is None:
            raise InvalidInputError(f"{TRANSPORT_ENV}=ssh, but there is no ssh client on PATH")
        options, drop_shared = self._shared_options()
        pipe, sftp = open_pipe_sftp(self._ssh_argv(options), self.target, on_stall=drop_shared)
        try:
            conn = Connection(pipe, sftp, self.target.hostname, drop_shared)
        except (EOFError, OSError, *_paramiko_errors()) as exc:
            raise BackendUnavailableError(f"cannot reach {self.target.hostname}: {pipe.reason()}") from exc
        pipe.timeout = io_timeout()
        return conn

    def _open_paramiko(self) -> Connection:
        """Log in with paramiko and start SFTP, each step waiting at most the connect timeout
        (paramiko waits for the subsystem's start without one: a watchdog closes the transport)."""
        host, timeout = self.target.hostname, self.target.connect_timeout
        transport = self._paramiko.connect()
        try:
            with _watchdog(timeout, transport.close):
                channel = transport.open_session(window_size=WINDOW_SIZE, timeout=timeout)
                channel.settimeout(timeout)
                channel.invoke_subsystem("sftp")
                conn = Connection(ParamikoLink(transport), SFTPClient(channel).start(), host)
        except BaseException as exc:
            transport.close()
            if isinstance(exc, (EOFError, OSError, *_paramiko_errors())):
                reason = f"no SFTP session within {timeout:g} s" if isinstance(exc, TimeoutError) or \
                    not transport.is_active() else f"no SFTP service ({sftp_reason(exc)})"
                raise BackendUnavailableError(f"cannot reach {host}: {reason}") from exc
            raise
        channel.settimeout(io_timeout())
        return conn


@contextmanager
def _watchdog(seconds: float, give_up: Callable[[], None]) -> Iterator[None]:
    """Call ``give_up`` from another thread if the block still runs after ``seconds``."""
    lock, done = threading.Lock(), [False]

    def fire() -> None:
        with lock:
            if not done[0]:
                give_up()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            done[0] = True
        timer.cancel()


def _requested_transport(endpoint: Endpoint) -> str:
    """``ssh``, ``paramiko`` or ``auto`` from the environment and what the URL needs."""
    requested = os.environ.get(TRANSPORT_ENV, "auto").strip().lower() or "auto"
    if requested not in ("auto", "ssh", "paramiko"):
        raise InvalidInputError(f"{TRANSPORT_ENV} must be auto, ssh or paramiko, not {requested!r}")
    if requested == "auto" and (endpoint.password or os.name != "posix" or find_ssh() is None):
        return "paramiko"  # ssh cannot take a password without a terminal
    return requested


class ConnectionPool:
    """Connections lent to one thread at a time.

    A connection is opened when every open one is busy and kept for reuse afterwards; one that
    broke is dropped, and the next borrower gets a fresh one. How far the pool grows depends
    on what the transfers move (see :meth:`borrow`): a connection of its own costs about 0.15 s
    of CPU to open (ssh and sshd together, measured on loopback; a session of the shared
    connection costs little, but its crypto shares one process), which pays off only while transfers
    wait on round trips and the server (many small files: one connection per thread), not
    while they stream (large files: :data:`BULK_CONNECTIONS` keep ssh's crypto busy on every
    core; more only compete for the same cores).
    """

    def __init__(self, connector: Connector, location: str) -> None:
        self.connector, self._location = connector, location
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)
        self._connecting = threading.BoundedSemaphore(MAX_CONNECTING)
        self._closed = False
        self._open = 0  # connections open or being opened
        self._recent: deque[int] = deque(maxlen=RECENT_TRANSFERS)  # bytes each of the last transfers moved

    @contextmanager
    def borrow(self, transfer: bool = False, at_most: int | None = None) -> Iterator[Connection]:
        """Lend a connection for the duration of the block.

        ``transfer``: the block moves a file's data (a write or read of a key). While one of
        the last :data:`RECENT_TRANSFERS` transfers moved more than :data:`BULK_BYTES` (or
        fewer were seen yet), a transfer waits up to :data:`BULK_WAIT` seconds for a connection
        to come back rather than open one beyond :data:`BULK_CONNECTIONS`; anything else never
        waits.

        ``at_most``: while that many connections are open, wait (up to :data:`BULK_WAIT` seconds)
        for one to come back rather than open another (groups of reads, which keep many requests
        in flight each: more connections cost handshakes and gain nothing).

        An interrupt (Ctrl-C) inside the block closes the connection without waiting for
        anything: it may have stopped a request or reply halfway through a packet, so the
        session is out of step and a reply awaited on it might never come.
        """
        conn = self._take(transfer, at_most)
        moved = conn.sftp.moved
        try:
            yield conn
        except BaseException as exc:
            if interrupted(exc):
                conn.abandon()
            raise
        finally:
            self._give_back(conn, conn.sftp.moved - moved if transfer else None)

    @contextmanager
    def session(self, key: str) -> Iterator[SFTPClient]:
        """Borrow an SFTP client; errors inside are mapped to archive errors for ``key``."""
        with self.borrow() as conn, conn.errors(key):
            yield conn.sftp

    def close(self) -> None:
        """Close the idle connections: each is told first, then each is waited for, so that
        their ssh processes end side by side (one after another took 3 ms each here)."""
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for conn in idle:
            conn.hang_up()
        for conn in idle:
            conn.close()

    def _take(self, transfer: bool, at_most: int | None = None) -> Connection:
        dead: list[Connection] = []
        with self._lock:
            conn = self._idle_or_permit(transfer, dead, at_most)
        for stale in dead:
            stale.close()
        if conn is not None:
            return conn
        try:
            with self._connecting:
                conn = self.connector.open()
        except BaseException:
            with self._lock:
                self._open -= 1
                self._returned.notify()
            raise
        logger.debug("opened an SFTP connection to %s over %s (requests of %d/%d bytes)", self._location,
                     self.connector.transport, conn.read_size, conn.write_size)
        return conn

    def _idle_or_permit(self, transfer: bool, dead: list[Connection], at_most: int | None = None) -> Connection | None:
        """An idle connection, or None once this thread may open one (counted already).
        Called with the lock held; connections found dead go to ``dead`` to be closed."""
        deadline = None
        while True:
            while self._idle:
                conn = self._idle.pop()
                if conn.alive():
                    return conn
                self._open -= 1
                dead.append(conn)
            crowded = at_most is not None and self._open >= at_most
            if not (crowded or transfer and self._open >= BULK_CONNECTIONS and self._streaming()):
                break
            deadline = deadline or time.monotonic() + BULK_WAIT
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._returned.wait(left)
        self._open += 1
        return None

    def _streaming(self) -> bool:
        return len(self._recent) < RECENT_TRANSFERS or max(self._recent) > BULK_BYTES

    def _give_back(self, conn: Connection, moved: int | None) -> None:
        with self._lock:
            if moved is not None:
                streaming = self._streaming()
                self._recent.append(moved)
                if streaming and not self._streaming():  # every waiting transfer may open one now
                    self._returned.notify_all()
            self._returned.notify()
            if conn.alive() and not self._closed:
                self._idle.append(conn)
                return
            self._open -= 1
        conn.close()


def sftp_reason(exc: BaseException) -> str:
    """One line from an SFTP status (``Failure``, ``Permission denied``...) or socket error."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on the server"
    text = " ".join(str(getattr(exc, "strerror", None) or str(exc)).split()).rstrip(": ")
    return text or type(exc).__name__
