"""SFTP file transfer with many requests in flight, on any transport paramiko's SFTP client runs on.

paramiko's own pipelined ``SFTPFile.write`` checks the server's replies only now and then and
never after the last hundred writes or on close, so a failed write (a full disk) could pass
unnoticed; its ``prefetch`` buffers whole files in a helper thread. The classes here keep a
bounded window of requests in flight from the calling thread, check every reply, and raise
errors where the caller can map them. They use paramiko's message code
(``_async_request``/``_read_response``), so they work the same over an SSH channel and over
the pipes of an ``ssh -s sftp`` child.
"""

from __future__ import annotations

import io
import logging
import struct
from collections import deque
from typing import Callable, ContextManager, Iterable

import paramiko
from paramiko.sftp import (CMD_ATTRS, CMD_CLOSE, CMD_DATA, CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_FSETSTAT,
                           CMD_FSTAT, CMD_HANDLE, CMD_OPEN, CMD_READ, CMD_STATUS, CMD_WRITE, SFTP_FLAG_CREATE,
                           SFTP_FLAG_EXCL, SFTP_FLAG_READ, SFTP_FLAG_WRITE, SFTP_OP_UNSUPPORTED, int64)

from ..errors import TransferInterruptedError

logger = logging.getLogger(__name__)
READ_WINDOW = 8 * 1024 * 1024  # bytes requested ahead when reading: bounds memory per stream
WRITE_WINDOW = 4 * 1024 * 1024  # bytes of writes not yet acknowledged
SFTP_REQUEST = 32 * 1024  # the size every SFTP server takes; more if limits@openssh.com allows
MAX_REQUEST = 255 * 1024  # bigger requests cut per-request Python work: reads 2-4x faster here
NEW_FILE = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL
EXISTING_FILE = SFTP_FLAG_READ | SFTP_FLAG_WRITE


def interrupted(exc: BaseException) -> bool:
    """True for Ctrl-C (KeyboardInterrupt), other exits that are no error (SystemExit...), and
    a job thread told to stop because the command was interrupted (TransferInterruptedError).

    Such an exception may have stopped paramiko in the middle of sending or reading a packet:
    the session is out of step, and waiting for any reply on it could wait forever.
    """
    return not isinstance(exc, Exception) or isinstance(exc, TransferInterruptedError)


def server_limits(sftp: paramiko.SFTPClient) -> tuple[int, int]:
    """The read and write request sizes to use on this session.

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


def free_space(sftp: paramiko.SFTPClient, path: str) -> int | None:
    """Bytes available to us on the server's filesystem at ``path``; None if it won't say.

    OpenSSH reports a full disk as a bare "Failure"; ``statvfs@openssh.com`` tells why.
    """
    try:
        t, msg = sftp._request(CMD_EXTENDED, "statvfs@openssh.com", path)
    except OSError as exc:
        logger.debug("statvfs of %s refused: %s", path, exc)
        return None
    if t != CMD_EXTENDED_REPLY:
        return None
    _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
    return bavail * frsize


def open_handle(sftp: paramiko.SFTPClient, path: str, flags: int) -> bytes:
    """Open ``path`` with SFTP ``flags`` and return the server's handle."""
    t, msg = sftp._request(CMD_OPEN, path, flags, paramiko.SFTPAttributes())
    if t != CMD_HANDLE:
        raise paramiko.SFTPError(f"unexpected SFTP reply {t} to open")
    return msg.get_binary()


def close_handle(sftp: paramiko.SFTPClient, handle: bytes) -> None:
    """Close a handle; unlike paramiko's ``SFTPFile.close`` an error is raised, not ignored."""
    sftp._request(CMD_CLOSE, handle)


def close_later(sftp: paramiko.SFTPClient, handle: bytes) -> None:
    """Close a handle of a file that was only read, without waiting: paramiko skips the reply."""
    sftp._async_request(type(None), CMD_CLOSE, handle)


def close_quietly(sftp: paramiko.SFTPClient, handle: bytes) -> None:
    """Close a handle after another error, which must not be masked: a failure is only logged."""
    try:
        close_handle(sftp, handle)
    except (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError) as exc:
        logger.debug("closing a handle after an error failed too: %s", exc)


def remove_quietly(sftp: paramiko.SFTPClient, path: str) -> None:
    """Remove a temporary file after a failed write; a failure here is logged, not raised."""
    try:
        sftp.remove(path)
    except FileNotFoundError:
        return
    except (OSError, EOFError, paramiko.SSHException) as exc:
        logger.warning("could not remove temporary file %s: %s", path, exc)


def upload(sftp: paramiko.SFTPClient, path: str, chunks: Iterable[bytes], request_size: int) -> tuple[int, int]:
    """Stream ``chunks`` into a new file; return the bytes sent and the size the server reports."""
    writer = PipelinedWriter(sftp, open_handle(sftp, path, NEW_FILE), request_size)
    stored = writer.write_all(chunks)
    return writer.offset, stored


def truncate_handle(sftp: paramiko.SFTPClient, handle: bytes, size: int) -> None:
    attrs = paramiko.SFTPAttributes()
    attrs.st_size = size
    sftp._request(CMD_FSETSTAT, handle, attrs)


class PipelinedWriter:
    """Writes at increasing offsets with up to :data:`WRITE_WINDOW` bytes unacknowledged.

    Every reply is checked: the first failed write raises in :meth:`write` or :meth:`close`.
    :meth:`close` sends ``fsync@openssh.com`` (the data is on the server's disk before the
    file is renamed into place, as the folder backend's ``fsync`` does), ``fstat`` and
    ``close`` right behind the last writes and then waits for all replies at once, so a small
    file costs one round trip after ``open``.
    """

    def __init__(self, sftp: paramiko.SFTPClient, handle: bytes, request_size: int, offset: int = 0) -> None:
        self.offset = offset
        self._sftp, self._handle, self._request_size = sftp, handle, request_size
        self._pending: deque[tuple[int, int]] = deque()  # (request number, length)
        self._in_flight = 0
        self._replies: dict[int, tuple[int, paramiko.Message]] = {}
        self._closing = False

    def write(self, data: bytes) -> None:
        view, step = memoryview(data), self._request_size
        for start in range(0, len(view), step):
            piece = view[start:start + step]
            num = self._send_write(piece)
            self._pending.append((num, len(piece)))
            self.offset += len(piece)
            self._in_flight += len(piece)
            while self._in_flight > WRITE_WINDOW:
                self._settle_oldest()

    def write_all(self, chunks: Iterable[bytes]) -> int:
        """Write every chunk, then :meth:`close`; on any error (a chunk's own included) abort."""
        try:
            for chunk in chunks:
                self.write(chunk)
            return self.close()
        except BaseException as exc:
            self.abort(exc)
            raise

    def close(self) -> int:
        """Close the file after checking every write; return its size on the server."""
        self._closing = True
        fsync = self._sftp._async_request(self, CMD_EXTENDED, "fsync@openssh.com", self._handle)
        fstat = self._sftp._async_request(self, CMD_FSTAT, self._handle)
        close = self._sftp._async_request(self, CMD_CLOSE, self._handle)
        while self._pending:
            self._settle_oldest()
        t, msg = self._reply(fsync)
        if not _unsupported(t, msg):  # servers without fsync@openssh.com: as durable as they are
            self._check_status(t, msg)
        t, msg = self._reply(fstat)
        if t == CMD_STATUS:
            self._sftp._convert_status(msg)  # raises the server's error
        if t != CMD_ATTRS:
            raise paramiko.SFTPError(f"unexpected SFTP reply {t} to fstat")
        size = paramiko.SFTPAttributes._from_msg(msg).st_size or 0
        self._check_status(*self._reply(close))
        return size

    def _send_write(self, piece: memoryview) -> int:
        """Send one write request; to an ssh pipe without copying the data (paramiko's message
        code would copy it three times: a third of this process's work on a large upload)."""
        send_parts = getattr(self._sftp.sock, "send_parts", None)
        if send_parts is None:  # a channel of paramiko's own transport
            return self._sftp._async_request(self, CMD_WRITE, self._handle, int64(self.offset), bytes(piece))
        with self._sftp._lock:  # a request number, as paramiko's _async_request takes one
            num = self._sftp.request_number
            self._sftp._expecting[num] = self
            self._sftp.request_number += 1
        handle = self._handle
        length = 1 + 4 + 4 + len(handle) + 8 + 4 + len(piece)
        send_parts(struct.pack(f">IBII{len(handle)}sQI", length, CMD_WRITE, num, len(handle), handle, self.offset,
                               len(piece)), piece)
        return num

    def abort(self, exc: BaseException) -> None:
        """Close the handle after ``exc`` (unless :meth:`close` sent that already).

        After an interrupt nothing is sent or awaited: paramiko may have been stopped halfway
        through a packet, so no reply would ever come; the connection is closed instead (see
        :meth:`archive.backends.sftp_conn.ConnectionPool.borrow`).
        """
        if not self._closing and not interrupted(exc):
            close_quietly(self._sftp, self._handle)

    def _settle_oldest(self) -> None:
        num, length = self._pending.popleft()
        self._in_flight -= length
        self._check_status(*self._reply(num))

    def _reply(self, num: int) -> tuple[int, paramiko.Message]:
        while num not in self._replies:
            self._sftp._read_response()
        return self._replies.pop(num)

    def _check_status(self, t: int, msg: paramiko.Message) -> None:
        if t != CMD_STATUS:
            raise paramiko.SFTPError(f"unexpected SFTP reply {t} to a write")
        self._sftp._convert_status(msg)

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        """Called by paramiko for each reply to one of our requests."""
        self._replies[num] = (t, msg)


def _unsupported(t: int, msg: paramiko.Message) -> bool:
    """True for the status reply a server gives to an extension it does not have."""
    if t != CMD_STATUS:
        return False
    position = msg.packet.tell()
    code = msg.get_int()
    msg.packet.seek(position)  # left for _convert_status to read
    return code == SFTP_OP_UNSUPPORTED


class WindowedReader(io.RawIOBase):
    """Reads a remote file with up to :data:`READ_WINDOW` bytes of read requests in flight.

    paramiko's ``prefetch``/``readv`` ask for the whole file from a helper thread and buffer
    whatever arrives ahead of the reader (memory grows with the file, and a dropped connection
    kills that thread with a stray traceback). Here the reading thread keeps a sliding window
    of requests itself: memory stays flat, and errors surface in the caller's ``read``, inside
    ``errors()`` (a context manager that maps them).
    """

    def __init__(self, sftp: paramiko.SFTPClient, handle: bytes, size: int, request_size: int,
                 errors: Callable[[], ContextManager[None]]) -> None:
        super().__init__()
        self._sftp, self._handle, self._size, self._errors = sftp, handle, size, errors
        self._request_size, self._offset = request_size, 0  # next byte to ask for
        self._pending: deque[tuple[int, int, int]] = deque()  # (request number, offset, length)
        self._arrived: dict[int, bytes | paramiko.SFTPAttributes | BaseException] = {}
        self._buffer, self._position = b"", 0  # the block being read, and how far

    @classmethod
    def open(cls, sftp: paramiko.SFTPClient, path: str, request_size: int,
             errors: Callable[[], ContextManager[None]]) -> "WindowedReader":
        """Open ``path``, then ask for its size and its first block at once.

        A file of up to one request is then read in a single round trip after the open.
        """
        reader = cls(sftp, open_handle(sftp, path, SFTP_FLAG_READ), request_size, request_size, errors)
        fstat = sftp._async_request(reader, CMD_FSTAT, reader.handle)
        reader._fill_window()  # one read of ``request_size`` bytes: the size is not known yet
        while fstat not in reader._arrived:
            sftp._read_response()
        attrs = reader._arrived.pop(fstat)
        if isinstance(attrs, BaseException):
            reader.drain()
            raise attrs
        reader._size = attrs.st_size or 0
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
        target[:n] = memoryview(self._buffer)[self._position:self._position + n]
        self._position += n
        return n

    def drain(self) -> None:
        """Collect the replies still in flight, so the session can serve other requests."""
        while self._pending:
            num = self._pending.popleft()[0]
            while num not in self._arrived:
                self._sftp._read_response()
            self._arrived.pop(num)

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        """Called by paramiko for each reply to one of our requests."""
        if t == CMD_DATA:
            self._arrived[num] = msg.get_string()
            return
        if t == CMD_ATTRS:  # the reply to fstat in open()
            self._arrived[num] = paramiko.SFTPAttributes._from_msg(msg)
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
            num = self._sftp._async_request(self, CMD_READ, self._handle, int64(self._offset), int(length))
            self._pending.append((num, self._offset, length))
            self._offset += length

    def _restart_at(self, offset: int, served: int) -> None:
        """Forget requests in flight after a short read and ask again from ``offset``."""
        self.drain()
        self._offset = offset if served else self._size  # an empty reply means the end
        self._request_size = max(served, 1024)
