"""Our own SFTP version 3 client: packets framed with ``struct`` over any byte stream.

The protocol is draft-ietf-secsh-filexfer-02 (what OpenSSH's server speaks) with OpenSSH's
extensions ``posix-rename@openssh.com``, ``fsync@openssh.com``, ``limits@openssh.com`` and
``statvfs@openssh.com``. The stream is the pipe of an ``ssh -s sftp`` child
(:class:`~archive.backends.sftp_pipe.SSHPipe`) or a channel of paramiko's SSH transport: this
client needs only ``recv(n)`` and either ``send_parts(*parts)`` (the pipe: a write request's
data goes out with ``writev``, never copied) or ``sendall(data)``.

Why not paramiko's ``SFTPClient``: its message code cost about half a millisecond of CPU per
small file (several packets each), the largest part of this process's work on a push of many
small files, and it copied a write's data three times. Here a request is one ``struct.pack``
and a reply is parsed from one ``memoryview`` of its packet.

Requests are pipelined: :meth:`SFTPClient.send` returns a request id at once and
:meth:`SFTPClient.reply` waits for that id's reply, keeping the replies to other requests
that arrive meanwhile; so a caller keeps as many requests in flight as it likes. A client is
used by one thread at a time (the connection pool lends it whole): OpenSSH's ``sftp-server``
handles one request at a time per session, and an ``fsync`` there holds up every request
behind it, so the threads of a push each get a session of their own rather than share one.

Errors: a status reply becomes ``FileNotFoundError``, ``PermissionError`` or ``OSError``
(with the server's message), as :mod:`os` would raise them; a stream that ends or holds a
malformed packet raises :class:`SFTPConnectionLost` (a :class:`ConnectionError`): the session
is out of step and cannot serve another request.
"""

from __future__ import annotations

import errno
import struct
import time
from dataclasses import dataclass
from typing import Protocol

# Packet types (draft-ietf-secsh-filexfer-02, section 3).
INIT, VERSION, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME = 11, 12, 13, 14, 15, 16, 17, 18
STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED, EXTENDED_REPLY = 101, 102, 103, 104, 105, 200, 201
# Status codes (section 7).
OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE, BAD_MESSAGE, OP_UNSUPPORTED = 0, 1, 2, 3, 4, 5, 8
# Open flags (section 6.3).
FLAG_READ, FLAG_WRITE, FLAG_CREATE, FLAG_TRUNCATE, FLAG_EXCL = 0x01, 0x02, 0x08, 0x10, 0x20
# Attribute flags (section 5).
ATTR_SIZE, ATTR_UIDGID, ATTR_PERMISSIONS, ATTR_TIMES, ATTR_EXTENDED = 0x1, 0x2, 0x4, 0x8, 0x80000000

MAX_PACKET = 256 * 1024 + 1024  # what OpenSSH's server sends at most (a 256 KiB read and framing)
MAX_ACCEPTED_PACKET = 16 * 1024 * 1024  # anything longer is a broken stream, not a reply
_U32, _U64, _HEADER = struct.Struct(">I"), struct.Struct(">Q"), struct.Struct(">IBI")
NO_ATTRS = _U32.pack(0)


class SFTPConnectionLost(ConnectionError):
    """The stream ended, or held something that is no SFTP reply: the session is gone."""


class Link(Protocol):
    """The byte stream under a client (an :class:`SSHPipe` or a paramiko ``Channel``)."""

    def recv(self, n: int) -> bytes: ...


@dataclass(frozen=True)
class Attributes:
    """The attributes of a file the server reported (None: not reported)."""

    st_size: int | None = None
    st_mode: int | None = None
    st_mtime: int | None = None


@dataclass(frozen=True)
class Reply:
    """One reply: its packet type and the bytes after the request id."""

    kind: int
    body: memoryview

    def fields(self) -> "Fields":
        return Fields(self.body)


class Fields:
    """Reads the fields of a reply in order (integers, strings, attributes)."""

    def __init__(self, data: memoryview) -> None:
        self._data, self._at = data, 0

    def u32(self) -> int:
        value = _U32.unpack_from(self._data, self._at)[0]
        self._at += 4
        return value

    def u64(self) -> int:
        value = _U64.unpack_from(self._data, self._at)[0]
        self._at += 8
        return value

    def string(self) -> memoryview:
        """A string field, as a view of the packet (no copy)."""
        size = self.u32()
        if self._at + size > len(self._data):
            raise SFTPConnectionLost("a malformed SFTP reply (a string longer than its packet)")
        value = self._data[self._at:self._at + size]
        self._at += size
        return value

    def attrs(self) -> Attributes:
        flags = self.u32()
        size = self.u64() if flags & ATTR_SIZE else None
        if flags & ATTR_UIDGID:
            self._at += 8
        mode = self.u32() if flags & ATTR_PERMISSIONS else None
        mtime = None
        if flags & ATTR_TIMES:
            self._at += 4  # atime
            mtime = self.u32()
        if flags & ATTR_EXTENDED:
            for _ in range(2 * self.u32()):
                self.string()
        return Attributes(size, mode, mtime)


def string(value: str | bytes | memoryview) -> bytes:
    """An SFTP string field; a ``str`` (a path) is UTF-8, surrogate escapes as the bytes they stand for."""
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    return _U32.pack(len(data)) + data


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)


def attributes(size: int | None = None, mtime: int | None = None) -> bytes:
    """An attributes field that sets the size and/or both times (atime = mtime)."""
    flags = (ATTR_SIZE if size is not None else 0) | (ATTR_TIMES if mtime is not None else 0)
    out = _U32.pack(flags)
    if size is not None:
        out += _U64.pack(size)
    if mtime is not None:
        out += _U32.pack(mtime) * 2
    return out


def status_error(reply: Reply, what: str = "") -> OSError:
    """The ``OSError`` for a reply that is not what the request expects: a failure status as
    :mod:`os` raises it (``FileNotFoundError``, ``PermissionError``), else a protocol error."""
    if reply.kind != STATUS:
        return SFTPConnectionLost(f"unexpected SFTP reply {reply.kind}{f' to {what}' if what else ''}")
    fields = reply.fields()
    code = fields.u32()
    message = bytes(fields.string()).decode("utf-8", "replace") if len(reply.body) > 4 else ""
    message = message or {EOF: "End of file", OP_UNSUPPORTED: "Operation unsupported"}.get(code, "Failure")
    if code == NO_SUCH_FILE:
        return FileNotFoundError(errno.ENOENT, message)
    if code == PERMISSION_DENIED:
        return PermissionError(errno.EACCES, message)
    return OSError(message)


def status_code(reply: Reply) -> int | None:
    """The code of a status reply, None for any other reply."""
    return _U32.unpack_from(reply.body)[0] if reply.kind == STATUS else None


def check_ok(reply: Reply, what: str = "") -> None:
    """Raise unless ``reply`` is the status OK."""
    if status_code(reply) != OK:
        raise status_error(reply, what)


class SFTPClient:
    """One SFTP session over ``link``: pipelined requests, replies matched by id."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._send_parts = getattr(link, "send_parts", None)
        self._next_id = 1
        self._replies: dict[int, Reply] = {}
        self._ignored: set[int] = set()
        self.extensions: dict[str, bytes] = {}
        self.moved = 0  # bytes of packets sent and received: how much a borrower moved

    def start(self) -> "SFTPClient":
        """Say ``INIT`` (version 3) and read the server's ``VERSION`` and extensions."""
        self._write(_U32.pack(5) + bytes([INIT]) + _U32.pack(3))
        packet = self._read_packet()
        if packet[0] != VERSION:
            raise SFTPConnectionLost(f"the server answered SFTP init with packet type {packet[0]}")
        fields = Fields(packet[1:])
        if fields.u32() < 3:
            raise SFTPConnectionLost("the server speaks an SFTP version older than 3")
        while fields._at < len(packet) - 1:
            name = bytes(fields.string()).decode("ascii", "replace")
            self.extensions[name] = bytes(fields.string())
        return self

    # ------------------------------------------------------------------ requests and replies
    def send(self, kind: int, *fields: bytes | memoryview) -> int:
        """Send one request now (its fields already encoded); return its id for :meth:`reply`."""
        num = self._next_id
        self._next_id = num + 1 if num < 0xFFFFFFFF else 1
        size = 5 + sum(len(field) for field in fields)
        self._write(_HEADER.pack(size, kind, num), *fields)
        self.moved += size
        return num

    def reply(self, num: int) -> Reply:
        """The reply to request ``num``, reading (and keeping) replies to others until it comes."""
        while num not in self._replies:
            self._receive_one()
        return self._replies.pop(num)

    def request(self, kind: int, *fields: bytes | memoryview) -> Reply:
        """Send one request and wait for its reply."""
        return self.reply(self.send(kind, *fields))

    def forget(self, num: int) -> None:
        """Drop the reply to ``num`` whenever it comes (a close nobody waits for)."""
        if self._replies.pop(num, None) is None:
            self._ignored.add(num)

    def _receive_one(self) -> None:
        packet = self._read_packet()
        if len(packet) < 5:
            raise SFTPConnectionLost("a malformed SFTP reply (shorter than its header)")
        num = _U32.unpack_from(packet, 1)[0]
        if num in self._ignored:
            self._ignored.discard(num)
            return
        self._replies[num] = Reply(packet[0], packet[5:])

    def _read_packet(self) -> memoryview:
        size = _U32.unpack(self._read_exactly(4))[0]
        if size > MAX_ACCEPTED_PACKET:  # e.g. text a login script printed: never allocate for it
            raise SFTPConnectionLost(f"the server's replies are not SFTP (a packet of {size} bytes); does a"
                                     f" login script print text?")
        self.moved += size
        return memoryview(self._read_exactly(size))

    def _read_exactly(self, n: int) -> bytes:
        data = self.link.recv(n)
        if len(data) == n:
            return data
        parts = [data]
        missing = n - len(data)
        while missing:
            if not data:
                raise SFTPConnectionLost("the SFTP session ended")
            data = self.link.recv(missing)
            parts.append(data)
            missing -= len(data)
        return b"".join(parts)

    def _write(self, *parts: bytes | memoryview) -> None:
        if self._send_parts is not None:
            self._send_parts(*parts)
        else:
            self.link.sendall(b"".join(parts))

    # ------------------------------------------------------------------ one round trip each
    def lstat(self, path: str) -> Attributes:
        return self.attrs_of(self.request(LSTAT, string(path)), "lstat")

    def stat(self, path: str) -> Attributes:
        return self.attrs_of(self.request(STAT, string(path)), "stat")

    def mkdir(self, path: str) -> None:
        check_ok(self.request(MKDIR, string(path), NO_ATTRS), "mkdir")

    def remove(self, path: str) -> None:
        check_ok(self.request(REMOVE, string(path)), "remove")

    def rename(self, old: str, new: str) -> None:
        """The plain SFTP rename, which refuses an existing target (OpenSSH: a hard link)."""
        check_ok(self.request(RENAME, string(old), string(new)), "rename")

    def posix_rename(self, old: str, new: str) -> None:
        """``posix-rename@openssh.com``: ``rename(2)``, an atomic replace."""
        check_ok(self.request(EXTENDED, string("posix-rename@openssh.com"), string(old), string(new)), "rename")

    def touch(self, path: str) -> None:
        """Set both times of ``path`` to now."""
        check_ok(self.request(SETSTAT, string(path), attributes(mtime=int(time.time()))), "setstat")

    def open(self, path: str, flags: int) -> bytes:
        """Open ``path`` with SFTP ``flags``; the server's handle."""
        reply = self.request(OPEN, string(path), u32(flags), NO_ATTRS)
        if reply.kind != HANDLE:
            raise status_error(reply, "open")
        return bytes(reply.fields().string())

    def close(self, handle: bytes) -> None:
        check_ok(self.request(CLOSE, string(handle)), "close")

    def truncate(self, handle: bytes, size: int) -> None:
        check_ok(self.request(FSETSTAT, string(handle), attributes(size=size)), "truncate")

    @staticmethod
    def attrs_of(reply: Reply, what: str) -> Attributes:
        """The attributes an ``ATTRS`` reply holds; the error it stands for otherwise."""
        if reply.kind != ATTRS:
            raise status_error(reply, what)
        return reply.fields().attrs()

    def limits(self) -> tuple[int, int] | None:
        """The largest read and write request the server takes (``limits@openssh.com``); None
        when it does not say."""
        if "limits@openssh.com" not in self.extensions:
            return None
        reply = self.request(EXTENDED, string("limits@openssh.com"))
        if reply.kind != EXTENDED_REPLY:
            return None
        fields = reply.fields()
        fields.u64()  # the longest packet
        return fields.u64(), fields.u64()

    def free_space(self, path: str) -> int | None:
        """Bytes available to us on the filesystem at ``path`` (``statvfs@openssh.com``); None
        if the server won't say. OpenSSH reports a full disk as a bare "Failure": this tells why."""
        reply = self.request(EXTENDED, string("statvfs@openssh.com"), string(path))
        if reply.kind != EXTENDED_REPLY:
            return None
        fields = reply.fields()
        _bsize, frsize, _blocks, _bfree, bavail = (fields.u64() for _ in range(5))
        return bavail * frsize
