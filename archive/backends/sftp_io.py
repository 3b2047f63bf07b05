"""SFTP file transfer with many requests in flight, over :class:`~archive.backends.sftp_proto.SFTPClient`.

A writer keeps a bounded window of write requests in flight and checks every reply (paramiko's
pipelined ``SFTPFile.write`` checked them only now and then, never after its last hundred
writes or on close, so a failed write on a full disk could pass unnoticed); a reader keeps a
window of read requests in flight from the calling thread (no helper thread buffering a whole
file, as paramiko's ``prefetch`` did). Errors are raised where the caller can map them.
"""

from __future__ import annotations

import io
import logging
from collections import deque
from typing import Callable, ContextManager, Iterable

from ..errors import TransferInterruptedError
from ..sync_behind import SyncBehind
from .sftp_proto import (ATTRS, CLOSE, DATA, EOF, EXTENDED, FLAG_CREATE, FLAG_EXCL, FLAG_READ, FLAG_WRITE, FSTAT,
                         OP_UNSUPPORTED, READ, WRITE, Reply, SFTPClient, check_ok, status_code, status_error, string,
                         u32, u64)

logger = logging.getLogger(__name__)
READ_WINDOW = 8 * 1024 * 1024  # bytes requested ahead when reading: bounds memory per stream
WRITE_WINDOW = 4 * 1024 * 1024  # bytes of writes not yet acknowledged
SFTP_REQUEST = 32 * 1024  # the size every SFTP server takes; more if limits@openssh.com allows
MAX_REQUEST = 255 * 1024  # bigger requests cut per-request work: reads 2-4x faster here
NEW_FILE = FLAG_WRITE | FLAG_CREATE | FLAG_EXCL
EXISTING_FILE = FLAG_READ | FLAG_WRITE
SESSION_ERRORS = (OSError, EOFError)  # what a request on a session may raise (ConnectionError included)


def interrupted(exc: BaseException) -> bool:
    """True for Ctrl-C (KeyboardInterrupt), other exits that are no error (SystemExit...), and
    a job thread told to stop because the command was interrupted (TransferInterruptedError).

    Such an exception may have stopped a request halfway through its packet: the session is
    out of step, and waiting for any reply on it could wait forever.
    """
    return not isinstance(exc, Exception) or isinstance(exc, TransferInterruptedError)


def server_limits(sftp: SFTPClient) -> tuple[int, int]:
    """The read and write request sizes to use on this session.

    OpenSSH's server reports its limits (``limits@openssh.com``, about 256 KiB); others get
    the 32 KiB every SFTP server accepts.
    """
    limits = sftp.limits()
    if limits is None:
        return SFTP_REQUEST, SFTP_REQUEST
    read, write = limits
    return min(read or MAX_REQUEST, MAX_REQUEST), min(write or MAX_REQUEST, MAX_REQUEST)


def free_space(sftp: SFTPClient, path: str) -> int | None:
    """Bytes available to us on the server's filesystem at ``path``; None if it won't say."""
    try:
        return sftp.free_space(path)
    except OSError as exc:
        logger.debug("statvfs of %s refused: %s", path, exc)
        return None


def close_later(sftp: SFTPClient, handle: bytes) -> None:
    """Close a handle of a file that was only read, without waiting for the reply."""
    sftp.forget(sftp.send(CLOSE, string(handle)))


def close_quietly(sftp: SFTPClient, handle: bytes) -> None:
    """Close a handle after another error, which must not be masked: a failure is only logged."""
    try:
        sftp.close(handle)
    except SESSION_ERRORS as exc:
        logger.debug("closing a handle after an error failed too: %s", exc)


def remove_quietly(sftp: SFTPClient, path: str) -> None:
    """Remove a temporary file after a failed write; a failure here is logged, not raised."""
    try:
        sftp.remove(path)
    except FileNotFoundError:
        return
    except SESSION_ERRORS as exc:
        logger.warning("could not remove temporary file %s: %s", path, exc)


def upload(sftp: SFTPClient, path: str, chunks: Iterable[bytes], request_size: int,
           sync_up_to: int | None = None, behind: SyncBehind | None = None) -> tuple[int, int, bool]:
    """Stream ``chunks`` into a new file; return the bytes sent, the size the server reports,
    and whether the file was made durable (``fsync@openssh.com``) before it was closed.

    ``sync_up_to``: a file of more bytes than this is closed unsynced, for the caller to sync
    with :func:`sync_file`, on another session if it likes (None: every file is synced here).
    ``behind``: told how many bytes the server has acknowledged (:mod:`~archive.sync_behind`).
    """
    writer = PipelinedWriter(sftp, sftp.open(path, NEW_FILE), request_size, behind=behind)
    stored = writer.write_all(chunks, sync_up_to)
    return writer.offset, stored, writer.synced


def sync_file(sftp: SFTPClient, path: str) -> None:
    """Make a closed file's data durable: ``fsync@openssh.com`` through a handle opened for it.

    The handle is opened for writing (nothing is written or cut): some servers flush a file
    only through a handle that may write to it (Windows' ``FlushFileBuffers``). A server
    without the extension leaves the file as durable as it makes any, as :meth:`PipelinedWriter.close` does.
    """
    handle = string(sftp.open(path, FLAG_WRITE))
    fsync = sftp.send(EXTENDED, string("fsync@openssh.com"), handle)
    close = sftp.send(CLOSE, handle)
    try:
        _check_fsync(sftp.reply(fsync))
    finally:
        check_ok(sftp.reply(close), "close")


class PipelinedWriter:
    """Writes at increasing offsets with up to :data:`WRITE_WINDOW` bytes unacknowledged.

    Every reply is checked: the first failed write raises in :meth:`write` or :meth:`close`.
    :meth:`close` sends ``fsync@openssh.com`` (the data is on the server's disk before the
    file is renamed into place, as the folder backend's ``fsync`` does), ``fstat`` and
    ``close`` right behind the last writes and then waits for all replies at once, so a small
    file costs one round trip after ``open``. A write's data goes to the link as a view of
    the caller's chunk, never copied here.
    """

    def __init__(self, sftp: SFTPClient, handle: bytes, request_size: int, offset: int = 0,
                 behind: SyncBehind | None = None) -> None:
        self.offset = offset
        self._sftp, self._request_size = sftp, request_size
        self._handle = string(handle)  # encoded once: it goes with every write
        self._raw_handle = handle
        self._pending: deque[tuple[int, int]] = deque()  # (request id, length)
        self._in_flight = 0
        self._closing = False
        self.synced = False  # whether close() made the file durable
        self._behind = behind

    def write(self, data: bytes | memoryview) -> None:
        view, step, send = memoryview(data).cast("B"), self._request_size, self._sftp.send
        for start in range(0, len(view), step):
            piece = view[start:start + step]
            size = len(piece)
            self._pending.append((send(WRITE, self._handle, u64(self.offset), u32(size), piece), size))
            self.offset += size
            self._in_flight += size
            while self._in_flight > WRITE_WINDOW:
                self._settle_oldest()

    def write_all(self, chunks: Iterable[bytes], sync_up_to: int | None = None) -> int:
        """Write every chunk, then :meth:`close` (syncing the file unless it ends beyond
        ``sync_up_to`` bytes); on any error (a chunk's own included) abort."""
        try:
            for chunk in chunks:
                self.write(chunk)
            return self.close(sync=sync_up_to is None or self.offset <= sync_up_to)
        except BaseException as exc:
            self.abort(exc)
            raise

    def close(self, sync: bool = True) -> int:
        """Close the file after checking every write, and after making it durable unless
        ``sync`` is false; return its size on the server."""
        self._closing = True
        sftp = self._sftp
        fsync = sftp.send(EXTENDED, string("fsync@openssh.com"), self._handle) if sync else None
        fstat = sftp.send(FSTAT, self._handle)
        close = sftp.send(CLOSE, self._handle)
        while self._pending:
            self._settle_oldest()
        if fsync is not None:
            _check_fsync(sftp.reply(fsync))
            self.synced = True
        size = sftp.attrs_of(sftp.reply(fstat), "fstat").st_size or 0
        check_ok(sftp.reply(close), "close")
        return size

    def abort(self, exc: BaseException) -> None:
        """Close the handle after ``exc`` (unless :meth:`close` sent that already).

        After an interrupt nothing is sent or awaited: a request may have been stopped halfway
        through its packet, so no reply would ever come; the connection is closed instead (see
        :meth:`archive.backends.sftp_conn.ConnectionPool.borrow`).
        """
        if not self._closing and not interrupted(exc):
            close_quietly(self._sftp, self._raw_handle)

    def _settle_oldest(self) -> None:
        num, length = self._pending.popleft()
        self._in_flight -= length
        check_ok(self._sftp.reply(num), "write")
        if self._behind is not None:
            self._behind.wrote(self.offset - self._in_flight)


def _check_fsync(reply: Reply) -> None:
    """Raise if an ``fsync@openssh.com`` failed; a server without it is as durable as it is."""
    if status_code(reply) != OP_UNSUPPORTED:
        check_ok(reply, "fsync")


class WindowedReader(io.RawIOBase):
    """Reads a remote file with up to :data:`READ_WINDOW` bytes of read requests in flight.

    The reading thread keeps a sliding window of requests itself: memory stays flat, and
    errors surface in the caller's ``read``, inside ``errors()`` (a context manager that maps
    them).
    """

    def __init__(self, sftp: SFTPClient, handle: bytes, size: int, request_size: int,
                 errors: Callable[[], ContextManager[None]]) -> None:
        super().__init__()
        self._sftp, self._handle, self._size, self._errors = sftp, handle, size, errors
        self._field = string(handle)
        self._request_size, self._offset = request_size, 0  # next byte to ask for
        self._pending: deque[tuple[int, int, int]] = deque()  # (request id, offset, length)
        self._buffer: memoryview = memoryview(b"")
        self._position = 0  # how far the block being read is read

    @classmethod
    def open(cls, sftp: SFTPClient, path: str, request_size: int,
             errors: Callable[[], ContextManager[None]]) -> "WindowedReader":
        """Open ``path``, then ask for its size and its first block at once.

        A file of up to one request is then read in a single round trip after the open.
        """
        reader = cls(sftp, sftp.open(path, FLAG_READ), request_size, request_size, errors)
        fstat = sftp.send(FSTAT, reader._field)
        reader._fill_window()  # one read of ``request_size`` bytes: the size is not known yet
        reply = sftp.reply(fstat)
        if reply.kind != ATTRS:
            reader.drain()
            raise status_error(reply, "fstat")
        reader._size = reply.fields().attrs().st_size or 0
        return reader

    @property
    def handle(self) -> bytes:
        return self._handle

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        if self._position >= len(self._buffer):
            with self._errors():
                self._buffer, self._position = self._next_block(), 0
        n = min(len(target), len(self._buffer) - self._position)
        target[:n] = self._buffer[self._position:self._position + n]
        self._position += n
        return n

    def drain(self) -> None:
        """Collect the replies still in flight, so the session can serve other requests."""
        while self._pending:
            self._sftp.reply(self._pending.popleft()[0])

    def _next_block(self) -> memoryview:
        self._fill_window()
        if not self._pending:
            return memoryview(b"")
        num, offset, length = self._pending.popleft()
        reply = self._sftp.reply(num)
        if reply.kind == DATA:
            data = reply.fields().string()
        elif status_code(reply) == EOF:
            data = memoryview(b"")
        else:
            raise status_error(reply, "read")
        if len(data) < length:  # a short read: the server caps replies lower, or the file shrank
            self._restart_at(offset + len(data), len(data))
        return data

    def _fill_window(self) -> None:
        send, field = self._sftp.send, self._field
        while self._offset < self._size and len(self._pending) * self._request_size < READ_WINDOW:
            length = min(self._request_size, self._size - self._offset)
            self._pending.append((send(READ, field, u64(self._offset), u32(length)), self._offset, length))
            self._offset += length

    def _restart_at(self, offset: int, served: int) -> None:
        """Forget requests in flight after a short read and ask again from ``offset``."""
        self.drain()
        self._offset = offset if served else self._size  # an empty reply means the end
        self._request_size = max(served, 1024)
