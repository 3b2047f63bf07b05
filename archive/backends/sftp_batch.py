"""Small writes of an SFTP archive sent in groups: three round trips for many files, not for each.

A durable write of one small file over SFTP costs three round trips (open | write, ``fsync``,
``fstat``, close | rename), and each round trip wakes this process, ``ssh``, ``sshd`` and the
SFTP server on both ways: for thousands of small files that is most of the time and CPU of a
push. Inside :meth:`~archive.interface.ArchiveInterface.batched_writes` an SFTP archive instead
keeps each small file in memory (:class:`PendingBlobs`) and, once :data:`GROUP_FILES` files or
:data:`GROUP_BYTES` bytes are waiting, the thread whose write filled the group sends all of them
on one connection, every step pipelined (:func:`store_group`):

1. the ``open`` of every temporary file;
2. for each, its writes, ``fsync@openssh.com``, ``fstat`` and ``close``; every reply is checked:
   the data of every file is on the server's disk, whole, before any rename is sent;
3. the rename of every file into place.

So the order per file is what an unbatched write does (data durable, then the name), only the
round trips are shared. The fsyncs of one group run one after the other on the server (one
session serves one request at a time); groups of different threads run on different
connections, whose fsyncs the server's filesystem commits together.

A group that fails is retried whole (its data is still in memory) as a failed upload is; one
that still fails marks the batch failed, and the batch raises at every later write and when
its block ends, so a publish never goes on to name a blob that a failed group held.
"""

from __future__ import annotations

import logging
import threading
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from .. import layout
from ..errors import BackendError, StorageFullError
from ..transfer import with_retries
from .sftp_io import NEW_FILE, interrupted, remove_quietly
from .sftp_proto import (CLOSE, EXTENDED, FSTAT, HANDLE, NO_ATTRS, OP_UNSUPPORTED, OPEN, WRITE, Reply, SFTPClient,
                         check_ok, status_code, status_error, string, u32, u64)

logger = logging.getLogger(__name__)

#: Files up to this size wait in a batch; a larger one is streamed as it is written.
MAX_BATCHED_FILE = 256 * 1024
#: A group is sent once it holds this many files or bytes (bounding memory and the time the
#: server spends on one group's fsyncs, one after another).
GROUP_FILES = 64
GROUP_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Upload:
    """One small file of a group: its key, its data, and its temporary path on the server."""

    key: str
    data: bytes
    tmp: str
    target: str


class PendingBlobs:
    """Small writes waiting to be sent, in write order; thread safe.

    Writers :meth:`add` from many threads; the one whose file fills a group is given the group
    to send. :attr:`failure` holds the error of a group that could not be stored.
    """

    def __init__(self, archive: object) -> None:
        self.archive = archive
        self.failure: BaseException | None = None
        self._lock = threading.Lock()
        self._sent = threading.Condition(self._lock)
        self._sending = 0  # groups taken and not yet stored (or failed)
        self._files: list[tuple[str, bytes]] = []
        self._bytes = 0

    def add(self, key: str, data: bytes) -> list[tuple[str, bytes]]:
        """Note ``key``'s ``data``; the group to send now (empty: not full yet)."""
        with self._lock:
            self._files.append((key, data))
            self._bytes += len(data)
            if len(self._files) < GROUP_FILES and self._bytes < GROUP_BYTES:
                return []
            return self._take()

    def take(self) -> list[tuple[str, bytes]]:
        """Every file noted and not yet sent, now the caller's (who must call :meth:`done`)."""
        with self._lock:
            return self._take()

    def _take(self) -> list[tuple[str, bytes]]:
        files, self._files, self._bytes = self._files, [], 0
        self._sending += 1
        return files

    def done(self) -> None:
        """A group taken is stored, or has failed."""
        with self._lock:
            self._sending -= 1
            self._sent.notify_all()

    def wait_sent(self) -> None:
        """Wait until every group taken by any thread is stored (or has failed)."""
        with self._lock:
            while self._sending:
                self._sent.wait()


#: The batch of the ``batched_writes`` block this code runs in: the worker threads of
#: :func:`archive.transfer.run_jobs` run in a copy of their starter's context, so a publish's
#: uploads join its batch, and no write made elsewhere is ever deferred.
CURRENT: ContextVar["PendingBlobs | None"] = ContextVar("archive_sftp_pending_blobs", default=None)


def small_content(chunks: Iterable[bytes]) -> tuple[bytes | None, Iterable[bytes]]:
    """The whole content (as bytes of its own) if the chunks hold at most
    :data:`MAX_BATCHED_FILE` bytes, None otherwise, and chunks that still give all of it, for
    a write that streams it instead."""
    seen: list[bytes] = []
    size = 0
    iterator = iter(chunks)
    for chunk in iterator:
        seen.append(chunk if type(chunk) is bytes else bytes(chunk))  # a view's buffer may be reused
        size += len(seen[-1])
        if size > MAX_BATCHED_FILE:
            return None, _chained(seen, iterator)
    return (seen[0] if len(seen) == 1 else b"".join(seen)), ()


def _chained(seen: list[bytes], rest: Iterable[bytes]) -> Iterable[bytes]:
    yield from seen
    yield from rest


def store_group(sftp: SFTPClient, uploads: list[Upload], write_size: int) -> None:
    """Write every upload to its new temporary file and make it durable, all pipelined.

    Every reply is read, even after a failure, so the session stays in step; then the first
    failure is raised (the caller removes the temporary files). On return every file is on the
    server's disk, whole, under its temporary name.
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
    pending = [_send_file(sftp, handle, u.data, write_size) for u, handle in zip(uploads, handles) if handle]
    for upload, requests in zip((u for u, h in zip(uploads, handles) if h), pending):
        failure = _check_file(sftp, upload, requests)  # read whatever came before
        error = error or failure
    if error is not None:
        raise error


def _send_file(sftp: SFTPClient, handle: bytes, data: bytes, write_size: int) -> tuple[list[int], int, int, int]:
    """Send a file's writes, then its fsync, fstat and close; their request ids."""
    view, writes = memoryview(data), []
    for start in range(0, len(view), write_size):
        piece = view[start:start + write_size]
        writes.append(sftp.send(WRITE, handle, u64(start), u32(len(piece)), piece))
    fsync = sftp.send(EXTENDED, string("fsync@openssh.com"), handle)
    return writes, fsync, sftp.send(FSTAT, handle), sftp.send(CLOSE, handle)


def _check_file(sftp: SFTPClient, upload: Upload, requests: tuple[list[int], int, int, int]) -> BaseException | None:
    """Read the replies of one file's requests; the first failure among them (None: stored whole)."""
    writes, fsync, fstat, close = requests
    error: BaseException | None = None
    for num in writes:
        failure = _failure(sftp, num, "write")
        error = error or failure
    reply = sftp.reply(fsync)
    if error is None and status_code(reply) != OP_UNSUPPORTED:  # servers without it: as durable as they are
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


def rename_group(sftp: SFTPClient, uploads: list[Upload]) -> list[Upload]:
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


class BatchedUploads:
    """The batch part of :class:`~archive.backends.sftp.SFTPArchive` (a mixin, kept apart to keep
    each module small): it uses the archive's ``_pool``, ``_folders``, ``_partials``,
    ``remote_path`` and ``_move_into_place``."""

    _pool: Any
    _folders: Any
    _partials: Any
    remote_path: Callable[[str], str]
    _move_into_place: Callable[..., None]

    @contextmanager
    def batched_writes(self) -> Iterator[None]:
        """See :meth:`ArchiveInterface.batched_writes`: small files are sent in groups."""
        if self._batch() is not None:
            yield  # already in a batch of this archive, sent at its end
            return
        batch = PendingBlobs(self)
        token = CURRENT.set(batch)
        try:
            yield
        except BaseException:
            batch.take()  # never sent, so never visible
            batch.done()
            raise
        finally:
            CURRENT.reset(token)
        self._flush(batch)

    def flush_writes(self) -> None:
        """See :meth:`ArchiveInterface.flush_writes`: also waits for groups other threads send."""
        batch = self._batch()
        if batch is not None:
            self._flush(batch)

    def _flush(self, batch: PendingBlobs) -> None:
        self._send(batch, batch.take())
        batch.wait_sent()
        _check_batch(batch)

    def _batch(self) -> PendingBlobs | None:
        batch = CURRENT.get()
        return batch if batch is not None and batch.archive is self else None

    def _defer(self, key: str, chunks: Iterable[bytes]) -> Iterable[bytes] | None:
        """Hand a small write of ``key`` to the current batch (None: done so); the chunks to
        stream otherwise (outside a batch, or too large to wait in one)."""
        batch = self._batch()
        if batch is None:
            return chunks
        _check_batch(batch)
        data, chunks = small_content(chunks)
        if data is None:
            return chunks
        group = batch.add(key, data)
        if group:
            self._send(batch, group)
        return None

    def _send(self, batch: PendingBlobs, files: list[tuple[str, bytes]]) -> None:
        """Store ``files`` as one group (taken from ``batch``), retried whole as an upload is; a
        failure fails the batch."""
        try:
            if files:
                with_retries(lambda: self._store_group(files), f"upload of {len(files)} new objects")
                logger.debug("stored a group of %d small writes", len(files))
        except BaseException as exc:
            batch.failure = batch.failure or exc
            raise
        finally:
            batch.done()

    def _store_group(self, files: list[tuple[str, bytes]]) -> None:
        tmp_dir = self.remote_path(layout.TMP_DIR)
        uploads = [Upload(key, data, f"{tmp_dir}/{uuid.uuid4().hex}.part", self.remote_path(key))
                   for key, data in files]
        with self._pool.borrow() as conn, conn.errors(f"{len(uploads)} new objects"):
            sftp = conn.sftp
            self._folders.check(sftp, layout.TMP_DIR, create=True)
            self._partials.sweep(sftp)
            try:
                store_group(sftp, uploads, conn.write_size)
                for folder in sorted({u.key.rpartition("/")[0] for u in uploads}):
                    self._folders.check(sftp, folder, create=True)
                for upload in rename_group(sftp, uploads):
                    self._move_into_place(sftp, upload.tmp, upload.target, upload.key, False, len(upload.data))
            except BaseException as exc:
                self._abandon_group(conn, exc, uploads)
                raise

    def _abandon_group(self, conn: Any, exc: BaseException, uploads: list[Upload]) -> None:
        """After a failed group: remove its temporary files, or note them for the next writer to
        remove if the connection broke or was interrupted (see ``SFTPArchive._abandon``)."""
        if interrupted(exc):
            conn.close()
        if interrupted(exc) or conn.broken(exc):
            for upload in uploads:
                self._partials.remember(upload.tmp, None)
            return
        full = conn.storage_full(exc, self.remote_path(layout.TMP_DIR))
        for upload in uploads:
            remove_quietly(conn.sftp, upload.tmp)
        if full:
            raise StorageFullError(f"no space left on {conn.host} for {len(uploads)} new objects") from exc


def _check_batch(batch: PendingBlobs) -> None:
    """Raise if a group of ``batch`` could not be stored: nothing may go on to name its blobs."""
    if batch.failure is not None:
        raise BackendError(f"new objects could not be stored: {batch.failure}") from batch.failure
