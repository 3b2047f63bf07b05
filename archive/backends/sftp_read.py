"""Small objects of an SFTP archive read in groups: three round trips for many keys, not for each.

Reading one small file over SFTP costs three round trips (``lstat``, which guards against
opening a FIFO | ``open`` | ``read``), and each wakes this process, ``ssh``, ``sshd`` and the
SFTP server both ways: for thousands of small blobs that is most of a pull's time and CPU.
:meth:`~archive.interface.ArchiveInterface.read_keys` instead sends the requests of a whole
group on one connection, every step pipelined (:func:`read_group`):

1. the ``lstat`` of every key, and of every folder on the way not checked before;
2. the ``open`` of every key that is a regular file no larger than asked;
3. for each, the reads of its first ``max_bytes + 1`` bytes (a larger file shows itself by the
   byte over), then its ``close``, whose reply nobody waits for.

So each key gets what :meth:`~archive.backends.sftp.SFTPArchive.open_key` gives it (nothing is
opened before its ``lstat`` said it is a regular file), only the round trips are shared. The
session stays in step whatever fails: every reply asked for is read (or forgotten).
"""

from __future__ import annotations

from typing import Callable

from ..errors import BackendError, IntegrityError
from .sftp_paths import CheckedFolders
from .sftp_proto import CLOSE, DATA, EOF, FLAG_READ, HANDLE, NO_ATTRS, OPEN, READ, Attributes, SFTPClient, \
    status_code, status_error, string, u32, u64

#: A group holds at most this many keys, and asks for at most this many bytes.
GROUP_FILES = 64
GROUP_BYTES = 4 * 1024 * 1024
#: Groups are read on at most this many connections (threads beyond wait for one): each keeps
#: a group's requests in flight, and more only add handshakes (10,000 files of 4 KiB, loaded
#: machine: 2.0 to 2.2 s of CPU in all processes on two or three, 2.5 to 2.8 s on eight).
READ_CONNECTIONS = 3


def groups(keys: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """``keys`` cut into groups of at most :data:`GROUP_FILES` keys and :data:`GROUP_BYTES`
    bytes asked for (a larger key is a group of its own)."""
    out: list[list[tuple[str, int]]] = []
    group: list[tuple[str, int]] = []
    size = 0
    for key, max_bytes in keys:
        if group and (len(group) >= GROUP_FILES or size + max_bytes > GROUP_BYTES):
            out.append(group)
            group, size = [], 0
        group.append((key, max_bytes))
        size += max_bytes
    if group:
        out.append(group)
    return out


def read_group(sftp: SFTPClient, folders: CheckedFolders, remote_path: Callable[[str], str],
               keys: list[tuple[str, int]], request_size: int) -> list["bytes | Exception"]:
    """For each ``(key, max_bytes)``, its content or its error (an ``OSError`` of the server, an
    :class:`~archive.errors.ArchiveError`); errors of the session itself are raised."""
    results: list[bytes | Exception | Attributes] = list(folders.lstat_many(sftp, [key for key, _ in keys]))
    for i, ((key, max_bytes), found) in enumerate(zip(keys, results)):
        if isinstance(found, Attributes) and (found.st_size or 0) > max_bytes:
            results[i] = IntegrityError(f"{key}: over the {max_bytes} byte limit")
    todo = [i for i, found in enumerate(results) if isinstance(found, Attributes)]
    opens = [sftp.send(OPEN, string(remote_path(keys[i][0])), u32(FLAG_READ), NO_ATTRS) for i in todo]
    handles: list[tuple[int, bytes]] = []
    for i, num in zip(todo, opens):
        reply = sftp.reply(num)
        if reply.kind == HANDLE:
            handles.append((i, string(reply.fields().string())))
        else:
            results[i] = status_error(reply, "open")
    reads = [(i, _send_reads(sftp, handle, keys[i][1] + 1, request_size)) for i, handle in handles]
    for i, requests in reads:
        results[i] = _collect(sftp, keys[i], requests)
    return results  # type: ignore[return-value]  # every Attributes was replaced above


def _send_reads(sftp: SFTPClient, handle: bytes, limit: int, request_size: int) -> list[tuple[int, int]]:
    """Ask for the first ``limit`` bytes of an open file, then close it (the close's reply is
    skipped: the server answers requests in order, so the reads are served before it)."""
    requests = [(sftp.send(READ, handle, u64(start), u32(min(request_size, limit - start))),
                 min(request_size, limit - start)) for start in range(0, limit, request_size)]
    sftp.forget(sftp.send(CLOSE, handle))
    return requests


def _collect(sftp: SFTPClient, key: tuple[str, int], requests: list[tuple[int, int]]) -> "bytes | Exception":
    """The content the replies to one file's reads hold, or the error of the first that failed.

    Every reply is read. A read answered with less than asked (other than at the end of the file)
    is not pieced together here: the key gets an error, and a caller falls back to reading it
    alone (:meth:`~archive.backends.sftp.SFTPArchive.open_key` follows short reads)."""
    name, max_bytes = key
    parts: list[bytes] = []
    error: Exception | None = None
    ended = False
    for num, length in requests:
        reply = sftp.reply(num)
        if error is not None:
            continue
        if reply.kind == DATA:
            data = reply.fields().string()
            if ended:
                error = BackendError(f"{name}: the server answered a read short before the end")
            parts.append(bytes(data))
            ended = len(data) < length
        elif status_code(reply) == EOF:
            ended = True
        else:
            error = status_error(reply, "read")
    if error is not None:
        return error
    content = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(content) > max_bytes:
        return IntegrityError(f"{name}: over the {max_bytes} byte limit")
    return content
