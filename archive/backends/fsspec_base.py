"""``FsspecArchive``: the six primitives once, over an fsspec filesystem (WebDAV, FTP).

A protocol module (:mod:`~archive.backends.webdav`, :mod:`~archive.backends.ftp`) subclasses
:class:`FsspecArchive` and gives only what differs by protocol: how to connect (an fsspec
filesystem object), what one path is (:class:`Entry`: a file, a folder or something else, its
size and mtime, in one request), how to stream a body in and out, how to make one folder, how to
rename, and how its errors map to :mod:`archive.errors`. Listing and removing go through the
fsspec filesystem itself. Everything the contract of :mod:`archive.interface` asks for is here:

* **Writes** stream into a unique ``tmp/<uuid>.part`` and are then renamed into place; on any
  failure (also one raised by the chunks, which is how shared code aborts a blob whose hash does
  not match) the temporary file is removed. The object's mtime is the time of its upload.
* **Create-only writes** (release pointers, the marker): neither protocol has an atomic
  create-only rename everywhere (FTP's ``RNTO`` replaces; a WebDAV server may check
  ``Overwrite: F`` and then rename, as wsgidav does). So a create-only write first takes a lock
  that *is* atomic on every server: it makes the folder ``tmp/.lock-<hash of the key>`` (``MKD``,
  ``MKCOL``: a second maker is refused). Holding it, it checks that the target is missing and
  renames (WebDAV still sends ``Overwrite: F``), then removes the lock. Writers that wait for a
  lock give up after :data:`LOCK_WAIT` seconds with a message naming it: a writer killed while
  holding one leaves it behind (see docs/webdav-ftp.md).
* **Only regular objects are keys:** each key is described before it is used; a folder or
  anything else is refused with :class:`~archive.errors.UnsafeObjectError`. Whether a link on
  the server's disk is followed is the server's setting, invisible to a client.
* Folders made once are remembered; a rename that finds its target folder gone (removed behind
  the backend's back) makes it again and is tried once more.

Filesystems that serve several threads at once (an HTTP client) are shared; others (an FTP
control connection) are pooled, one per thread in flight, and a connection that failed in a
way that may leave it out of step is closed instead of lent again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from abc import abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, ContextManager, Iterable, Iterator

from .. import layout
from ..errors import (ArchiveError, BackendError, BackendUnavailableError, InvalidInputError, KeyExistsError,
                      KeyNotFoundError, UnsafeObjectError)
from ..interface import ArchiveInterface, KeyInfo, key_of, shown_key
from ..keys import check_key, usable_name

logger = logging.getLogger(__name__)
LOCK_WAIT = 30.0  # seconds a create-only write waits for another one's lock on the same key
MKDIR_TRIES = 10  # a folder refused as existing but gone when looked at (a lock released meanwhile)
_CLEAN_ANSWERS = (KeyNotFoundError, KeyExistsError, UnsafeObjectError, InvalidInputError)


@dataclass(frozen=True)
class Entry:
    """What the server says one path is: ``kind`` is ``"file"``, ``"folder"`` or a phrase for
    anything else (``"a symbolic link"``), with the size and mtime (POSIX seconds) of a file."""

    kind: str
    size: int = 0
    mtime: float = 0.0


class FsspecArchive(ArchiveInterface):
    """An archive in a folder of an fsspec filesystem; see the module docstring."""

    max_workers = 4
    #: True when one filesystem object may serve every thread at once (an HTTP client pool).
    shares_connection = False

    def __init__(self, location: str, root: str) -> None:
        super().__init__(location)
        #: The archive's folder on the server, without a trailing "/" ("" for the top).
        self.root = root.rstrip("/")
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._shared: Any = None
        self._folders: set[str] = set()

    # ---------------------------------------------------------------- what a protocol gives
    @abstractmethod
    def connect(self) -> Any:
        """A new fsspec filesystem object, connected and logged in."""

    @abstractmethod
    def describe(self, fs: Any, path: str) -> Entry:
        """What ``path`` is, in one request; :class:`FileNotFoundError` if nothing is there."""

    @abstractmethod
    def reader(self, fs: Any, path: str) -> ContextManager[BinaryIO]:
        """A stream of the body of the file at ``path``, read front to back once."""

    @abstractmethod
    def upload(self, fs: Any, path: str, chunks: Iterable[bytes]) -> None:
        """Stream ``chunks`` into a new file at ``path`` (a temporary name)."""

    @abstractmethod
    def make_folder(self, fs: Any, path: str) -> None:
        """Make one folder; :class:`FileExistsError` if anything is there already."""

    @abstractmethod
    def rename(self, fs: Any, source: str, target: str, *, replace: bool) -> None:
        """Rename a file, keeping its mtime. :class:`FileNotFoundError` if the source or the
        target's folder is missing; :class:`FileExistsError` if ``replace`` is false and the
        target exists (where the server can tell)."""

    @abstractmethod
    def failure(self, exc: BaseException, what: str) -> ArchiveError | None:
        """The archive error for a protocol error about ``what`` (None: not this protocol's)."""

    # ---------------------------------------------------------------- connections and errors
    def path_of(self, key: str) -> str:
        """The server path of ``key``."""
        return f"{self.root}/{check_key(key)}" if key else self.root

    @contextmanager
    def borrow(self) -> Iterator[Any]:
        """A filesystem for one primitive: the shared one, or a pooled connection of its own."""
        if self.shares_connection:
            with self._lock:
                if self._shared is None:
                    self._shared = self._connect()
            yield self._shared
            return
        with self._lock:
            fs = self._idle.pop() if self._idle else None
        fs = fs or self._connect()
        try:
            yield fs
        except BaseException as exc:
            if not isinstance(exc, _CLEAN_ANSWERS):  # the connection may be out of step: never lent again
                self._close_fs(fs, graceful=False)
                raise
            self._give_back(fs)
            raise
        self._give_back(fs)

    def _give_back(self, fs: Any) -> None:
        if getattr(fs, "_archive_discarded", False):
            self._close_fs(fs, graceful=False)
            return
        with self._lock:
            self._idle.append(fs)

    @staticmethod
    def discard(fs: Any) -> None:
        """Mark a pooled connection as out of step (a read stopped early): closed, not lent again."""
        fs._archive_discarded = True

    def _connect(self) -> Any:
        with self.errors("the archive"):
            return self.connect()

    def disconnect(self, fs: Any, graceful: bool) -> None:
        """Close the connections of ``fs``; ``graceful`` false: at once, waiting for no reply
        (the connection failed or was interrupted mid-command). The default has none to close."""

    def _close_fs(self, fs: Any, graceful: bool = True) -> None:
        """Close one filesystem's connection; a failure to close is only logged."""
        try:
            self.disconnect(fs, graceful)
        except Exception as exc:  # closing a connection that already broke
            logger.debug("closing a connection to %s: %s", self.location, exc)

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Map what fails inside to one error of :mod:`archive.errors` about ``what``."""
        try:
            yield
        except ArchiveError:
            raise
        except FileNotFoundError:
            raise KeyNotFoundError(what) from None
        except Exception as exc:
            mapped = self.failure(exc, what)
            if mapped is not None:
                raise mapped from None
            if isinstance(exc, (ConnectionError, TimeoutError, EOFError)):
                raise BackendUnavailableError(f"{self.location}: connection lost ({exc or type(exc).__name__})") from None
            if isinstance(exc, OSError):
                raise BackendError(f"{self.location}: {what}: {exc}") from None
            raise

    def close(self) -> None:
        with self._lock:
            pools, self._idle = self._idle, []
            shared, self._shared = self._shared, None
        for fs in pools + ([shared] if shared is not None else []):
            self._close_fs(fs)

    # ---------------------------------------------------------------- reading
    def _file_entry(self, fs: Any, key: str) -> Entry:
        """The entry of ``key``, which must be a file."""
        entry = self.describe(fs, self.path_of(key))
        if entry.kind != "file":
            raise UnsafeObjectError(key, "a folder" if entry.kind == "folder" else entry.kind)
        return entry

    def stat_key(self, key: str) -> KeyInfo:
        with self.borrow() as fs, self.errors(key):
            entry = self._file_entry(fs, key)
        return KeyInfo(entry.size, entry.mtime)

    @contextmanager
    def open_key(self, key: str) -> Iterator[BinaryIO]:
        """Describe first (a folder is refused before it is opened), then one streaming read."""
        with self.borrow() as fs:
            with self.errors(key):
                try:
                    self._file_entry(fs, key)
                except FileNotFoundError:
                    self._check_folders_on_the_way(fs, key)  # only on a miss: no cost when found
                    raise
                stream_cm = self.reader(fs, self.path_of(key))
                stream = stream_cm.__enter__()
            try:
                yield stream
            except BaseException as exc:
                stream_cm.__exit__(type(exc), exc, exc.__traceback__)
                raise
            with self.errors(key):
                stream_cm.__exit__(None, None, None)

    def _check_folders_on_the_way(self, fs: Any, key: str) -> None:
        """Raise :class:`UnsafeObjectError` if a folder on the way to ``key`` is something else."""
        parts = key.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            try:
                entry = self.describe(fs, self.path_of(folder))
            except FileNotFoundError:
                return
            if entry.kind != "folder":
                raise UnsafeObjectError(folder, "a file" if entry.kind == "file" else entry.kind, "a folder")

    def list_keys(self, prefix: str) -> list[str]:
        with self.borrow() as fs, self.errors(prefix or "the archive"):
            try:
                if prefix:
                    entry = self.describe(fs, self.path_of(prefix))
                    if entry.kind != "folder":
                        raise UnsafeObjectError(prefix, "a file" if entry.kind == "file" else entry.kind, "a folder")
                names = [str(name).rstrip("/").rsplit("/", 1)[-1]
                         for name in fs.ls(self.path_of(prefix), detail=False)]
            except FileNotFoundError:
                return []
        return sorted(name for name in names if name and usable_name(name, prefix))

    # ---------------------------------------------------------------- writing
    def write_key(self, key: "str | Callable[[], str]", chunks: Iterable[bytes], *,
                  exclusive: bool = False) -> None:
        if isinstance(key, str):
            check_key(key)
        shown = shown_key(key)
        tmp = self.path_of(f"{layout.TMP_DIR}/{uuid.uuid4().hex}.part")
        uploaded = False
        try:
            with self.borrow() as fs, self.errors(shown):
                self._ensure_folder(fs, layout.TMP_DIR)
                uploaded = True  # from here on a partial file may exist
                self.upload(fs, tmp, chunks)
                final = check_key(key_of(key))
                self._ensure_folder(fs, final.rpartition("/")[0])
                if exclusive:
                    self._place_exclusive(fs, tmp, final)
                else:
                    self._rename_into_place(fs, tmp, final, final)
        except Exception:
            if uploaded:
                self._remove_quietly(tmp)
            raise  # (on Ctrl-C nothing more is sent: gc removes the temporary once old)

    def _rename_into_place(self, fs: Any, source: str, key: str, shown: str) -> None:
        """Rename the server path ``source`` to ``key``, replacing; a target folder removed
        since it was made is made again, once."""
        for attempt in (1, 2):
            try:
                self.rename(fs, source, self.path_of(key), replace=True)
                return
            except FileNotFoundError:
                if attempt == 2 or not self._exists(fs, source):
                    raise KeyNotFoundError(shown) from None
                with self._lock:
                    self._folders.clear()
                self._ensure_folder(fs, key.rpartition("/")[0])

    def _place_exclusive(self, fs: Any, tmp: str, key: str) -> None:
        """Rename ``tmp`` to ``key`` unless ``key`` exists, under the key's lock folder."""
        lock = self.path_of(f"{layout.TMP_DIR}/.lock-{hashlib.sha256(key.encode()).hexdigest()[:32]}")
        self._take_lock(fs, lock, key)
        try:
            if self._exists(fs, self.path_of(key)):
                raise KeyExistsError(key)
            try:
                self.rename(fs, tmp, self.path_of(key), replace=False)
            except FileExistsError:  # someone who does not take the lock was first
                raise KeyExistsError(key) from None
        finally:
            self._release_lock(fs, lock)

    def _take_lock(self, fs: Any, lock: str, key: str) -> None:
        """Make the folder ``lock``, waiting while another writer holds it."""
        deadline, delay = time.monotonic() + LOCK_WAIT, 0.02
        while True:
            try:
                self.make_folder(fs, lock)
                return
            except FileExistsError:
                if time.monotonic() > deadline:
                    shown = lock[len(self.root) + 1:]
                    raise BackendError(f"{key}: another create-only write holds the lock {shown} in"
                                       f" {self.location}; if no push is running, an interrupted one left"
                                       " it: remove that folder") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _release_lock(self, fs: Any, lock: str) -> None:
        """Remove the folder ``lock``, trying again on a refusal: a lock left behind makes every
        later create-only write of its key wait :data:`LOCK_WAIT` and fail (wsgidav answers 500
        now and then when requests on one folder race)."""
        for attempt in range(1, MKDIR_TRIES + 1):
            try:
                fs.rmdir(lock)
                return
            except FileNotFoundError:
                return
            except Exception as exc:  # the write is done; a lock left behind is reported when it blocks
                if attempt == MKDIR_TRIES:
                    logger.warning("%s: could not remove the lock %s: %s", self.location, lock, exc)
                    return
                time.sleep(0.02 * attempt)

    def _exists(self, fs: Any, path: str) -> bool:
        try:
            self.describe(fs, path)
        except FileNotFoundError:
            return False
        return True

    def _ensure_folder(self, fs: Any, folder: str) -> None:
        """Make ``folder`` (a key) and the folders above it, the root included, as needed.

        Each is made once per process; one that exists must be a folder, not a file."""
        parts = [p for p in folder.split("/") if p]
        wanted = [self.root] + [self.path_of("/".join(parts[:i])) for i in range(1, len(parts) + 1)]
        for depth, path in enumerate(wanted):
            if path in self._folders or not path:
                continue
            if depth == 0:
                self._make_root(fs)
            else:
                self._make_one(fs, path, "/".join(parts[:depth]))
            with self._lock:
                self._folders.add(path)

    def _make_one(self, fs: Any, path: str, shown: str) -> None:
        try:
            self.make_folder(fs, path)
        except FileExistsError:
            entry = self.describe(fs, path)
            if entry.kind != "folder":
                raise UnsafeObjectError(shown, "a file" if entry.kind == "file" else entry.kind, "a folder") from None

    def _make_root(self, fs: Any) -> None:
        """Make the archive's own folder and those above it (``archive init`` of a new place)."""
        steps = self.root.split("/")
        for depth in range(1, len(steps) + 1):
            path = "/".join(steps[:depth])
            if path in ("", "."):
                continue
            try:
                self.make_folder(fs, path)
            except FileExistsError:
                pass  # checked below, for the root itself
        entry = self.describe(fs, self.root)
        if entry.kind != "folder":
            raise InvalidInputError(f"{self.location} is not a folder on the server")

    def _remove_quietly(self, path: str) -> None:
        """Remove a temporary file after a failed write, on a connection of its own."""
        try:
            with self.borrow() as fs:
                fs.rm_file(path)
        except Exception as exc:  # gc removes what is left, once old
            logger.debug("%s: leaving the temporary %s: %s", self.location, path, exc)

    def delete_key(self, key: str) -> None:
        with self.borrow() as fs, self.errors(key):
            self._file_entry(fs, key)
            fs.rm_file(self.path_of(key))

    def move_key(self, source: str, target: str) -> None:
        check_key(target)
        with self.borrow() as fs:
            with self.errors(source):
                self._file_entry(fs, source)
            with self.errors(target):
                self._ensure_folder(fs, target.rpartition("/")[0])
                self._rename_into_place(fs, self.path_of(source), target, source)

