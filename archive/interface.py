"""``ArchiveInterface``: a handful of storage primitives, and the archive written once above them.

A backend implements six small operations on keys (relative POSIX paths, built only by
:mod:`archive.layout`): ``stat_key``, ``open_key``, ``write_key``, ``list_keys``,
``delete_key`` and ``move_key``. It never knows what a blob or a release is. Publishing,
resolving, downloading and verifying are written here, once, for every backend, so a
guarantee proven for one backend holds for all of them.

The storage may be shared with people and tools the archive does not control, so every
backend keeps this contract (``tests/backends/conformance.py`` proves it on each):

* **Only regular objects are keys.** A symbolic link, FIFO, socket, device or folder where an
  object should be, and anything but a real folder where a folder of the archive should be,
  is refused with one :class:`~archive.errors.UnsafeObjectError` naming it: never followed,
  never opened, never waited on (a reader of a FIFO would block for ever).
* **A key never resolves outside the archive root**, whatever the storage holds: no link
  below the root is followed, and a key with a ``..``, ``.`` or empty part is refused
  (:func:`archive.keys.check_key`). The root itself may be a link (the user's choice), resolved once.
* **Listings are the same everywhere:** hidden names (``.*``) and names that are not UTF-8
  are skipped, the latter with a logged warning (:func:`archive.keys.usable_name`); the archive itself
  writes only ASCII names.
* **Writes may be batched** inside :meth:`ArchiveInterface.batched_writes`: a write there
  may return before its key exists, and appears by the next :meth:`~ArchiveInterface.flush_writes`,
  create-only write or the end of the block (a publish reads none of its new keys before).
  A backend without a cheaper way to make many writes durable keeps the default: no batch.
* **Each failure maps to one exception** of :mod:`archive.errors` at the backend boundary:
  :class:`~archive.errors.KeyNotFoundError` (nothing there),
  :class:`~archive.errors.KeyExistsError` (a create-only write lost),
  :class:`~archive.errors.UnsafeObjectError` (something there that is not an object),
  :class:`~archive.errors.InvalidInputError` (a key that is not one),
  :class:`~archive.errors.BackendError` and its subclasses (the storage failed: no space,
  no permission, unreachable).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import (IO, TYPE_CHECKING, Any, BinaryIO, Callable, ContextManager, Iterable, Iterator, Mapping, Protocol,
                    Sequence)

from . import layout
from .errors import (ArchiveError, IntegrityError, KeyExistsError, KeyNotFoundError, NoMatchingVersionError,
                     NotAnArchiveError, ReadOnlyArchiveError, ReleaseNotFoundError)
from .hashing import BlobId, iter_chunks, verified_chunks
from .records import Release, check_name, load_json, parse_record
from .transfer import reporting
from .versions import parse_range, parse_version, sort_versions

if TYPE_CHECKING:
    from .lock import Lock
    from .builder import ReleaseBuilder
    from .mirror import MirrorReport
    from .offline import KnownReleases
    from .pins import SeenRecords
    from .publish import PublishStats

logger = logging.getLogger(__name__)
MAX_POINTER_BYTES = 1024
_ARCHIVE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class KeyInfo:
    """What ``stat_key`` tells: the size in bytes and the modification time (POSIX seconds)."""

    size: int
    mtime: float


def key_of(key: "str | Callable[[], str]") -> str:
    """The key of a write: ``key`` itself, or what the function given for it returns now."""
    return key if isinstance(key, str) else key()


def shown_key(key: "str | Callable[[], str]") -> str:
    """A key for messages, before a deferred key is known."""
    return key if isinstance(key, str) else "a new blob"


class ForkedWrites(Protocol):
    """Writes of new objects made by one forked worker process (see
    :meth:`ArchiveInterface.forked_writes`), used in that child alone."""

    def write(self, key: str, data: bytes) -> None:
        """Write the object ``key`` (not exclusive); it is in place at the latest after :meth:`finish`."""

    def finish(self) -> None:
        """Return once every object written is whole, durable and in place."""

    def discard(self) -> None:
        """Remove what was written and is not in place yet (the child was interrupted)."""


class ArchiveInterface(ABC):
    """An archive of immutable releases on some storage.

    Subclasses implement the primitives; everything else is shared. Use as a context manager,
    or call :meth:`close`, to release connections.
    """

    #: Parallel transfers this storage serves well (like restic's ``Connections()``).
    max_workers: int = 8
    #: True for storage that can only be read (static HTTP).
    read_only: bool = False
    #: False for storage that cannot list keys; versions are then read from the index files.
    listable: bool = True
    #: False where ``move_key`` is a copy then a delete (S3): a write landing between the two is
    #: deleted. A publish then leases its new blobs and checks them again before its pointer
    #: (:func:`archive.publish.publish_folder`), so a concurrent gc cannot take one of them.
    atomic_moves: bool = True

    def __init__(self, location: str) -> None:
        #: Where the archive lives, safe to show (no secrets).
        self.location = location
        #: Record ids seen before (:mod:`archive.pins`); ``get_interface`` sets the user's.
        self.seen: "SeenRecords | None" = None
        #: Where verified records are kept for offline use (:mod:`archive.offline`); ``get_interface`` sets it.
        self.known: "KnownReleases | None" = None
        #: The random id in ``archive.json`` (None before it was read, or in an older archive).
        self.archive_id: str | None = None

    @classmethod
    def from_location(cls, location: str) -> "ArchiveInterface":
        """The backend for a location string of its scheme (see :mod:`archive.locations`)."""
        return cls(location)

    # ---------------------------------------------------------------- primitives
    @abstractmethod
    def stat_key(self, key: str) -> KeyInfo:
        """Size and mtime of the object at ``key``; :class:`KeyNotFoundError` if none.

        :class:`UnsafeObjectError` if ``key`` (or a folder on its way) is not a regular object
        (folder) but a link, FIFO, device or socket: the ``lstat`` of it, never the ``stat``.
        """

    @abstractmethod
    def open_key(self, key: str) -> ContextManager[BinaryIO]:
        """Open the object at ``key`` for reading; :class:`KeyNotFoundError` if none.

        Anything but a regular object is refused (:class:`UnsafeObjectError`) *before* it is
        opened, and opening never blocks: a FIFO put in place of a blob must not hang a reader.
        """

    @abstractmethod
    def write_key(self, key: "str | Callable[[], str]", chunks: Iterable[bytes], *,
                  exclusive: bool = False) -> None:
        """Store the bytes of ``chunks`` at ``key``, atomically.

        The object appears whole or not at all: written under a temporary name, then moved into
        place. If iterating ``chunks`` raises, nothing appears and the exception propagates.
        With ``exclusive`` the write never replaces an existing object and raises
        :class:`KeyExistsError` instead; without it an existing object is replaced.

        ``key`` may be a function, called once (see :func:`key_of`) after the last chunk was
        written and before the move: the name of an object that depends on its content, such as
        a blob named by the hash of the bytes just written, which is how a publish reads each
        new file once. Such a write is not resumed after an interruption (its name is unknown
        until the end).

        The object written has the time of this write as its mtime, even when a backend resumes
        an earlier partial upload and sends no byte: gc takes an old mtime for an abandoned blob
        (see :mod:`archive.gc`).

        The write goes into folders below the root only (made as needed, never through a link:
        :class:`UnsafeObjectError`). An object at ``key`` that is a link is replaced, itself,
        by a replacing write, and is taken by an exclusive one; nothing is ever written through it.
        """

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Names of the objects and folders directly below ``prefix`` (none if it is missing).

        Temporary names of writes in flight are never listed, nor hidden names nor names that
        are not UTF-8 (see :func:`archive.keys.usable_name`). A link or anything but a folder at ``prefix``
        or on its way: :class:`UnsafeObjectError`.
        """

    @abstractmethod
    def delete_key(self, key: str) -> None:
        """Remove the object at ``key``; :class:`KeyNotFoundError` if none, and
        :class:`UnsafeObjectError` if it is not a regular object (it is left as it is)."""

    @abstractmethod
    def move_key(self, source: str, target: str) -> None:
        """Rename the object at ``source`` to ``target``, atomically, replacing any object there.

        The object keeps its content and its modification time (gc relies on that: it moves an
        unreferenced blob aside, then reads its mtime to see whether a writer refreshed it
        meanwhile). Creates target's folders as needed. :class:`KeyNotFoundError` if ``source``
        is missing; :class:`UnsafeObjectError` if it is not a regular object.
        """

    @contextmanager
    def batched_writes(self) -> Iterator[None]:
        """A block in which :meth:`write_key` may make its writes visible and durable in batches.

        Storage where a durable write costs a sync of its own (a local disk: a journal commit
        per file) may make many small writes durable together. Inside the block a write that is
        not ``exclusive`` may therefore **return before its key exists**: its object appears
        (whole, its data durable) at the latest when :meth:`flush_writes` is called, before any
        ``exclusive`` write through this archive, or when the block ends, in that order of
        steps: data durable, then the key visible, then (as for any write) the rename durable
        before the next ``exclusive`` write. Nothing may read such a key before one of these.
        If the block ends with an exception, writes not yet flushed never appear.

        The batch belongs to the block's context (a :class:`contextvars.ContextVar`): threads of
        :func:`archive.transfer.run_jobs` started inside it join it; other threads do not.
        Blocks nest (the outermost flushes). The default batches nothing: every write is
        visible when it returns, as outside a block.
        """
        yield

    def write_workers(self, size: int) -> int:
        """Threads worth running for new objects of ``size`` bytes inside :meth:`batched_writes`.

        The default is :attr:`max_workers`: a write waits for the storage, and threads overlap
        the waits. Where a batched write waits for nothing until its flush (a small file on a
        local disk), it is only interpreter work, and more threads only contend for the
        interpreter's lock (10,000 files of 4 KiB: 1.4 s of CPU on one thread, 3 to 4 s on two
        or eight): such a backend says 1.
        """
        return self.max_workers

    def forked_writes(self) -> "ForkedWrites | None":
        """Writes for a worker process this one is about to fork, or None (the default: none).

        A publish of many small files splits them over processes (:mod:`archive.store_workers`)
        where the archive's writes are only local system calls, which a forked child may make:
        no thread, lock or connection of the parent. Asked in the parent, inside
        :meth:`batched_writes`, before the fork; the object is then used in one child only,
        which writes its objects, then calls :meth:`ForkedWrites.finish` before it reports
        them: every object a child reports is whole, durable and in place. Storage reached
        over a network says None.
        """
        return None

    def flush_writes(self) -> None:
        """Make every write of the current :meth:`batched_writes` block visible and durable now.

        The default has nothing to flush.
        """

    def local_file(self, key: str) -> str | None:
        """The path of a file on a local disk that holds ``key``, or None (the default).

        Storage that is itself a local disk says so here, and downloads copy its blobs straight
        into the destination (verified as they are copied) instead of caching a second copy on
        the same machine. Remote storage, and local paths that are network mounts, return None.
        The key is checked as :meth:`stat_key` checks it, and the path leads to that same file.
        """
        return None

    def open_local(self, key: str) -> int | None:
        """A descriptor open for reading the file of ``key``, where :meth:`local_file` has
        one (else None); the caller closes it. Checked as :meth:`open_key` checks.

        The default opens the path :meth:`local_file` gives; a backend may do it with fewer
        lookups (the small files of a pull read each blob in one call).
        """
        path = self.local_file(key)
        if path is None:
            return None
        from .placing import open_blob_file

        return open_blob_file(os.fspath(path))

    def close(self) -> None:
        """Release connections; the default has none."""

    def __enter__(self) -> "ArchiveInterface":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    # ---------------------------------------------------------------- derived key helpers
    def has_key(self, key: str) -> bool:
        try:
            self.stat_key(key)
        except KeyNotFoundError:
            return False
        return True

    def read_key(self, key: str, max_bytes: int) -> bytes:
        """Read a small object whole, refusing one over ``max_bytes`` (memory stays bounded)."""
        with self.open_key(key) as stream:
            data = stream.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise IntegrityError(f"{key}: over the {max_bytes} byte limit")
        return data

    def read_keys(self, keys: Sequence[tuple[str, int]]) -> Iterator[tuple[str, "bytes | ArchiveError"]]:
        """Read many small objects whole: for each ``(key, max_bytes)``, in the order given, one
        ``(key, content)`` or ``(key, error)``; a key that fails never stops the others.

        This is :meth:`read_key` for many keys at once (a download of many small blobs), for
        storage where each read costs round trips of its own: a backend may send the requests
        of many keys together (SFTP: every ``open``, then every ``read``, on one connection).
        Nothing is verified here; the caller checks each content against what it expects (a
        blob against its id and size), as it would after :meth:`read_key`.

        The error of a key is the :class:`~archive.errors.ArchiveError` that :meth:`read_key`
        would raise for it alone: :class:`KeyNotFoundError`, :class:`UnsafeObjectError` (never
        opened, never waited on), :class:`IntegrityError` for an object over ``max_bytes``, a
        :class:`~archive.errors.BackendError` (a lost connection may fail every key after it).
        Other exceptions (an interrupt, a bug) propagate. Memory: the caller asks for small
        objects only; the contents of one group of keys are held at once.

        The default reads one key after the other with :meth:`read_key`.
        """
        for key, max_bytes in keys:
            try:
                data = self.read_key(key, max_bytes)
            except ArchiveError as exc:
                yield key, exc
            else:
                yield key, data

    def write_bytes(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        self.check_writable()
        self.write_key(key, [data], exclusive=exclusive)

    def check_writable(self) -> None:
        """Raise :class:`ReadOnlyArchiveError` on storage that can only be read."""
        if self.read_only:
            raise ReadOnlyArchiveError(f"{self.location} is read-only")

    # ---------------------------------------------------------------- the archive itself
    def initialize(self) -> None:
        """Create an empty archive here; an existing archive is left as it is.

        The marker names the archive by a random id, so what a machine remembers of its
        releases (:mod:`archive.pins`) belongs to this archive, not to its path: an archive
        created anew where another was deleted starts with no history.
        """
        self.check_writable()
        marker = {"format": "archive", "version": layout.FORMAT_VERSION, "id": uuid.uuid4().hex}
        from .records import canonical_json

        try:
            self.write_key(layout.MARKER_KEY, [canonical_json(marker) + b"\n"], exclusive=True)
            logger.info("created archive at %s", self.location)
            self.archive_id = marker["id"]
        except KeyExistsError:
            self.check_archive()

    def check_archive(self) -> None:
        """Raise :class:`NotAnArchiveError` unless an archive of a known format is here; note its id."""
        try:
            marker = load_json(self.read_key(layout.MARKER_KEY, 4096), f"{self.location}/{layout.MARKER_KEY}")
        except KeyNotFoundError:
            hint = "" if self.read_only else f" (create one with: archive init {self.location})"
            raise NotAnArchiveError(f"{self.location} is not an archive{hint}") from None
        if not isinstance(marker, dict) or marker.get("format") != "archive":
            raise NotAnArchiveError(f"{self.location}: {layout.MARKER_KEY} does not describe an archive")
        if marker.get("version") not in layout.READABLE_FORMAT_VERSIONS:
            raise NotAnArchiveError(f"{self.location}: archive format {marker.get('version')!r}, this tool reads"
                                    f" {' and '.join(map(str, layout.READABLE_FORMAT_VERSIONS))}")
        archive_id = marker.get("id")
        if archive_id is not None and not (isinstance(archive_id, str) and _ARCHIVE_ID.fullmatch(archive_id)):
            raise NotAnArchiveError(f"{self.location}: {layout.MARKER_KEY} has a malformed id")
        self.archive_id = archive_id

    @property
    def identity(self) -> str:
        """What names this archive for the records remembered of it: its id, or (archives made
        before ids existed) its location."""
        return f"id:{self.archive_id}" if self.archive_id else self.location

    def names(self, namespace: str | None = None) -> list[str]:
        """The names of all releases, or those of one ``namespace`` (``NAMESPACE/NAME``), sorted."""
        from .index import list_names

        return list_names(self, namespace)

    def versions(self, name: str) -> list[str]:
        """The versions of ``name``, newest first; empty if there are none."""
        from .index import list_versions

        check_name(name)
        return sort_versions(list_versions(self, name), newest_first=True)

    def release_id(self, name: str, version: str) -> BlobId:
        """The record id that the pointer of ``name`` ``version`` names."""
        key = layout.release_key(name, version)
        try:
            text = self.read_key(key, MAX_POINTER_BYTES).decode("ascii", "replace").strip()
        except KeyNotFoundError:
            raise ReleaseNotFoundError(f"no release {name} {version} in {self.location}") from None
        try:
            return BlobId.parse(text)
        except ValueError:
            raise IntegrityError(f"{key}: not a record id") from None

    def get_release(self, name: str, version: str) -> Release:
        """Read and verify one release record by exact name and version."""
        check_name(name)
        version = str(parse_version(version))
        record_id = self.release_id(name, version)
        release, data = self._read_record_bytes(record_id)
        if (release.name, release.version) != (name, version):
            raise IntegrityError(
                f"record {record_id.short} stored as {name} {version} describes {release.name} {release.version}")
        if self.seen is not None:
            self.seen.check(self.identity, self.location, name, version, record_id)
        if self.known is not None:
            self.known.remember(self, release, data)
        return release

    def read_record(self, record_id: BlobId) -> Release:
        """Read a record blob, check it hashes to ``record_id``, and validate it."""
        return self._read_record_bytes(record_id)[0]

    def _read_record_bytes(self, record_id: BlobId) -> tuple[Release, bytes]:
        """:meth:`read_record`, and the bytes it was parsed from (which hash to ``record_id``).

        The release's :attr:`~archive.records.Release.record_id` is the id it is stored under,
        checked here, not a hash of the record encoded again (10,000 entries: 5 ms a time).
        """
        from .records import MAX_RECORD_BYTES

        key = layout.blob_key(record_id)
        try:
            data = self.read_key(key, MAX_RECORD_BYTES)
        except KeyNotFoundError:
            raise IntegrityError(f"record {record_id.short} is missing from {self.location}") from None
        if BlobId.of_bytes(data) != record_id:
            raise IntegrityError(f"record {record_id.short}: content does not match its id")
        release = parse_record(data, f"record {record_id.short}")
        release.__dict__["record_id"] = record_id  # the cached_property's own slot
        return release, data

    def resolve(self, name: str, range: str = "*", *, include_prerelease: bool = False,
                expect: str | None = None) -> Release:
        """The release of ``name`` with the highest version matching ``range``.

        A yanked version (:mod:`archive.yank`) is skipped unless ``range`` names exactly it.
        ``expect`` pins the result: a record id (``sha256:...``) the release must have, as a
        lock file would hold it; anything else raises :class:`IntegrityError`.

        Raises
        ------
        ReleaseNotFoundError
            No release of that name exists.
        NoMatchingVersionError
            Releases exist, but none matches.
        """
        from .namespaces import no_release_named

        spec = parse_range(range, include_prerelease)
        versions = self.versions(name)
        if not versions:
            raise no_release_named(self, name)
        from .yank import is_exact, yanked

        skipped = {} if is_exact(range) else yanked(self, name)  # ranges skip yanked versions
        best = spec.best(v for v in versions if v not in skipped)
        if best is None:
            shown = ", ".join(versions[:8]) + (", ..." if len(versions) > 8 else "")
            shown += f"; yanked: {', '.join(sorted(skipped))}" if skipped else ""
            raise NoMatchingVersionError(f"no version of {name!r} matches {range!r} (have {shown})")
        release = self.get_release(name, best)
        if expect is not None and release.record_id != BlobId.parse(expect):
            raise IntegrityError(f"{name} {best} has record {release.record_id.short}, expected {expect}")
        return release

    def publish(self, folder: str | Path, name: str, version: str,
                metadata: Mapping[str, Any] | None = None, *, jobs: int | None = None,
                progress: bool | None = None, exclude: Iterable[str] = (),
                stats: "PublishStats | None" = None) -> Release:
        """Publish ``folder`` as release ``name`` ``version``; see :func:`archive.publish.publish`.

        ``exclude``: gitignore patterns of paths to leave out (with those of ``.archiveignore``).
        ``stats``: a :class:`~archive.publish.PublishStats` to fill in with what was uploaded.
        """
        from .cache import default_cache
        from .publish import publish

        self.check_writable()
        return publish(self, Path(folder), name, version, metadata, jobs=jobs, progress=progress,
                       stat_cache=default_cache().stat_cache, stats=stats,
                       exclude=(exclude,) if isinstance(exclude, str) else tuple(exclude))

    def download(self, name: str, range: str = "*", dest: str | Path | None = None, *,
                 force: bool = False, include_prerelease: bool = False, expect: str | None = None,
                 link: str = "auto", jobs: int | None = None, progress: bool | None = None,
                 use_cache: bool = True, exact: bool = False, include: Iterable[str] = (),
                 exclude: Iterable[str] = (), cache_large: bool = False) -> Path:
        """Download the best match of ``range`` into ``dest``; see :func:`archive.download.download`.

        ``include``/``exclude``: gitignore patterns; only the matching files are fetched and
        placed (see :mod:`archive.selection`; needs ``dest``)."""
        from .download import download
        from .selection import select_files

        release = self.resolve(name, range, include_prerelease=include_prerelease, expect=expect)
        release = select_files(release, include, exclude)
        return download(self, release, None if dest is None else Path(dest), force=force, link=link,
                        jobs=jobs, progress=progress, use_cache=use_cache, exact=exact,
                        cache_large=cache_large)

    def sync(self, lock: "Lock | str | Path" = "archive.lock", dest: str | Path | None = None, *,
             jobs: int | None = None, progress: bool | None = None) -> dict[str, Path]:
        """Materialize exactly the releases a lock pins, from this archive (or a mirror of the one
        it was made on); see :func:`archive.lock.sync`."""
        from .lock import load_lock, sync

        return sync(lock if not isinstance(lock, (str, Path)) else load_lock(lock), self, dest, jobs=jobs,
                    progress=progress)

    def verify(self, name: str | None = None, range: str | None = None, *, full: bool = False,
               repair: bool = False, jobs: int | None = None, progress: bool | None = None):
        """Check releases and their blobs; see :func:`archive.verify.verify_archive`."""
        from .verify import verify_archive

        return verify_archive(self, name, range, full=full, repair=repair, jobs=jobs, progress=progress)

    def collect_garbage(self, *, grace_hours: float = 24.0, dry_run: bool = False):
        """Remove unreferenced blobs and stale temporaries; see :func:`archive.gc.collect_garbage`."""
        from .gc import collect_garbage

        return collect_garbage(self, grace_hours=grace_hours, dry_run=dry_run)

    def new_release(self, name: str, version: str, metadata: Mapping[str, Any] | None = None, *,
                    jobs: int | None = None, progress: bool | None = None) -> "ReleaseBuilder":
        """A release to fill in a ``with`` block, published all or nothing; see :mod:`archive.builder`."""
        from .builder import ReleaseBuilder

        return ReleaseBuilder(self, name, version, metadata, jobs=jobs, progress=progress)

    @contextmanager
    def open(self, name: str, path: str, range: str = "*", *, encoding: str | None = None,
             include_prerelease: bool = False) -> Iterator[IO[Any]]:
        """Open one file of a release, binary (or text with ``encoding``); see :mod:`archive.single`."""
        from .single import open_file

        with open_file(self, name, path, range, encoding=encoding, include_prerelease=include_prerelease) as stream:
            yield stream

    def fetch(self, name: str, path: str, range: str = "*", *, include_prerelease: bool = False) -> Path:
        """A verified, read-only local copy of one file of a release; see :func:`archive.single.fetch_file`."""
        from .single import fetch_file

        return fetch_file(self, name, path, range, include_prerelease=include_prerelease)

    def prefetch(self, name: str, range: str = "*", *, include: Iterable[str] = (), exclude: Iterable[str] = (),
                 include_prerelease: bool = False, jobs: int | None = None, progress: bool | None = None) -> Release:
        """Fill the cache with a release's blobs, writing no folder; see :func:`archive.single.prefetch`."""
        from .single import prefetch

        return prefetch(self, self.resolve(name, range, include_prerelease=include_prerelease), include=include,
                        exclude=exclude, jobs=jobs, progress=progress)

    def mirror_to(self, target: "ArchiveInterface", name: str | None = None, range: str | None = None, *,
                  jobs: int | None = None, progress: bool | None = None) -> "MirrorReport":
        """Copy releases (default: all) to ``target``; see :func:`archive.mirror.mirror`."""
        from .mirror import mirror

        return mirror(self, target, name, range, jobs=jobs, progress=progress)

    def copy_blob_to(self, blob_id: BlobId, size: int, target: "ArchiveInterface",
                     on_bytes: Callable[[int], None] | None = None) -> None:
        """Copy one blob to ``target`` while verifying its content against its id and size."""
        key = layout.blob_key(blob_id)
        with self.open_key(key) as stream:
            chunks = verified_chunks(reporting(iter_chunks(stream), on_bytes), blob_id, size,
                                     f"blob {blob_id.short} in {self.location}")
            target.write_key(key, chunks)

