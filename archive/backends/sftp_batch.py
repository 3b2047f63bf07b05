"""Small writes of an SFTP archive sent in groups: three round trips for many files, not for each.

A durable write of one small file over SFTP costs three round trips (open | write, ``fsync``,
``fstat``, close | rename), and each round trip wakes this process, ``ssh``, ``sshd`` and the
SFTP server on both ways: for thousands of small files that is most of the time and CPU of a
push. Inside :meth:`~archive.interface.ArchiveInterface.batched_writes` an SFTP archive instead
keeps each small file in memory (:class:`PendingBlobs`) and, once :data:`GROUP_FILES` files or
:data:`GROUP_BYTES` bytes are waiting, the thread whose write filled the group sends all of them
on one connection, every step pipelined (:mod:`archive.backends.sftp_groups`):

1. the ``open`` of every temporary file;
2. for each, its writes, ``fsync@openssh.com``, ``fstat`` and ``close``; every reply is checked:
   the data of every file is on the server's disk, whole, before any rename is sent;
3. the rename of every file into place.

So the order per file is what an unbatched write does (data durable, then the name), only the
round trips are shared. The fsyncs of one group run one after the other on the server (one
session serves one request at a time); groups of different threads run on different
connections, whose fsyncs the server's filesystem commits together.

Where the server can run ``sync -f`` (:mod:`archive.backends.sftp_sync`), step 2 sends no
``fsync`` and step 3 waits: the files of many groups are made durable together by one sync on
the server when the batch is flushed, and renamed into place after it.

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
from functools import partial
from typing import Any, Callable, Iterable, Iterator

from .. import layout
from ..errors import BackendError, StorageFullError
from ..transfer import run_jobs, with_retries
from .sftp_groups import Unsynced, Upload, remove_group, rename_group, store_group
from .sftp_io import interrupted
from .sftp_proto import SFTPClient
from .sftp_sync import MAX_BYTES as MAX_UNSYNCED_BYTES, MAX_FILES as MAX_UNSYNCED_FILES, RemoteSync

logger = logging.getLogger(__name__)

#: Files up to this size wait in a batch; a larger one is streamed as it is written.
MAX_BATCHED_FILE = 256 * 1024
#: A group is sent once it holds this many files or bytes (bounding memory and the time the
#: server spends on one group's fsyncs, one after another).
GROUP_FILES = 64
GROUP_BYTES = 4 * 1024 * 1024
#: Renames of files synced together, sent per connection in groups of this many.
RENAME_GROUP = 1024


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
        self._unsynced: list[Unsynced] = []
        self._unsynced_bytes = 0

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

    def add_unsynced(self, stored: list[Unsynced]) -> list[Unsynced]:
        """Note files stored without an fsync; those to sync and rename now (empty: not yet
        :data:`MAX_UNSYNCED_FILES` files or :data:`MAX_UNSYNCED_BYTES` bytes)."""
        with self._lock:
            self._unsynced += stored
            self._unsynced_bytes += sum(u.size for u in stored)
            if len(self._unsynced) < MAX_UNSYNCED_FILES and self._unsynced_bytes < MAX_UNSYNCED_BYTES:
                return []
            return self._take_unsynced()

    def take_unsynced(self) -> list[Unsynced]:
        """Every file stored without an fsync and not yet taken, now the caller's to sync."""
        with self._lock:
            return self._take_unsynced()

    def _take_unsynced(self) -> list[Unsynced]:
        stored, self._unsynced, self._unsynced_bytes = self._unsynced, [], 0
        return stored

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


class BatchedUploads:
    """The batch part of :class:`~archive.backends.sftp.SFTPArchive` (a mixin, kept apart to keep
    each module small): it uses the archive's ``_pool``, ``_folders``, ``_partials``,
    ``_remote_sync``, ``max_workers``, ``remote_path`` and ``_move_into_place``."""

    _pool: Any
    _folders: Any
    _partials: Any
    _remote_sync: RemoteSync
    max_workers: int
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
        unsynced = batch.take_unsynced()
        if unsynced:
            try:
                self._settle(unsynced)
            except BaseException as exc:
                batch.failure = batch.failure or exc
                raise

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
        if self._pool.connector.transport != "auto":  # a command goes the way the connections went
            self._remote_sync.find_out_ahead()  # from the first small file: a batch of large ones needs no sync
        group = batch.add(key, data)
        if group:
            self._send(batch, group)
        return None

    def _send(self, batch: PendingBlobs, files: list[tuple[str, bytes]]) -> None:
        """Store ``files`` as one group (taken from ``batch``), retried whole as an upload is; a
        failure fails the batch."""
        try:
            if files:
                unsynced = with_retries(lambda: self._store_group(files), f"upload of {len(files)} new objects")
                logger.debug("stored a group of %d small writes", len(files))
                due = batch.add_unsynced(unsynced) if unsynced else []
                if due:
                    self._settle(due)
        except BaseException as exc:
            batch.failure = batch.failure or exc
            raise
        finally:
            batch.done()

    def _store_group(self, files: list[tuple[str, bytes]]) -> list[Unsynced]:
        """Store ``files`` under ``tmp/`` on one connection; in place if each was fsync'd, else
        (the server syncs many at once) left there, returned for :meth:`_settle`."""
        tmp_dir = self.remote_path(layout.TMP_DIR)
        uploads = [Upload(key, data, f"{tmp_dir}/{uuid.uuid4().hex}.part", self.remote_path(key))
                   for key, data in files]
        with self._pool.borrow() as conn, conn.errors(f"{len(uploads)} new objects"):
            sftp = conn.sftp
            self._folders.check(sftp, layout.TMP_DIR, create=True)
            self._partials.sweep(sftp)
            durable = not self._remote_sync.usable()
            try:
                store_group(sftp, uploads, conn.write_size, durable)
                if durable:
                    self._place(sftp, uploads)
            except BaseException as exc:
                self._abandon_group(conn, exc, uploads)
                raise
        return [] if durable else [Unsynced(u.key, u.tmp, u.target, u.size) for u in uploads]

    def _place(self, sftp: SFTPClient, files: list[Upload] | list[Unsynced]) -> None:
        """Rename files whose data is durable from ``tmp/`` into place (folders made first), pipelined."""
        for folder in sorted({f.key.rpartition("/")[0] for f in files}):
            self._folders.check(sftp, folder, create=True)
        for stored in rename_group(sftp, files):
            self._move_into_place(sftp, stored.tmp, stored.target, stored.key, False, stored.size)

    def _settle(self, files: list[Unsynced]) -> None:
        """One sync on the server for ``files``, stored without an fsync; then their renames, in
        groups over the archive's connections (a rename done twice by a retry finds its target
        already there, as it should be). A failed sync removes them: they never appear."""
        try:
            with_retries(lambda: self._remote_sync.run(len(files)), f"sync of {len(files)} new objects")
        except BaseException as exc:
            with self._pool.borrow() as conn:
                self._abandon_group(conn, exc, files)
            raise
        groups = [files[start:start + RENAME_GROUP] for start in range(0, len(files), RENAME_GROUP)]
        run_jobs([partial(with_retries, partial(self._place_group, group), f"rename of {len(group)} new objects")
                  for group in groups], self.max_workers)

    def _place_group(self, files: list[Unsynced]) -> None:
        with self._pool.borrow() as conn, conn.errors(f"{len(files)} new objects"):
            try:
                self._place(conn.sftp, files)
            except BaseException as exc:
                self._abandon_group(conn, exc, files)
                raise

    def _abandon_group(self, conn: Any, exc: BaseException, uploads: list[Upload] | list[Unsynced]) -> None:
        """After a failed group: remove its temporary files, or note them for the next writer to
        remove if the connection broke or was interrupted (see ``SFTPArchive._abandon``)."""
        if interrupted(exc):
            conn.abandon()
        if interrupted(exc) or conn.broken(exc):
            for upload in uploads:
                self._partials.remember(upload.tmp, None)
            return
        full = conn.storage_full(exc, self.remote_path(layout.TMP_DIR))
        remove_group(conn.sftp, [upload.tmp for upload in uploads])
        if full:
            raise StorageFullError(f"no space left on {conn.host} for {len(uploads)} new objects") from exc


def _check_batch(batch: PendingBlobs) -> None:
    """Raise if a group of ``batch`` could not be stored: nothing may go on to name its blobs."""
    if batch.failure is not None:
        raise BackendError(f"new objects could not be stored: {batch.failure}") from batch.failure
