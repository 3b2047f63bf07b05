"""Publishing a folder as a release: scan, hash, upload what is missing, commit the record last.

The order is what makes a publish all or nothing. Blobs go first, each written under a
temporary name and moved into place only once its bytes are known to hash to its name (each
new file is read once: the hash and the upload come from the same chunks). The record blob
follows, and the release becomes visible only when its pointer is created by a write that can
never replace an existing one. A publish killed at any point leaves at most unreferenced blobs
(which ``archive gc`` removes later, and which a rerun reuses), never a partial release.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator, Mapping

from . import layout
from .errors import (ArchiveError, IntegrityError, InvalidInputError, KeyExistsError, KeyNotFoundError,
                     ReleaseExistsError, ReleaseNotFoundError)
from .hashing import BlobId, HashingChunks, hash_stream, iter_chunks, verified_chunks
from .index import update_indexes
from .records import FileEntry, Release, check_name, check_paths
from .statcache import StatCache, identity, is_settled
from .transfer import Progress, make_progress, reporting, run_jobs, with_retries
from .versions import check_release_version

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
#: Files up to this size are read whole into memory, hashed, then uploaded if missing.
BUFFERED_FILE = 4 * 1024 * 1024


@dataclass(frozen=True)
class SourceFile:
    """A regular file found in the folder: its release path, where it is, and its stat."""

    path: str
    location: Path
    info: os.stat_result

    @property
    def size(self) -> int:
        return self.info.st_size


def publish(arc: "ArchiveInterface", folder: Path, name: str, version: str,
            metadata: Mapping[str, Any] | None = None, *, jobs: int | None = None,
            progress: bool | None = None, stat_cache: StatCache | None = None) -> Release:
    """Publish ``folder`` as ``name`` ``version`` on ``arc`` and return the stored record.

    Publishing the same files and metadata again under an existing version is a no-op that
    returns the stored record; anything else under an existing version raises
    :class:`ReleaseExistsError`, and nothing is written.
    """
    check_name(name)
    version = check_release_version(version)
    sources = scan_folder(folder)
    if arc.has_key(layout.release_key(name, version)):
        entries = hash_sources(sources, progress, stat_cache)
        existing = _existing_release(arc, Release.create(name, version, entries, metadata))
        if existing is not None:
            update_indexes(arc, name)
            return existing
    entries = store_sources(arc, name, sources, jobs or arc.max_workers, progress, stat_cache)
    release = Release.create(name, version, entries, metadata)
    stored = commit_release(arc, release)
    update_indexes(arc, name)
    logger.info("published %s %s: %d files, %d bytes", name, version, len(release.files), release.total_size)
    return stored


def scan_folder(folder: Path) -> list[SourceFile]:
    """Every regular file below ``folder``, sorted by release path.

    Symbolic links are followed when they stay inside the folder (the file they point to is
    published) and refused when they point outside it, so a publish never picks up files its
    author did not mean to share. Special files (FIFOs, sockets, devices) are refused.
    """
    if not folder.exists():
        raise InvalidInputError(f"folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise InvalidInputError(f"{str(folder)!r} is not a folder")
    root = Path(os.path.realpath(folder))
    files = sorted(_walk(root, root, "", frozenset([root])), key=lambda f: f.path)
    if not files:
        raise InvalidInputError(f"folder {str(folder)!r} has no files to publish")
    check_paths([f.path for f in files])
    return files


def _walk(root: Path, directory: Path, prefix: str, ancestors: frozenset[Path]) -> Iterator[SourceFile]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise InvalidInputError(f"cannot read folder {str(directory)!r}: {exc.strerror}") from None
    for entry in entries:
        path = prefix + unicodedata.normalize("NFC", entry.name)
        info = _stat_entry(root, entry, path)
        if stat.S_ISDIR(info.st_mode):
            real = Path(os.path.realpath(entry.path))
            if real in ancestors:
                raise InvalidInputError(f"{path!r} is a link that loops back to a folder containing it")
            yield from _walk(root, Path(entry.path), path + "/", ancestors | {real})
        elif stat.S_ISREG(info.st_mode):
            if not os.access(entry.path, os.R_OK):  # found now, before any upload
                raise InvalidInputError(f"cannot read {path!r}: {os.strerror(errno.EACCES)}")
            yield SourceFile(path, Path(entry.path), info)
        else:
            raise InvalidInputError(f"{path!r} is not a regular file or folder (device, FIFO or socket)")


def _stat_entry(root: Path, entry: os.DirEntry[str], path: str) -> os.stat_result:
    """Stat an entry, following a symlink only when it stays inside ``root``."""
    try:
        if not entry.is_symlink():
            return entry.stat(follow_symlinks=False)
        target = Path(os.path.realpath(entry.path))
        if target != root and root not in target.parents:
            raise InvalidInputError(f"{path!r} is a link to {str(target)!r}, outside the published folder")
        return os.stat(entry.path)
    except FileNotFoundError:
        raise InvalidInputError(f"{path!r} is a broken link or vanished during the scan") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path!r}: {exc.strerror}") from None


def hash_sources(sources: list[SourceFile], progress: bool | None = None,
                 known: StatCache | None = None) -> dict[str, FileEntry]:
    """Hash every file in parallel, except those ``known`` remembers unchanged; store nothing.

    Used to compare a folder with a release that exists already. A file that changes while it
    is hashed fails the publish.
    """
    started = time.time_ns()
    remembered = _remembered(sources, known)
    todo = [s for s in sources if s.path not in remembered]
    bar = make_progress("hashing", sum(s.size for s in todo), len(todo), progress)
    try:
        def job(source: SourceFile) -> FileEntry:
            with _opened(source) as stream:
                blob, size = hash_stream(stream, bar.advance)
                _check_unchanged(source, stream, size)
            bar.file_done()
            return FileEntry(blob, size)

        hashed = dict(zip((s.path for s in todo), run_jobs([lambda s=s: job(s) for s in todo], os.cpu_count() or 2)))
    finally:
        bar.close()
    _remember(known, todo, hashed, started)
    return {**remembered, **hashed}


def store_sources(arc: "ArchiveInterface", name: str, sources: list[SourceFile], workers: int,
                  progress: bool | None = None, known: StatCache | None = None) -> dict[str, FileEntry]:
    """Make sure the archive holds every file's blob; return each file's entry.

    Files that ``known`` remembers unchanged are not read unless the archive lacks their blob.
    Every other file is read once, and its hash and its upload come from the same chunks:

    - a small file (up to :data:`BUFFERED_FILE`) is read whole into memory, hashed, and
      uploaded from memory;
    - a larger file is uploaded as it is hashed, under a name given only at the end by the
      hash (see :meth:`ArchiveInterface.write_key`).

    Neither asks the archive first whether it has the blob: for a new file the question only
    costs a round trip. But when the latest release of ``name`` has a file of the same size,
    the file is most likely that one, published again from a machine whose stat cache does not
    know it: then it is hashed first and uploaded (a large file read a second time) only if the
    archive lacks its blob, so republishing unchanged data uploads nothing.
    """
    started = time.time_ns()
    remembered = _remembered(sources, known)
    upload_missing_blobs(arc, [s for s in sources if s.path in remembered], remembered, workers, progress, started)
    new = [s for s in sources if s.path not in remembered]
    seen_sizes = _sizes_of_latest(arc, name) if new else frozenset()
    bar = make_progress("uploading", sum(s.size for s in new), len(new), progress)
    try:
        def job(source: SourceFile) -> FileEntry:
            entry = with_retries(lambda: _store_new_file(arc, source, source.size in seen_sizes, bar, started),
                                 f"upload of {source.path}")
            bar.file_done()
            return entry

        stored = dict(zip((s.path for s in new), run_jobs([lambda s=s: job(s) for s in new], workers)))
    finally:
        bar.close()
    _remember(known, new, stored, started)
    logger.debug("%d files: %d new or changed, %d unchanged since last time", len(sources), len(new), len(remembered))
    return {s.path: remembered.get(s.path) or stored[s.path] for s in sources}


def _remembered(sources: list[SourceFile], known: StatCache | None) -> dict[str, FileEntry]:
    """Entries of the files whose hash the stat cache knows, by release path."""
    if known is None:
        return {}
    found = ((s, known.lookup(s.location, s.info)) for s in sources)
    return {s.path: FileEntry(blob, s.size) for s, blob in found if blob is not None}


def _remember(known: StatCache | None, sources: list[SourceFile], entries: dict[str, FileEntry],
              started: int) -> None:
    if known is not None:
        known.remember([(s.location, s.info, entries[s.path].blob) for s in sources], started)


def _sizes_of_latest(arc: "ArchiveInterface", name: str) -> frozenset[int]:
    """Sizes of the files in the latest release of ``name``.

    Only a hint (see :func:`store_sources`): a release that cannot be read gives none.
    """
    try:
        versions = arc.versions(name)
        latest = arc.get_release(name, versions[0]) if versions else None
    except ArchiveError as exc:
        logger.info("not using the latest release of %s to spare uploads: %s", name, exc)
        return frozenset()
    if latest is None:
        return frozenset()
    return frozenset(e.size for e in latest.files.values())


def _store_new_file(arc: "ArchiveInterface", src: SourceFile, probably_stored: bool, bar: Any,
                    started: int) -> FileEntry:
    """Hash and store one file the stat cache does not know, from one read; when it is
    ``probably_stored`` (see :func:`store_sources`), ask the archive first."""
    with _opened(src) as stream:
        if src.size <= BUFFERED_FILE:
            data = stream.read(src.size + 1)  # + 1: a file that grew since the scan is caught
            _check_unchanged(src, stream, len(data))
            bar.advance(len(data))
            entry = FileEntry(BlobId.of_bytes(data), len(data))
            if not (probably_stored and _has_blob(arc, entry.blob, entry.size)):
                arc.write_key(layout.blob_key(entry.blob), [data])
            return entry
        if probably_stored:  # the bar counts the hashing; a second read, if any, is not counted again
            blob, size = hash_stream(stream, bar.advance)
            _check_unchanged(src, stream, size)
            if not _has_blob(arc, blob, size):
                _upload(arc, blob, src, Progress(bar.description, 0, 0), is_settled(src.info, started))
            return FileEntry(blob, size)
        hashing = HashingChunks(reporting(iter_chunks(stream), bar.advance))
        arc.write_key(lambda: layout.blob_key(hashing.blob_id),
                      _then_unchanged(hashing, src, stream))
        return FileEntry(hashing.blob_id, hashing.size)


@contextmanager
def _opened(src: SourceFile) -> Iterator[BinaryIO]:
    try:
        stream = open(src.location, "rb")
    except OSError as exc:
        raise InvalidInputError(f"cannot read {src.path!r}: {exc.strerror}") from None
    with stream:
        try:
            yield stream
        except OSError as exc:
            if isinstance(exc, ArchiveError):
                raise
            raise InvalidInputError(f"cannot read {src.path!r}: {exc.strerror}") from None


def _check_unchanged(src: SourceFile, stream: BinaryIO, size_read: int) -> None:
    """Raise unless the open file is still the one scanned: same size, same identity.

    Any write to a file changes its mtime or ctime, so a file whose identity did not change
    from the scan to the end of a read gave that read the content it had when scanned.
    """
    if size_read != src.size or identity(os.fstat(stream.fileno())) != identity(src.info):
        raise InvalidInputError(f"{src.path!r} changed while being published; publish again when it is stable")


def _then_unchanged(chunks: Iterable[bytes], src: SourceFile, stream: BinaryIO) -> Iterator[bytes]:
    """Pass ``chunks`` through, then check (inside the writer's loop) that the file did not change."""
    size = 0
    for chunk in chunks:
        size += len(chunk)
        yield chunk
    _check_unchanged(src, stream, size)


def upload_missing_blobs(arc: "ArchiveInterface", sources: list[SourceFile], entries: Mapping[str, FileEntry],
                         workers: int, progress: bool | None = None, hashed_at_ns: int = 0) -> None:
    """Upload each distinct blob of ``sources`` (hashed before) that the archive lacks or holds
    at a wrong size, once.

    ``hashed_at_ns`` is when hashing began: files settled before it are checked for change by
    their identity instead of a second hash (see :func:`_upload`).
    """
    first_source: dict[BlobId, SourceFile] = {}
    for source in sources:
        first_source.setdefault(entries[source.path].blob, source)
    present = run_jobs([lambda b=b, s=s: with_retries(lambda: _has_blob(arc, b, s.size), f"checking {s.path}")
                        for b, s in first_source.items()], workers)
    missing = [(blob, src) for (blob, src), there in zip(first_source.items(), present) if not there]
    logger.info("%d known files, %d distinct blobs, %d to upload", len(sources), len(first_source), len(missing))
    bar = make_progress("uploading", sum(src.size for _, src in missing), len(missing), progress)
    try:
        def job(blob: BlobId, src: SourceFile) -> None:
            settled = is_settled(src.info, hashed_at_ns)
            with_retries(lambda: _upload(arc, blob, src, bar, settled), f"upload of {src.path}")
            bar.file_done()

        run_jobs([lambda b=b, s=s: job(b, s) for b, s in missing], workers)
    finally:
        bar.close()


def _has_blob(arc: "ArchiveInterface", blob: BlobId, size: int) -> bool:
    try:
        return arc.stat_key(layout.blob_key(blob)).size == size
    except KeyNotFoundError:
        return False


def _upload(arc: "ArchiveInterface", blob: BlobId, src: SourceFile, bar: Any, settled: bool) -> None:
    """Stream one file into the archive, making sure it is still the content hashed as ``blob``.

    A file that had settled before it was hashed is checked by its identity (size, mtime,
    ctime, inode) once the last byte is read: any write after hashing began would have changed
    its mtime (the rule of :mod:`archive.statcache`), so a second hash would prove nothing more.
    Other files are hashed again as they stream. Either check fails inside the chunks, before
    the backend moves anything into place.
    """
    with _opened(src) as stream:
        chunks = reporting(iter_chunks(stream), bar.advance)
        if settled:
            chunks = _then_unchanged(chunks, src, stream)
        else:
            chunks = verified_chunks(chunks, blob, src.size, f"{src.path!r} changed while being published")
        try:
            arc.write_key(layout.blob_key(blob), chunks)
        except IntegrityError as exc:  # the source, not the archive, is at fault
            raise InvalidInputError(f"{exc}; publish again when it is stable") from None


def _existing_release(arc: "ArchiveInterface", release: Release) -> Release | None:
    """The stored release if it has the same content; None if there is none; else refuse."""
    try:
        existing = arc.get_release(release.name, release.version)
    except ReleaseNotFoundError:
        return None
    if not existing.same_content(release):
        raise ReleaseExistsError(
            f"release {release.name} {release.version} exists already with other content;"
            " releases are never overwritten: publish a new version")
    logger.info("release %s %s exists already with the same content", release.name, release.version)
    return existing


def commit_release(arc: "ArchiveInterface", release: Release) -> Release:
    """Store the record blob, then create the pointer that makes the release visible."""
    data = release.to_bytes()
    record_id = BlobId.of_bytes(data)
    arc.write_key(layout.blob_key(record_id), [data])
    try:
        arc.write_key(layout.release_key(release.name, release.version), [f"{record_id}\n".encode()],
                      exclusive=True)
    except KeyExistsError:
        existing = _existing_release(arc, release)  # a concurrent publisher won the race
        assert existing is not None
        return existing
    return release
