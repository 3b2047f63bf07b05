"""``SFTPArchive``: an archive in a folder on a server reached by SSH.

Locations look like ``sftp://[user[:password]@]host[:port]/path``. The path rule (as curl and
most file managers have it): the path is **absolute** on the server, so
``sftp://lab/srv/archive`` is ``/srv/archive``; a path that starts with ``/~/`` is relative to
the login (home) folder, so ``sftp://lab/~/archive`` is ``archive`` in the home folder.
``host`` may be a ``Host`` alias of ``~/.ssh/config``. A password in the URL is accepted but
never shown: :attr:`location` has it replaced by ``***``.

Only the six primitives live here; connections (the system ``ssh`` or paramiko, a pool of
them, error mapping) are :mod:`~archive.backends.sftp_conn`'s, pipelined transfers
:mod:`~archive.backends.sftp_io`'s and resumed uploads :mod:`~archive.backends.sftp_resume`'s.
A write streams into a unique file under ``tmp/`` in the archive (for a blob, one named after
it, so an interrupted upload can be resumed), checks every write reply and the size on the
server, then moves it into place: a plain SFTP ``rename`` for create-only writes (the server
refuses an existing target, atomically, by a hard link) and ``posix-rename@openssh.com``
otherwise (an atomic replace). On any error with the connection still up (including an
exception raised by the chunks themselves, which is how shared code aborts a blob whose hash
does not match) the temporary file is removed; a full disk is reported as
:class:`~archive.errors.StorageFullError`.

Nothing inside the archive is reached through a link, and only regular files are objects: a
key is ``lstat``-ed before it is used (OpenSSH's server would block for ever opening a FIFO),
with the folders on its way (:mod:`~archive.backends.sftp_paths`); listed names need not be
UTF-8.

Primitives are called from several threads at once; each borrows a whole connection from the
pool, so crypto and requests of different files run side by side. Inside
:meth:`~archive.interface.ArchiveInterface.batched_writes` small writes are sent in groups,
three round trips for many files (:mod:`~archive.backends.sftp_batch`).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import uuid
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence
from urllib.parse import unquote, urlsplit

from .. import layout
from ..credentials import resolve_target
from ..errors import ArchiveError, BackendError, InvalidInputError, KeyExistsError, KeyNotFoundError, StorageFullError
from ..interface import ArchiveInterface, KeyInfo, key_of, shown_key
from ..keys import check_key, usable_name
from ..locations import password_of, redact
from ..sync_behind import SyncBehind
from .sftp_batch import BatchedUploads
from .sftp_conn import BULK_BYTES, BULK_CONNECTIONS, Connection, ConnectionPool, Connector, Endpoint
from .sftp_io import WindowedReader, close_later, interrupted, remove_quietly, sync_file, upload
from .sftp_paths import CheckedFolders, list_names
from .sftp_proto import Attributes, SFTPClient
from .sftp_read import READ_CONNECTIONS, groups, read_group
from .sftp_resume import PartialUploads, resume_upload
from .sftp_sync import RemoteSync

logger = logging.getLogger(__name__)
KEYRING_SERVICE = "archive-sftp"
READ_BUFFER = 1024 * 1024
#: Sessions the syncs of large files may use beside the streaming ones: one more than stream.
#: A sync waits on the server's disk, not on the cores; a session for each opened up to eight
#: here, each a new ssh and a new SFTP server process, for nothing the third did not do.
SYNC_CONNECTIONS = BULK_CONNECTIONS + 1


class SFTPArchive(BatchedUploads, ArchiveInterface):
    """An archive in a folder on an SSH server; see the module docstring for the URL."""

    max_workers = 8

    def __init__(self, url: str) -> None:
        parts = _parse_url(url)
        self.root = parts["root"]
        super().__init__(parts["shown"])
        endpoint = Endpoint(parts["host"], parts["user"], parts["port"], parts["password"])
        target = resolve_target(parts["host"], parts["user"], parts["port"])
        self._pool = ConnectionPool(Connector(endpoint, target, KEYRING_SERVICE), self.location)
        self._partials = PartialUploads(self.remote_path(layout.TMP_DIR))
        self._folders = CheckedFolders(self.remote_path)
        self._remote_sync = RemoteSync(self._pool.connector.run_command, self.remote_path(layout.TMP_DIR), self.root)

    @property
    def transport(self) -> str:
        """``ssh`` (the system client), ``paramiko``, or ``auto`` before the first connection."""
        return self._pool.connector.transport

    def remote_path(self, key: str) -> str:
        """The server path that holds ``key``."""
        return f"{self.root}/{check_key(key)}" if key else self.root

    def stat_key(self, key: str) -> KeyInfo:
        with self._pool.session(key) as sftp:
            attrs = self._lstat(sftp, key)
        return KeyInfo(attrs.st_size or 0, float(attrs.st_mtime or 0))

    def _lstat(self, sftp: SFTPClient, key: str) -> Attributes:
        """The ``lstat`` of ``key``, which must be a regular file in real folders below the root."""
        return self._folders.lstat(sftp, key)

    @contextmanager
    def open_key(self, key: str) -> Iterator[BinaryIO]:
        """See :meth:`ArchiveInterface.open_key`: ``lstat`` first, a round trip more, because
        OpenSSH's server would block (and hang the session) opening a FIFO."""
        with self._pool.borrow(transfer=True) as conn:
            with conn.errors(key):
                self._lstat(conn.sftp, key)
                raw = WindowedReader.open(conn.sftp, self.remote_path(key), conn.read_size, lambda: conn.errors(key))
            try:  # only the reads are translated: the caller's own errors pass as they are
                yield io.BufferedReader(raw, buffer_size=READ_BUFFER)
            except BaseException as exc:
                if interrupted(exc):  # a reply may have stopped mid-packet, and the command is stopping:
                    conn.abandon()  # no read still in flight is worth waiting for
                raise
            finally:
                _finish_reading(conn, raw, key)

    def read_keys(self, keys: Sequence[tuple[str, int]]) -> Iterator[tuple[str, bytes | ArchiveError]]:
        """See :meth:`ArchiveInterface.read_keys`: each group of keys is read on one connection,
        in three round trips (:mod:`~archive.backends.sftp_read`); the connection goes back to
        the pool before the group's contents are handed out."""
        for group in groups(list(keys)):
            with self._pool.borrow(at_most=READ_CONNECTIONS) as conn:
                try:
                    results = read_group(conn.sftp, self._folders, self.remote_path, group, conn.read_size)
                except Exception as exc:  # the session failed: every key of the group with it
                    results = [_mapped(conn, f"{len(group)} objects", exc)] * len(group)
                results = [r if isinstance(r, bytes) else _mapped(conn, key, r) for (key, _), r in zip(group, results)]
            yield from ((key, result) for (key, _), result in zip(group, results))

    def write_key(self, key: str | Callable[[], str], chunks: Iterable[bytes], *, exclusive: bool = False) -> None:
        """See :meth:`ArchiveInterface.write_key`; inside :meth:`batched_writes` a small file
        waits to be sent in a group (:mod:`~archive.backends.sftp_batch`).

        A file of more than :data:`~archive.backends.sftp_conn.BULK_BYTES` is made durable on
        another session than the one that streamed it: the server's ``fsync`` waits for its
        disk (for 4 MiB, about as long as the file took to send), and one session serves one
        request at a time, so the streaming session goes on with the next file meanwhile. The
        order stays that of every write: the data durable, then the name. A long file is also
        fsynced behind its writes while it streams (:mod:`~archive.sync_behind`), so
        that the server's disk does not start on it only once it has all arrived.
        """
        if exclusive:
            self.flush_writes()
        elif isinstance(key, str):
            deferred = self._defer(key, chunks)
            if deferred is None:
                return
            chunks = deferred
        chunks, blob = _resume_name(key, chunks)
        name = f"{blob}.{uuid.uuid4().hex}" if blob else uuid.uuid4().hex
        tmp = self.remote_path(f"{layout.TMP_DIR}/{name}.part")
        shown = shown_key(key)
        behind = SyncBehind(lambda: self._sync_behind(tmp))
        with self._pool.borrow(transfer=True) as conn, self._kept_on_error(conn, tmp, shown, blob):
            try:
                size, synced = self._upload(conn, chunks, tmp, blob, shown, behind)
            finally:
                behind.finish()
            if synced:
                self._place_file(conn.sftp, key, tmp, exclusive, size)
                return
        with self._pool.borrow(at_most=SYNC_CONNECTIONS) as conn, self._kept_on_error(conn, tmp, shown, blob):
            try:
                sync_file(conn.sftp, tmp)
            except FileNotFoundError:  # taken over meanwhile (see _move_into_place): fine if in place whole
                final = key_of(key)
                _check_taken_over(conn.sftp, self.remote_path(final), final, exclusive, size)
                return
            self._place_file(conn.sftp, key, tmp, exclusive, size)

    def _upload(self, conn: Connection, chunks: Iterable[bytes], tmp: str, blob: str | None,
                shown: str, behind: SyncBehind) -> tuple[int, bool]:
        """Send ``chunks`` to ``tmp`` (resuming what an interrupted write of ``blob`` left);
        the bytes sent and whether the file was synced (a large one is not: see :meth:`write_key`)."""
        sftp = conn.sftp
        self._folders.check(sftp, layout.TMP_DIR, create=True)
        self._partials.sweep(sftp)
        partial = self._partials.claim(sftp, blob, tmp) if blob else None
        if partial is not None:
            size, stored = resume_upload(sftp, partial, chunks, conn.read_size, conn.write_size)
            synced = True
        else:
            size, stored, synced = upload(sftp, tmp, chunks, conn.write_size, sync_up_to=BULK_BYTES, behind=behind)
        if stored != size:  # everything sent must be on the server before it becomes visible
            raise BackendError(f"{shown}: the server stored {stored} of {size} bytes")
        return size, synced

    def _sync_behind(self, tmp: str) -> None:
        """An fsync of ``tmp`` while it streams (:mod:`~archive.sync_behind`), on a session
        of the syncs' (the streaming one is busy)."""
        with self._pool.borrow(at_most=SYNC_CONNECTIONS) as conn, conn.errors(tmp):  # drops a broken session
            sync_file(conn.sftp, tmp)

    def _place_file(self, sftp: SFTPClient, key: str | Callable[[], str], tmp: str, exclusive: bool, size: int) -> None:
        """Move the durable ``tmp`` to ``key``'s place, making its folder first if need be."""
        final = key_of(key)
        self._folders.check(sftp, final.rpartition("/")[0], create=True)
        self._move_into_place(sftp, tmp, self.remote_path(final), final, exclusive, size)

    @contextmanager
    def _kept_on_error(self, conn: Connection, tmp: str, shown: str, blob: str | None) -> Iterator[None]:
        """Errors inside map to archive errors for ``shown``, after :meth:`_abandon` of ``tmp``."""
        with conn.errors(shown):
            try:
                yield
            except BaseException as exc:
                self._abandon(conn, exc, tmp, shown, blob)
                raise

    def list_keys(self, prefix: str) -> list[str]:
        try:
            with self._pool.session(prefix) as sftp:
                if prefix:  # the root itself may be a link
                    self._folders.lstat(sftp, prefix, folder=True)
                names = list_names(sftp, self.remote_path(prefix))
        except KeyNotFoundError:
            return []
        return [name for name in names if usable_name(name, prefix)]

    def delete_key(self, key: str) -> None:
        with self._pool.session(key) as sftp:
            self._lstat(sftp, key)
            sftp.remove(self.remote_path(key))

    def move_key(self, source: str, target: str) -> None:
        """See :meth:`ArchiveInterface.move_key`: ``posix-rename@openssh.com`` (atomic, keeps
        the mtime); a missing target folder is made and the rename tried once more."""
        src, dst = self.remote_path(source), self.remote_path(target)
        with self._pool.borrow() as conn, conn.errors(source):
            self._lstat(conn.sftp, source)
            with conn.errors(target):
                for attempt in (1, 2):
                    self._folders.check(conn.sftp, target.rpartition("/")[0], create=True)
                    try:
                        conn.sftp.posix_rename(src, dst)
                        return
                    except FileNotFoundError:
                        if attempt == 2 or not _exists(conn.sftp, src):
                            raise
                        self._folders.forget()  # the target folder was removed since it was checked

    def close(self) -> None:
        self._pool.close()
        self._pool.connector.close()

    # ------------------------------------------------------------------ helpers
    def _abandon(self, conn: Connection, exc: BaseException, tmp: str, key: str, blob: str | None) -> None:
        """After a failed write: keep the temporary file if the connection broke or was interrupted
        (a retry resumes a blob's), else remove it (a full disk is checked first, while full).

        Nothing here may wait on a connection that was interrupted: it is closed at once (Ctrl-C
        may have stopped a request mid-packet, and no reply would ever come)."""
        if interrupted(exc):
            conn.abandon()
        if interrupted(exc) or conn.broken(exc):
            self._partials.remember(tmp, blob)  # a retry resumes a blob; gc removes the rest
            return
        full = conn.storage_full(exc, self.remote_path(layout.TMP_DIR))
        remove_quietly(conn.sftp, tmp)
        if full:
            raise StorageFullError(f"no space left on {conn.host} for {key}") from exc

    def _move_into_place(self, sftp: SFTPClient, tmp: str, target: str, key: str, exclusive: bool,
                         size: int) -> None:
        """Rename ``tmp`` to ``target``; a folder removed meanwhile is created again once."""
        for attempt in (1, 2):
            try:
                if exclusive:
                    sftp.rename(tmp, target)  # plain SFTP rename refuses an existing target
                else:
                    sftp.posix_rename(tmp, target)  # atomic replace
                return
            except FileNotFoundError:
                if not _exists(sftp, tmp):
                    _check_taken_over(sftp, target, key, exclusive, size)
                    return
                if attempt == 2:
                    raise
                self._folders.forget()
                self._folders.check(sftp, key.rpartition("/")[0], create=True)
            except OSError:
                if exclusive and _exists(sftp, target):
                    raise KeyExistsError(key) from None
                raise


def _resume_name(key: str | Callable[[], str], chunks: Iterable[bytes]) -> tuple[Iterable[bytes], str | None]:
    """The chunks, and the name by which a retry finds what an interrupted write left (None: not
    resumed): a blob's hex digest; for a blob named only once written (a deferred key), the
    sha256 of its first chunk, which the same file gives again on a retry. The name only finds
    candidates: a resumed upload compares the bytes on the server with the chunks anyway."""
    if not isinstance(key, str):
        chunks = iter(chunks)
        first = next(chunks, None)
        if first is None:
            return (), None
        return itertools.chain([first], chunks), hashlib.sha256(first).hexdigest()
    return chunks, _blob_hex(key)


def _blob_hex(key: str) -> str | None:
    """The hex digest of a blob key (``blobs/sha256/ab/<hex>``), None for other keys."""
    if not key.startswith(layout.BLOBS_DIR + "/"):
        return None
    try:
        return layout.blob_id_from_key(key).hexdigest
    except InvalidInputError:
        return None


def _check_taken_over(sftp: SFTPClient, target: str, key: str, exclusive: bool, size: int) -> None:
    """Our temporary file vanished before its rename: fine only if the blob is in place whole.

    That happens when another process took over this upload as an idle partial one and
    finished it; anything else is an error (and the write may be retried).
    """
    try:
        stored = sftp.lstat(target).st_size
    except FileNotFoundError:
        stored = None
    if exclusive or stored != size:
        raise BackendError(f"{key}: the temporary file vanished before it was moved into place")
    logger.debug("%s was completed by another writer", key)


def _finish_reading(conn: Connection, raw: WindowedReader, key: str) -> None:
    """Collect reads still in flight and close the file, so the connection can be lent again.

    The close is not waited for (its reply is skipped whenever it comes): a round trip less.
    """
    if not conn.alive():
        return
    try:
        with conn.errors(key):
            raw.drain()
            close_later(conn.sftp, raw.handle)
    except BackendError as exc:  # the data was read already; the pool drops a broken connection
        logger.debug("closing %s after reading failed: %s", key, exc)


def _mapped(conn: Connection, key: str, exc: Exception) -> ArchiveError:
    """The archive error that :meth:`Connection.errors` makes of ``exc`` for ``key`` (it also
    closes a connection that broke); anything it does not map is raised."""
    try:
        with conn.errors(key):
            raise exc
    except ArchiveError as mapped:
        return mapped
    raise AssertionError("unreachable")


def _exists(sftp: SFTPClient, path: str) -> bool:
    try:
        sftp.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _parse_url(url: str) -> dict:
    """Split an ``sftp://`` URL into host, user, password, port, server root and a safe form.

    The safe form is made first, so no message below can quote a password: one typed
    unencoded may hold ``@``, ``/``, ``?`` or ``#`` (see :func:`archive.locations.split_userinfo`).
    """
    shown = redact(url)
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise InvalidInputError(f"bad port in archive location {shown!r}{_encoding_hint(url)}") from None
    if parts.scheme.lower() != "sftp" or not host:
        raise InvalidInputError(f"not an sftp://[user@]host[:port]/path location: {shown!r}{_encoding_hint(url)}")
    path = unquote(parts.path)
    if path in ("", "/"):
        raise InvalidInputError(f"{shown!r} names no folder: add /absolute/path or /~/path-in-home")
    root = "." if path in ("/~", "/~/") else path[3:].rstrip("/") if path.startswith("/~/") else path.rstrip("/")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return {"host": host, "port": port, "user": user, "password": password, "root": root, "shown": shown}


def _encoding_hint(url: str) -> str:
    """A hint for a password that holds a character which ends the host part of a URL."""
    password = password_of(url)
    if password and any(c in password for c in "/?#"):
        return ": percent-encode '/', '?' and '#' in a password (%2F, %3F, %23)"
    return ""
