"""The requests of many small files pipelined on one SFTP session: write, rename, remove.

Each function sends every request of a group before reading any reply, so a group of files
costs about one round trip per step whatever its size, then reads every reply, even after a
failure, so the session stays in step for its next user; the first failure is raised (or, for
:func:`remove_group`, logged). The batching that decides what goes into a group is
:mod:`archive.backends.sftp_batch`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .sftp_io import NEW_FILE
from .sftp_proto import (CLOSE, EXTENDED, FSTAT, HANDLE, NO_ATTRS, OP_UNSUPPORTED, OPEN, REMOVE, WRITE, Reply,
                         SFTPClient, check_ok, status_code, status_error, string, u32, u64)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upload:
    """One small file of a group: its key, its data, and its temporary path on the server."""

    key: str
    data: bytes
    tmp: str
    target: str

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Unsynced:
    """A file of a group stored under its temporary name without an fsync, waiting for the
    batch's sync before its rename (its data no longer held here)."""

    key: str
    tmp: str
    target: str
    size: int


def store_group(sftp: SFTPClient, uploads: list[Upload], write_size: int, durable: bool = True) -> None:
    """Write every upload to its new temporary file and (if ``durable``) fsync it, all pipelined.

    Every reply is read, even after a failure, so the session stays in step; then the first
    failure is raised (the caller removes the temporary files). On return every file is on the
    server, whole, under its temporary name; on its disk too if ``durable``.
    """
    opens = [sftp.send(OPEN, string(u.tmp), u32(NEW_FILE), NO_ATTRS) for u in uploads]
    handles: list[bytes | None] = []
    error: BaseException | None = None
    for num in opens:
        reply = sftp.reply(num)
        if reply.kind == HANDLE:
            handles.append(string(reply.fields().string()))
        else:
            handles.append(None)
            error = error or status_error(reply, "open")
    pending = [_send_file(sftp, handle, u.data, write_size, durable) for u, handle in zip(uploads, handles) if handle]
    for upload, requests in zip((u for u, h in zip(uploads, handles) if h), pending):
        failure = _check_file(sftp, upload, requests)  # read whatever came before
        error = error or failure
    if error is not None:
        raise error


def _send_file(sftp: SFTPClient, handle: bytes, data: bytes, write_size: int,
               durable: bool) -> tuple[list[int], int | None, int, int]:
    """Send a file's writes, then its fsync (if ``durable``), fstat and close; their request ids."""
    view, writes = memoryview(data), []
    for start in range(0, len(view), write_size):
        piece = view[start:start + write_size]
        writes.append(sftp.send(WRITE, handle, u64(start), u32(len(piece)), piece))
    fsync = sftp.send(EXTENDED, string("fsync@openssh.com"), handle) if durable else None
    return writes, fsync, sftp.send(FSTAT, handle), sftp.send(CLOSE, handle)


def _check_file(sftp: SFTPClient, upload: Upload, requests: tuple[list[int], int | None, int, int]) -> BaseException | None:
    """Read the replies of one file's requests; the first failure among them (None: stored whole)."""
    writes, fsync, fstat, close = requests
    error: BaseException | None = None
    for num in writes:
        failure = _failure(sftp, num, "write")
        error = error or failure
    reply = sftp.reply(fsync) if fsync is not None else None
    if error is None and reply is not None and status_code(reply) != OP_UNSUPPORTED:  # servers without it: as durable as they are
        error = _failure_of(reply, "fsync")
    reply = sftp.reply(fstat)
    if error is None:
        try:
            stored = sftp.attrs_of(reply, "fstat").st_size
        except OSError as exc:
            error = exc
        else:
            if stored != len(upload.data):
                error = OSError(f"the server stored {stored} of {len(upload.data)} bytes of {upload.key}")
    closed = _failure(sftp, close, "close")
    return error or closed


def _failure(sftp: SFTPClient, num: int, what: str) -> OSError | None:
    return _failure_of(sftp.reply(num), what)


def _failure_of(reply: Reply, what: str) -> OSError | None:
    try:
        check_ok(reply, what)
    except OSError as exc:
        return exc
    return None


def rename_group(sftp: SFTPClient, uploads: list[Upload] | list[Unsynced]) -> list[Upload | Unsynced]:
    """Move every upload into place (``posix-rename@openssh.com``, an atomic replace), pipelined.

    Returns the uploads whose rename found something missing (a target folder removed meanwhile,
    say), for the caller to move one by one; any other failure is raised after every reply is read.
    """
    nums = [sftp.send(EXTENDED, string("posix-rename@openssh.com"), string(u.tmp), string(u.target))
            for u in uploads]
    missing, error = [], None
    for upload, num in zip(uploads, nums):
        try:
            check_ok(sftp.reply(num), "rename")
        except FileNotFoundError:
            missing.append(upload)
        except OSError as exc:
            error = error or exc
    if error is not None:
        raise error
    return missing


def remove_group(sftp: SFTPClient, paths: list[str]) -> None:
    """Remove temporary files after a failure, pipelined; a file already gone is fine, any
    other failure is logged, not raised (the failure that brought us here is the one to tell)."""
    nums = [sftp.send(REMOVE, string(path)) for path in paths]
    failed = 0
    for num in nums:
        try:
            check_ok(sftp.reply(num), "remove")
        except FileNotFoundError:
            pass
        except OSError as exc:
            failed += 1
            logger.debug("could not remove a temporary file: %s", exc)
    if failed:
        logger.warning("could not remove %d temporary files (gc removes them later)", failed)
