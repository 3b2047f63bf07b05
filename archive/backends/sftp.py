"""``SFTPArchive``: an archive in a folder on a server reached by SSH.

Locations look like ``sftp://[user[:password]@]host[:port]/path``. The path rule (as curl and
most file managers have it): the path is **absolute** on the server, so
``sftp://lab/srv/archive`` is ``/srv/archive``; a path that starts with ``/~/`` is relative to
the login (home) folder, so ``sftp://lab/~/archive`` is ``archive`` in the home folder.
``host`` may be a ``Host`` alias of ``~/.ssh/config``; logging in is left to
:mod:`archive.credentials` (config, agent, keys, keyring, known_hosts). A password in the URL is
accepted but never shown: :attr:`location` has it replaced by ``***``.

Only the five primitives live here. A write streams into a unique file under ``tmp/`` in the
archive, confirms its size on the server, then moves it into place: a plain SFTP ``rename``
for create-only writes (the server refuses an existing target, atomically, by a hard link)
and ``posix-rename@openssh.com`` otherwise (an atomic replace). The temporary file is removed
on any error, including an exception raised by the chunks themselves (how shared code aborts
a blob whose hash does not match). Errors are mapped to :mod:`archive.errors` here.

Primitives are called from several threads at once. Each thread borrows a whole SSH
connection (one SFTP channel on its own transport) from a small pool: paramiko encrypts each
transport in one thread, so separate transports spread the crypto, and SFTP requests of
different files never queue behind each other. Writes are pipelined and reads prefetch a
bounded window, so memory stays flat however large the file.
"""

from __future__ import annotations

import errno
import io
import logging
import stat
import threading
import uuid
from collections import deque
from contextlib import contextmanager
from typing import BinaryIO, Iterable, Iterator
from urllib.parse import unquote, urlsplit

import paramiko
from paramiko.sftp import CMD_DATA, CMD_EXTENDED, CMD_READ, int64

from .. import layout
from ..credentials import SSHConnector, resolve_target
from ..errors import (BackendError, BackendUnavailableError, InvalidInputError, KeyExistsError,
                      KeyNotFoundError)
from ..interface import ArchiveInterface, KeyInfo

logger = logging.getLogger(__name__)
KEYRING_SERVICE = "archive-sftp"
READ_WINDOW = 8 * 1024 * 1024  # bytes requested ahead when reading: bounds memory per stream
SFTP_REQUEST = 32 * 1024  # the size every SFTP server takes; more if limits@openssh.com allows
MAX_REQUEST = 255 * 1024  # bigger requests cut per-request Python work: reads 2-4x faster here
WINDOW_SIZE = 8 * 1024 * 1024  # SSH channel window: enough in flight to fill a fast link
MAX_CONNECTING = 4  # below sshd's MaxStartups (10), which drops extra handshakes


class SFTPArchive(ArchiveInterface):
    """An archive in a folder on an SSH server; see the module docstring for the URL."""

    max_workers = 8

    def __init__(self, url: str) -> None:
        parts = _parse_url(url)
        self.root = parts["root"]
        super().__init__(parts["shown"])
        target = resolve_target(parts["host"], parts["user"], parts["port"])
        self._pool = _ConnectionPool(SSHConnector(target, parts["password"], keyring_service=KEYRING_SERVICE,
                                                  window_size=WINDOW_SIZE), self.location)
        self._dirs: set[str] = set()
        self._dirs_lock = threading.Lock()

    def remote_path(self, key: str) -> str:
        """The server path that holds ``key``."""
        return f"{self.root}/{key}" if key else self.root

    def stat_key(self, key: str) -> KeyInfo:
        with self._pool.session(key) as sftp:
            attrs = sftp.stat(self.remote_path(key))
        return KeyInfo(attrs.st_size or 0, float(attrs.st_mtime or 0))

    @contextmanager
    def open_key(self, key: str) -> Iterator[BinaryIO]:
        with self._pool.borrow() as conn:
            with conn.errors(key):
                handle = conn.sftp.open(self.remote_path(key), "r")
                size = handle.stat().st_size or 0
            with handle:  # only the reads are translated: the caller's own errors pass as they are
                yield io.BufferedReader(_WindowedReader(conn, handle, size, lambda: conn.errors(key)),
                                        buffer_size=1024 * 1024)

    def write_key(self, key: str, chunks: Iterable[bytes], *, exclusive: bool = False) -> None:
        target = self.remote_path(key)
        tmp = self.remote_path(f"{layout.TMP_DIR}/{uuid.uuid4().hex}.part")
        with self._pool.borrow() as conn, conn.errors(key):
            sftp = conn.sftp
            self._ensure_dir(sftp, self.remote_path(layout.TMP_DIR))
            self._ensure_dir(sftp, _parent(target))
            try:
                size = _upload(sftp, tmp, chunks, conn.write_size)
                _confirm_size(sftp, tmp, size, key)
                self._move_into_place(sftp, tmp, target, key, exclusive)
            except BaseException:
                _remove_quietly(sftp, tmp)
                raise

    def list_keys(self, prefix: str) -> list[str]:
        try:
            with self._pool.session(prefix) as sftp:
                names = sftp.listdir(self.remote_path(prefix))
        except KeyNotFoundError:
            return []
        return [name for name in names if not name.startswith(".")]

    def delete_key(self, key: str) -> None:
        with self._pool.session(key) as sftp:
            sftp.remove(self.remote_path(key))

    def close(self) -> None:
        self._pool.close()

    # ------------------------------------------------------------------ helpers
    def _move_into_place(self, sftp: paramiko.SFTPClient, tmp: str, target: str, key: str, exclusive: bool) -> None:
        """Rename ``tmp`` to ``target``; a folder removed meanwhile is created again once."""
        for attempt in (1, 2):
            try:
                if exclusive:
                    sftp.rename(tmp, target)  # plain SFTP rename refuses an existing target
                else:
                    sftp.posix_rename(tmp, target)  # atomic replace
                return
            except FileNotFoundError:
                if attempt == 2 or not _exists(sftp, tmp):
                    raise
                self._forget_dirs()
                self._ensure_dir(sftp, _parent(target))
            except OSError:
                if exclusive and _exists(sftp, target):
                    raise KeyExistsError(key) from None
                raise

    def _ensure_dir(self, sftp: paramiko.SFTPClient, path: str) -> None:
        """``mkdir -p`` over SFTP; folders known to exist are remembered to save round trips."""
        if path in self._dirs or path in ("", "/", "."):
            return
        try:
            if stat.S_ISDIR(sftp.stat(path).st_mode or 0):
                self._remember_dir(path)
                return
        except FileNotFoundError:
            self._ensure_dir(sftp, _parent(path))
        try:
            sftp.mkdir(path)
        except OSError:
            if not _exists(sftp, path):  # not a lost race with another writer
                raise
        self._remember_dir(path)

    def _remember_dir(self, path: str) -> None:
        with self._dirs_lock:
            self._dirs.add(path)

    def _forget_dirs(self) -> None:
        with self._dirs_lock:
            self._dirs.clear()


def _upload(sftp: paramiko.SFTPClient, path: str, chunks: Iterable[bytes], request_size: int) -> int:
    """Stream ``chunks`` into a new file with pipelined writes; return the bytes written."""
    size = 0
    with sftp.open(path, "wx") as handle:
        handle.set_pipelined(True)
        handle.MAX_REQUEST_SIZE = request_size  # an instance attribute that paramiko reads
        for chunk in chunks:
            handle.write(chunk)
            size += len(chunk)
    return size


def _confirm_size(sftp: paramiko.SFTPClient, path: str, size: int, key: str) -> None:
    """Check that everything written reached the server before the file becomes visible."""
    stored = sftp.stat(path).st_size
    if stored != size:
        raise BackendError(f"{key}: the server stored {stored} of {size} bytes")


def _limits(sftp: paramiko.SFTPClient) -> tuple[int, int]:
    """The read and write request sizes to use on this channel.

    OpenSSH's server reports its limits (``limits@openssh.com``, about 256 KiB); others get
    the 32 KiB every SFTP server accepts.
    """
    try:
        _, msg = sftp._request(CMD_EXTENDED, "limits@openssh.com")
    except OSError:
        return SFTP_REQUEST, SFTP_REQUEST
    msg.get_int64()  # max packet length
    read, write = msg.get_int64(), msg.get_int64()
    return min(read or MAX_REQUEST, MAX_REQUEST), min(write or MAX_REQUEST, MAX_REQUEST)


def _remove_quietly(sftp: paramiko.SFTPClient, path: str) -> None:
    """Remove a temporary file after a failed write; a failure here is logged, not raised."""
    try:
        sftp.remove(path)
    except FileNotFoundError:
        return
    except (OSError, EOFError, paramiko.SSHException) as exc:
        logger.warning("could not remove temporary file %s: %s", path, exc)


def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.stat(path)
    except FileNotFoundError:
        return False
    return True


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


class _WindowedReader(io.RawIOBase):
    """Reads a remote file with up to :data:`READ_WINDOW` bytes of read requests in flight.

    paramiko's ``prefetch``/``readv`` ask for the whole file from a helper thread and buffer
    whatever arrives ahead of the reader (memory grows with the file, and a dropped connection
    kills that thread with a stray traceback). Here the reading thread keeps a sliding window
    of requests itself: memory stays flat, and errors surface in the caller's ``read``.
    """

    def __init__(self, conn: "_Connection", handle: paramiko.SFTPFile, size: int, errors) -> None:
        super().__init__()
        self._sftp, self._handle, self._size, self._errors = conn.sftp, handle, size, errors
        self._request_size, self._offset = conn.read_size, 0  # next byte to ask for
        self._pending: deque[tuple[int, int, int]] = deque()  # (request number, offset, length)
        self._arrived: dict[int, bytes | BaseException] = {}
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        if not self._buffer:
            with self._errors():
                self._buffer = self._next_block()
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        """Called by paramiko for each reply to one of our requests."""
        if t == CMD_DATA:
            self._arrived[num] = msg.get_string()
            return
        try:
            self._sftp._convert_status(msg)
            self._arrived[num] = OSError(f"unexpected SFTP reply {t} to a read")
        except EOFError:
            self._arrived[num] = b""
        except OSError as exc:
            self._arrived[num] = exc

    def _next_block(self) -> bytes:
        self._fill_window()
        if not self._pending:
            return b""
        num, offset, length = self._pending.popleft()
        while num not in self._arrived:
            self._sftp._read_response()
        data = self._arrived.pop(num)
        if isinstance(data, BaseException):
            raise data
        if len(data) < length:  # a short read: the server caps replies lower, or the file shrank
            self._restart_at(offset + len(data), len(data))
        return data

    def _fill_window(self) -> None:
        while self._offset < self._size and len(self._pending) * self._request_size < READ_WINDOW:
            length = min(self._request_size, self._size - self._offset)
            num = self._sftp._async_request(self, CMD_READ, self._handle.handle, int64(self._offset), int(length))
            self._pending.append((num, self._offset, length))
            self._offset += length

    def _restart_at(self, offset: int, served: int) -> None:
        """Forget requests in flight after a short read and ask again from ``offset``."""
        for num, _, _ in self._pending:
            self._arrived.pop(num, None)
        self._pending.clear()
        self._offset = offset if served else self._size  # an empty reply means the end
        self._request_size = max(served, 1024)


class _Connection:
    """One SSH transport with one SFTP channel, used by one thread at a time."""

    def __init__(self, transport: paramiko.Transport, sftp: paramiko.SFTPClient, host: str) -> None:
        self.transport, self.sftp, self.host = transport, sftp, host
        self.read_size, self.write_size = _limits(sftp)

    @contextmanager
    def errors(self, key: str) -> Iterator[None]:
        """Turn paramiko and socket errors into the archive's errors at the backend boundary.

        A broken connection is closed here, so the pool drops it and a retry reconnects.
        """
        try:
            yield
        except FileNotFoundError:
            raise KeyNotFoundError(key) from None
        except (EOFError, paramiko.SSHException, OSError) as exc:
            alive = self.transport.is_active() and not isinstance(exc, (EOFError, paramiko.SSHException,
                                                                        ConnectionError))
            if alive and isinstance(exc, PermissionError):
                raise BackendError(f"{key}: permission denied on {self.host}") from exc
            if alive:
                raise BackendError(f"{key}: {_sftp_reason(exc)} on {self.host}") from exc
            self.transport.close()
            raise BackendUnavailableError(f"cannot reach {self.host}: {_sftp_reason(exc)}") from exc


class _ConnectionPool:
    """SSH connections, each with one SFTP channel, lent to one thread at a time.

    A connection is opened when every open one is busy and kept for reuse afterwards, so the
    pool grows to the number of threads that use it at once. A connection that broke is
    dropped; the next borrower gets a fresh one.
    """

    def __init__(self, connector: SSHConnector, location: str) -> None:
        self._connector, self._location = connector, location
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._connecting = threading.BoundedSemaphore(MAX_CONNECTING)
        self._closed = False

    @contextmanager
    def borrow(self) -> Iterator[_Connection]:
        """Lend a connection for the duration of the block."""
        conn = self._take()
        try:
            yield conn
        finally:
            self._give_back(conn)

    @contextmanager
    def session(self, key: str) -> Iterator[paramiko.SFTPClient]:
        """Borrow an SFTP client; errors inside are mapped to archive errors for ``key``."""
        with self.borrow() as conn, conn.errors(key):
            yield conn.sftp

    def close(self) -> None:
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for conn in idle:
            conn.transport.close()

    def _take(self) -> _Connection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if conn.transport.is_active():
                    return conn
                conn.transport.close()
        with self._connecting:
            return self._open()

    def _open(self) -> _Connection:
        host = self._connector.target.hostname
        transport = self._connector.connect()
        try:
            conn = _Connection(transport, paramiko.SFTPClient.from_transport(transport, window_size=WINDOW_SIZE), host)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            transport.close()
            raise BackendUnavailableError(f"cannot reach {host}: no SFTP service ({_sftp_reason(exc)})") from exc
        logger.debug("opened an SFTP connection to %s (requests of %d/%d bytes)", self._location,
                     conn.read_size, conn.write_size)
        return conn

    def _give_back(self, conn: _Connection) -> None:
        with self._lock:
            if conn.transport.is_active() and not self._closed:
                self._idle.append(conn)
                return
        conn.transport.close()


def _sftp_reason(exc: BaseException) -> str:
    """One line from an SFTP status (``Failure``, ``Permission denied``...) or socket error."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on the server"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def _parse_url(url: str) -> dict:
    """Split an ``sftp://`` URL into host, user, password, port, server root and a safe form."""
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise InvalidInputError(f"bad port in archive location {_redact(url)!r}") from None
    if parts.scheme.lower() != "sftp" or not host:
        raise InvalidInputError(f"not an sftp://[user@]host[:port]/path location: {_redact(url)!r}")
    path = unquote(parts.path)
    if path in ("", "/"):
        raise InvalidInputError(f"{_redact(url)!r} names no folder: add /absolute/path or /~/path-in-home")
    root = "." if path in ("/~", "/~/") else path[3:].rstrip("/") if path.startswith("/~/") else path.rstrip("/")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return {"host": host, "port": port, "user": user, "password": password, "root": root, "shown": _redact(url)}


def _redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{netloc[1]}").geturl()
