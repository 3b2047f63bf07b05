"""Publishing a folder as a release: scan, hash, upload what is missing, commit the record last.

The order is what makes a publish all or nothing. Blobs go first, each written under a
temporary name and verified against its hash before it is moved into place. The record blob
follows, and the release becomes visible only when its pointer is created by a write that can
never replace an existing one. A publish killed at any point leaves at most unreferenced blobs
(which ``archive gc`` removes later, and which a rerun reuses), never a partial release.
"""

from __future__ import annotations

import logging
import os
import stat
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator, Mapping

from . import layout
from .errors import (InvalidInputError, KeyExistsError, KeyNotFoundError, ReleaseExistsError,
                     ReleaseNotFoundError)
from .hashing import BlobId, hash_file, iter_chunks, verified_chunks
from .index import update_indexes
from .records import FileEntry, Release, check_name, check_paths
from .statcache import StatCache, identity, is_settled
from .transfer import make_progress, reporting, run_jobs, with_retries
from .versions import check_release_version

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)


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
    hashing_started = time.time_ns()
    entries = hash_sources(sources, progress, stat_cache)
    release = Release.create(name, version, entries, metadata)
    existing = _existing_release(arc, release)
    if existing is not None:
        update_indexes(arc, name)
        return existing
    upload_missing_blobs(arc, sources, entries, jobs or arc.max_workers, progress, hashing_started)
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
    """Hash every file in parallel, except those ``known`` remembers unchanged.

    A file that changes while it is hashed fails the publish.
    """
    started = time.time_ns()
    remembered = {s.path: known.lookup(s.location, s.info) for s in sources} if known else {}
    todo = [s for s in sources if remembered.get(s.path) is None]
    bar = make_progress("hashing", sum(s.size for s in todo), len(todo), progress)
    try:
        def job(source: SourceFile) -> FileEntry:
            entry = _hash_source(source)
            bar.advance(entry.size)
            bar.file_done()
            return entry

        hashed = dict(zip((s.path for s in todo), run_jobs([lambda s=s: job(s) for s in todo], os.cpu_count() or 2)))
    finally:
        bar.close()
    if known:
        known.remember([(s.location, s.info, hashed[s.path].blob) for s in todo], started)
    logger.debug("hashed %d files, %d unchanged since last time", len(todo), len(sources) - len(todo))
    return {s.path: hashed.get(s.path) or FileEntry(remembered[s.path], s.size) for s in sources}


def _hash_source(source: SourceFile) -> FileEntry:
    try:
        blob_id, size = hash_file(source.location)
        after = os.stat(source.location)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {source.path!r}: {exc.strerror}") from None
    if size != source.size or identity(after) != identity(source.info):
        raise InvalidInputError(f"{source.path!r} changed while being published; publish again when it is stable")
    return FileEntry(blob_id, size)


def upload_missing_blobs(arc: "ArchiveInterface", sources: list[SourceFile], entries: dict[str, FileEntry],
                         workers: int, progress: bool | None = None, hashed_at_ns: int = 0) -> None:
    """Upload each distinct blob the archive lacks (or holds at a wrong size), once.

    ``hashed_at_ns`` is when hashing began: files settled before it are checked for change by
    their identity instead of a second hash (see :func:`_upload`).
    """
    first_source: dict[BlobId, SourceFile] = {}
    for source in sources:
        first_source.setdefault(entries[source.path].blob, source)
    present = run_jobs([lambda b=b, s=s: with_retries(lambda: _has_blob(arc, b, s.size), f"checking {s.path}")
                        for b, s in first_source.items()], workers)
    missing = [(blob, src) for (blob, src), there in zip(first_source.items(), present) if not there]
    logger.info("%d files, %d distinct blobs, %d to upload", len(sources), len(first_source), len(missing))
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
    try:
        stream = open(src.location, "rb")
    except OSError as exc:
        raise InvalidInputError(f"cannot read {src.path!r}: {exc.strerror}") from None
    with stream:
        chunks = reporting(iter_chunks(stream), bar.advance)
        if settled:
            chunks = _unchanged(chunks, stream, src)
        else:
            chunks = verified_chunks(chunks, blob, src.size, f"{src.path!r} changed while being published")
        arc.write_key(layout.blob_key(blob), chunks)


def _unchanged(chunks: Iterator[bytes], stream: BinaryIO, src: SourceFile) -> Iterator[bytes]:
    """Pass ``chunks`` through, then raise if the file is not the one that was hashed."""
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        yield chunk
    if seen != src.size or identity(os.fstat(stream.fileno())) != identity(src.info):
        raise InvalidInputError(f"{src.path!r} changed while being published; publish again when it is stable")


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
