"""``FileSystemArchive``: an archive in a local folder or a mounted network share.

Writes go to a unique file under ``tmp/`` in the archive, are flushed to disk with ``fsync``,
then moved into place: ``os.replace`` for blobs and indexes (an atomic rename), ``os.link``
for create-only writes, because a hard link fails when the target exists where a rename would
silently replace it. A temporary file is removed on any error. Objects are stored read-only
so that nobody edits a blob in place by accident.

The folder may be shared with people and tools the archive does not control: nothing inside
it is ever reached through a symbolic link (every folder is opened from the root with
``O_NOFOLLOW``, see :mod:`~archive.backends.filesystem_folders`), and only regular files are
objects: a FIFO or device is refused before it is opened, and opened without blocking.
This needs the POSIX ``*at`` calls (``dir_fd``): Linux, macOS, the BSDs.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, TypeVar
from urllib.parse import unquote, urlsplit

from .. import layout, sync_behind
from ..errors import (ArchiveError, BackendError, InvalidInputError, KeyExistsError, KeyNotFoundError,
                      StorageFullError, UnsafeObjectError)
from ..interface import ArchiveInterface, KeyInfo, key_of, shown_key
from ..keys import check_key, check_regular, usable_names
from ..sync_behind import SyncBehind
from .filesystem_batch import MAX_BATCHED_FILE, BatchedWrites
from .filesystem_folders import Folders

logger = logging.getLogger(__name__)
T = TypeVar("T")
FILE_MODE = 0o444
WRITE_SIZE = 1024 * 1024
#: Chunks smaller than this are gathered into writes of up to :data:`WRITE_SIZE` bytes.
GATHERED_CHUNK = 64 * 1024
#: Temporary names ``tmp/<32 hex>.part``: 16 random hex digits per process (drawn again in a
#: forked child) and a counter, for one random draw per process instead of one per file.
_temporary = {"prefix": uuid.uuid4().hex[:16], "numbers": itertools.count()}
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _temporary.update(prefix=uuid.uuid4().hex[:16]))


def _temporary_name() -> str:
    return f"{_temporary['prefix']}{next(_temporary['numbers']):016x}.part"  # type: ignore[call-overload]

#: Reading a key: never through a link, never waiting for a FIFO's writer (checked once open).
READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class FileSystemArchive(BatchedWrites, ArchiveInterface):
    """An archive rooted at a folder; ``location`` is shown in messages."""

    max_workers = 8  # measured: parallel fsyncs keep the disk busy (1 GiB push: 4 -> 1.21 s, 8 -> 1.11 s)

    def __init__(self, root: str | Path, *, durable: bool = True, local: bool | None = None) -> None:
        self.root = Path(root).absolute()
        self._prefix = os.path.join(str(self.root), "")  # of the paths local_file builds
        super().__init__(str(self.root))
        #: Flush data and renames to disk (off only for a disposable cache, see archive.cache).
        self.durable = durable
        self._dirty_dirs: set[str] = set()
        self._folders = Folders(self.root)
        #: True: downloads copy blobs straight from here; False: through the user's cache (as for
        #: a network mount); None: found out on first use (:func:`on_local_disk`).
        self.local = local
        self._dirty_lock = threading.Lock()

    @classmethod
    def from_location(cls, location: str) -> "FileSystemArchive":
        """A plain path, or a ``file://`` URL (``file:///srv/archive``)."""
        if "://" not in location:
            return cls(location)
        parts = urlsplit(location)
        if parts.netloc not in ("", "localhost"):
            raise InvalidInputError(f"file:// URL with a host is not supported: {location!r}")
        return cls(unquote(parts.path))

    def local_path(self, key: str) -> Path:
        """The file that holds ``key`` (a path for people and tests; the primitives never
        follow it, see :mod:`~archive.backends.filesystem_folders`)."""
        return self.root.joinpath(*key.split("/"))

    def local_file(self, key: str) -> str | None:
        """The file of ``key`` when the archive is on a local disk (see :func:`on_local_disk`).

        Checked like any key (a regular file, reached without a link), and the path is checked
        to reach that same file, so opening it cannot lead outside the archive. Downloads ask
        this once per blob: the path is a string, built without pathlib (a Path cost a tenth
        of a pull of 10,000 small files), and the two ``stat`` calls are all it costs.
        """
        if self.local is None:
            self.local = on_local_disk(self.root)
        if not self.local:
            return None
        info = self._lstat(key)
        path = self._prefix + (key if os.sep == "/" else key.replace("/", os.sep))
        try:
            by_path = os.stat(path)
        except OSError:
            with self._errors(key):
                raise
        if by_path.st_ino != info.st_ino or by_path.st_dev != info.st_dev:
            raise UnsafeObjectError(key, "a symbolic link")  # a folder on its path was swapped for one
        return path

    def open_local(self, key: str) -> int | None:
        """See :meth:`ArchiveInterface.open_local`: opened in its folder's kept descriptor, two
        path walks fewer than opening what :meth:`local_file` returns (a tenth of the read of a
        small blob)."""
        if self.local is None:
            self.local = on_local_disk(self.root)
        return self._open_checked(key) if self.local else None

    def _open_checked(self, key: str) -> int:
        """A descriptor reading ``key``: a FIFO or device is refused before it is opened, and
        opened without blocking (``O_NONBLOCK`` is still set) and checked again, should it be
        swapped in between."""
        self._lstat(key)
        folder, _, name = key.rpartition("/")
        kept = self._folders.kept(folder)
        try:  # the common case, as in _lstat: the folder is kept open
            fd = os.open(name, READ_FLAGS, dir_fd=kept) if kept is not None else -1
        except OSError:
            fd = -1
        if fd < 0:
            fd = self._at(key, lambda folder, name: os.open(name, READ_FLAGS, dir_fd=folder))
        try:
            check_regular(key, os.fstat(fd).st_mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _errors(self, key: str, writing: bool = False) -> "_OSErrors":
        """Turn ``OSError`` into the archive's errors at the backend boundary (see :class:`_OSErrors`)."""
        return _OSErrors(self.root, key, writing)

    def _at(self, key: str, action: Callable[[int, str], T], create: bool = False) -> T:
        """``action(folder_fd, name)`` for ``key``, in its folder opened without following links."""
        folder, _, name = key.rpartition("/")
        if name in ("", ".", ".."):
            check_key(key)
        with self._errors(key):
            return self._folders.within(folder, create, lambda fd: action(fd, name))

    def _lstat(self, key: str) -> os.stat_result:
        """The ``lstat`` of ``key``, which must be a regular file."""
        folder, _, name = key.rpartition("/")
        fd = self._folders.kept(folder) if name not in ("", ".", "..") else None
        try:  # the common case, in a folder kept open, without the wrappers (pulls call this twice per file)
            info = os.stat(name, dir_fd=fd, follow_symlinks=False) if fd is not None else None
        except FileNotFoundError:
            if os.fstat(fd).st_nlink > 0:  # not a folder removed since it was kept: a publish asks for new blobs
                raise KeyNotFoundError(key) from None
            info = None
        except OSError:
            info = None
        if info is None:
            info = self._at(key, lambda fd, name: os.stat(name, dir_fd=fd, follow_symlinks=False))
        check_regular(key, info.st_mode)
        return info

    def stat_key(self, key: str) -> KeyInfo:
        info = self._lstat(key)
        return KeyInfo(info.st_size, info.st_mtime)

    @contextmanager
    def open_key(self, key: str) -> Iterator[BinaryIO]:
        """See :meth:`ArchiveInterface.open_key`: a FIFO or device is refused before it is
        opened, and opened without blocking and checked again, should it be swapped in between."""
        fd = self._open_checked(key)
        try:
            os.set_blocking(fd, True)  # opened with O_NONBLOCK not to hang on a FIFO; reads block as usual
            stream = open(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with stream:
            yield stream

    def write_key(self, key: str | Callable[[], str], chunks: Iterable[bytes], *, exclusive: bool = False) -> None:
        """See :meth:`ArchiveInterface.write_key`.

        Durability: a file's data is flushed to disk before its rename, so a name never points
        at data a crash could lose. The renames themselves become durable when their folder is
        synced; that is deferred and done once per folder before the next create-only write
        (a release pointer, the commit point of a publish), so a pointer is never durable before
        the blobs its record names, at one folder sync per fan-out folder instead of per blob.

        Inside :meth:`batched_writes` a small file is written without its own sync and left
        under ``tmp/``: it is synced with the rest of its batch, then renamed, by a flush
        (see :mod:`~archive.backends.filesystem_batch`), so this returns before the key exists.
        """
        name, fd = _temporary_name(), -1
        batch = self._batch() if not exclusive else None
        with self._errors(shown_key(key), writing=True):
            try:  # the create inside: an interrupt landing as it returns still removes the file
                fd = self._folders.within(layout.TMP_DIR, True, lambda folder: _create(folder, name))
                size = _write_file(fd, chunks, self.durable, MAX_BATCHED_FILE if batch else -1)
                final = key_of(key)
                if batch is not None and size <= MAX_BATCHED_FILE:
                    name = self._defer(batch, name, check_key(final), size)  # the batch owns the file now
                    return
                if exclusive:
                    self._flush_current()
                    self._sync_pending_dirs()
                self._move(f"{layout.TMP_DIR}/{name}", final, exclusive)
                if not exclusive:
                    name = ""  # renamed away: nothing left to remove (an exclusive write linked it)
            except OSError:
                name = name if fd >= 0 else ""  # the create itself failed: nothing to remove
                raise
            finally:
                if name:
                    self._remove_temporary(name)
        self._mark_dirty(final.rpartition("/")[0], now=exclusive)

    def _write_unsynced(self, data: bytes) -> str:
        """Write ``data`` to a new file under ``tmp/``, not synced; its name (nothing is left
        there on failure). For a batch to sync and move (:class:`.filesystem_batch.ForkedBatch`)."""
        name, fd = _temporary_name(), -1
        try:  # the create inside: an interrupt landing as it returns still removes the file
            fd = self._folders.within(layout.TMP_DIR, True, lambda folder: _create(folder, name))
            _write_file(fd, [data], False, -1)
        except BaseException as exc:
            if fd >= 0 or not isinstance(exc, OSError):  # not the create itself failing: a file to remove
                self._remove_temporary(name)
            raise
        return name

    def _remove_temporary(self, name: str) -> None:
        """Remove ``tmp/name`` if it is still there; a failure is logged (gc removes it later)."""
        try:
            with self._folders.folder(layout.TMP_DIR, create=False) as folder:
                os.unlink(name, dir_fd=folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot remove the temporary file %s/%s: %s", layout.TMP_DIR, name, exc)

    def _move(self, source: str, target: str, exclusive: bool = False) -> None:
        """Rename ``source`` to ``target`` (made a hard link, never replacing, if ``exclusive``)."""
        def move(target_fd: int, name: str) -> None:
            with self._folders.folder(source.rpartition("/")[0], create=False) as source_fd:
                _move_into_place(source_fd, source.rpartition("/")[2], target_fd, name, target, exclusive)

        self._at(target, move, create=True)

    def _mark_dirty(self, folder: str, now: bool) -> None:
        if not self.durable:
            return
        if now:
            self._sync_directory(folder)
        else:
            with self._dirty_lock:
                self._dirty_dirs.add(folder)

    def _sync_pending_dirs(self) -> None:
        """Sync the folders renamed into since the last time, each one.

        Not one ``syncfs`` even after a batch that filled the whole blob fan-out: once the first
        folder's sync committed the journal the others cost little, while a ``syncfs`` also
        waits for every other writer of the filesystem (0.9 s seen on a busy machine).
        """
        if not self.durable:
            return
        with self._dirty_lock:
            pending, self._dirty_dirs = self._dirty_dirs, set()
        for folder in pending:
            self._sync_directory(folder)

    def _sync_directory(self, folder: str) -> None:
        """Make the renames in ``folder`` durable (POSIX); a no-op where that is not possible."""
        try:
            with self._folders.folder(folder, create=False) as fd:
                os.fsync(fd)
        except (OSError, UnsafeObjectError) as exc:  # gone, or no longer ours: nothing to make durable
            logger.debug("not syncing %s: %s", folder, exc)

    def close(self) -> None:
        """Make deferred renames durable and close the folders kept open."""
        self._sync_pending_dirs()
        self._folders.close()

    def list_keys(self, prefix: str) -> list[str]:
        def names(folder: int) -> list[str]:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=folder)  # an offset of its own
            try:
                if os.fstat(fd).st_nlink == 0:  # removed since it was kept: walk again
                    raise FileNotFoundError(errno.ENOENT, "removed", prefix)
                return os.listdir(fd)
            finally:
                os.close(fd)

        try:
            with self._errors(prefix):
                listed = self._folders.within(prefix, False, names)
        except KeyNotFoundError:
            return []
        return usable_names(listed, prefix)

    def delete_key(self, key: str) -> None:
        self._lstat(key)
        self._at(key, lambda fd, name: os.unlink(name, dir_fd=fd))

    def move_key(self, source: str, target: str) -> None:
        """See :meth:`ArchiveInterface.move_key`: one rename (which keeps the mtime)."""
        self._lstat(source)  # a missing source is KeyNotFoundError(source), not a missing target folder
        with self._errors(target):
            self._move(source, target)
        self._mark_dirty(target.rpartition("/")[0], now=False)


#: Filesystem types (Linux ``/proc/self/mountinfo``) of local disks and memory.
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs",
                               "bcachefs", "nilfs2", "tmpfs", "ramfs", "overlay"})


def on_local_disk(path: Path) -> bool:
    """Whether ``path`` is on a local filesystem of a known type (Linux; elsewhere: False).

    Network filesystems (NFS, SMB, sshfs and other FUSE mounts) and unknown types count as
    remote: their blobs are worth caching, and a cache is never wrong, only slower.
    """
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as stream:
            mounts = stream.read().splitlines()
    except OSError:
        return False
    real = os.path.realpath(path)
    best, fstype = "", None
    for line in mounts:  # "id parent major:minor root mountpoint options ... - fstype source ..."
        fields, _, rest = line.partition(" - ")
        parts = fields.split(" ")
        if len(parts) < 5 or not rest:
            continue
        mount = parts[4].replace("\\040", " ")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, rest.split(" ")[0]
    return fstype in LOCAL_FILESYSTEMS


class _OSErrors:
    """A block whose ``OSError`` becomes the archive's error for ``key`` (a class, not a
    generator: a publish enters one or two per file, and a generator's costs a microsecond).

    A missing file or folder means a missing key when reading; when writing it means the
    archive's folder cannot be made or vanished (e.g. a path below ``/proc``), a storage error.
    """

    __slots__ = ("root", "key", "writing")

    def __init__(self, root: Path, key: str, writing: bool) -> None:
        self.root, self.key, self.writing = root, key, writing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: object) -> None:
        if not isinstance(exc, OSError) or isinstance(exc, ArchiveError):
            return  # none, not a system error, or ours (e.g. a lost connection to the chunks' source)
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            if self.writing:
                raise BackendError(f"cannot write {self.key} in {self.root}: {exc.strerror or exc}") from None
            raise KeyNotFoundError(self.key) from None
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link: the only links we meet
            raise UnsafeObjectError(self.key, "a symbolic link") from None
        raise _backend_error(self.key, self.root, exc) from exc


def _create(folder: int, name: str) -> int:
    """Create a new file for writing in ``folder``; return its descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    return os.open(name, flags, FILE_MODE | 0o200, dir_fd=folder)


def _write_file(fd: int, chunks: Iterable[bytes], durable: bool, deferred_up_to: int) -> int:
    """Write ``chunks`` to a file just created, in pieces of at most :data:`WRITE_SIZE` bytes;
    return its size. Synced if ``durable``, unless it is no larger than ``deferred_up_to``
    (a batch syncs it later).

    A chunk may be a whole small file read into memory; on Linux one ``write`` of 4 MiB was
    much slower than four of 1 MiB (pushing 256 such files: 2.7 s of system time against 0.9 s).
    A durable long file is also synced behind its writes (:mod:`~archive.sync_behind`).
    """
    size, small = 0, bytearray()  # no file object (its isatty, lseek and fstat per file): small chunks gathered here
    behind: SyncBehind | None = None  # made for a long file only: most are small
    try:
        for chunk in chunks:
            size += len(chunk)
            if len(chunk) < GATHERED_CHUNK:
                small += chunk
                if len(small) < WRITE_SIZE:
                    continue
                chunk, small = small, bytearray()
            elif small:
                _write_all(fd, small)
                small = bytearray()
            _write_all(fd, chunk)
            if durable and size >= sync_behind.SYNC_BEHIND_BYTES:  # a long file: the disk starts on it now
                behind = behind or SyncBehind(lambda: _sync_data(fd))
                behind.wrote(size)
        if small:
            _write_all(fd, small)
        os.fchmod(fd, FILE_MODE)
        if durable and size > deferred_up_to:
            os.fsync(fd)
    finally:
        if behind is not None:
            behind.finish()  # before the close: its fdatasync uses this descriptor
        os.close(fd)
    return size


def _sync_data(fd: int) -> None:
    """``fdatasync`` where the system has one (not macOS, not Windows), else ``fsync``."""
    getattr(os, "fdatasync", os.fsync)(fd)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:WRITE_SIZE]):]


def _move_into_place(source_fd: int, source: str, target_fd: int, target: str, key: str, exclusive: bool) -> None:
    if not exclusive:
        os.replace(source, target, src_dir_fd=source_fd, dst_dir_fd=target_fd)
        return
    try:
        os.link(source, target, src_dir_fd=source_fd, dst_dir_fd=target_fd, follow_symlinks=False)
    except FileExistsError:
        raise KeyExistsError(key) from None


def _backend_error(key: str, root: Path, exc: OSError) -> BackendError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"no space left for {key} in {root}: {exc.strerror}")
    return BackendError(f"{root}/{key}: {exc.strerror or exc}")
