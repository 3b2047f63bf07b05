"""Publishing a folder as a release: scan, hash, upload what is missing, commit the record last.

The order is what makes a publish all or nothing. Blobs go first, each written under a
temporary name and moved into place only once its bytes are known to hash to its name (each
new file is read once: the hash and the upload come from the same chunks). The record blob
follows, and the release becomes visible only when its pointer is created by a write that can
never replace an existing one. A publish killed at any point leaves at most unreferenced blobs
(which ``archive gc`` removes later, and which a rerun reuses), never a partial release.
"""

from __future__ import annotations

import logging
import operator
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator, Mapping, Sequence

from . import layout
from .errors import (ArchiveError, IntegrityError, InvalidInputError, KeyExistsError,
                     ReleaseExistsError, ReleaseNotFoundError)
from .hashing import BlobId, HashingChunks, hash_stream, iter_chunks, verified_chunks
from .index import update_indexes
from .leases import lease
from .media import HEAD_BYTES, detect_media_type
from .namespaces import prepare_for_name
from .record_codec import gc_paused
from .records import NO_EXTRA, FileEntry, Release, check_metadata, check_name
from .reuse import EarlierRelease, remember_release, reused_release, scan_digest
from .scan import SourceFile, scan_folder, with_modes
from .statcache import StatCache, identity, is_settled
from .storing import WrittenOnce, blobs_not_stored, by_workers, read_whole
from .store_workers import processes_to_store, store_split
from .transfer import make_progress, reporting, run_jobs, with_retries
from .versions import check_release_version

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
_SIZE_OF = operator.attrgetter("info.st_size")  # a source's size, without a Python call per file
#: Files up to this size are read whole into memory, hashed, then uploaded if missing.
BUFFERED_FILE = 4 * 1024 * 1024


@dataclass
class PublishStats:
    """What a publish moved: filled in by :func:`publish` for a caller that passes one.

    ``uploaded_*`` counts the distinct contents written to the archive; every other file of the
    release was stored already (by an earlier release, or as a duplicate within this one).
    ``unchanged`` is true when the release existed with the same content and nothing was written.
    """

    files: int = 0
    bytes: int = 0
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    unchanged: bool = False
    _uploaded: set[BlobId] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def uploaded(self, blob: BlobId, size: int) -> None:
        """Count one content written (from any thread; a content written twice counts once)."""
        with self._lock:
            if blob not in self._uploaded:
                self._uploaded.add(blob)
                self.uploaded_files += 1
                self.uploaded_bytes += size


def publish(arc: "ArchiveInterface", folder: Path, name: str, version: str,
            metadata: Mapping[str, Any] | None = None, *, jobs: int | None = None,
            progress: bool | None = None, stat_cache: StatCache | None = None,
            stats: PublishStats | None = None, exclude: Sequence[str] = ()) -> Release:
    """Publish ``folder`` as ``name`` ``version`` on ``arc`` and return the stored record.

    Publishing the same files and metadata again under an existing version is a no-op that
    returns the stored record; anything else under an existing version raises
    :class:`ReleaseExistsError`, and nothing is written. ``exclude`` holds gitignore patterns
    of paths to leave out (see :func:`archive.scan.scan_folder`); ``stats``, if given, is
    filled in with what was uploaded.

    Stored blobs this publish reuses are leased (:mod:`archive.leases`) from before they are
    looked up until the release pointer exists, so a concurrent gc never removes them.
    """
    check_name(name)
    version = check_release_version(version)
    check_metadata(metadata)  # bad input is refused before the folder is read
    with gc_paused():  # see publish_sources; from the scan on, whose 100,000 files would be its first walk
        return publish_sources(arc, scan_folder(folder, exclude), name, version, metadata, jobs=jobs,
                               progress=progress, stat_cache=stat_cache, stats=stats)


def publish_sources(arc: "ArchiveInterface", sources: list[SourceFile], name: str, version: str,
                    metadata: Mapping[str, Any] | None = None, *, jobs: int | None = None,
                    progress: bool | None = None, stat_cache: StatCache | None = None,
                    stats: PublishStats | None = None) -> Release:
    """:func:`publish` of files already gathered (by a scan, or by :mod:`archive.builder`).

    The cyclic garbage collector is paused throughout (:func:`gc_paused`): a publish makes
    objects per file (sources, entries, ids) and no cycles, and each collection would walk all
    of them again; reference counting frees them as before."""
    with gc_paused():
        return _publish_sources(arc, sources, name, version, metadata, jobs=jobs, progress=progress,
                                stat_cache=stat_cache, stats=stats)


def _publish_sources(arc: "ArchiveInterface", sources: list[SourceFile], name: str, version: str,
                     metadata: Mapping[str, Any] | None, *, jobs: int | None, progress: bool | None,
                     stat_cache: StatCache | None, stats: PublishStats | None) -> Release:
    check_name(name)
    version = check_release_version(version)
    check_metadata(metadata)
    stats = stats if stats is not None else PublishStats()
    stats.files, stats.bytes = len(sources), sum(map(_SIZE_OF, sources))
    latest = EarlierRelease(arc, name)
    if arc.has_key(layout.release_key(name, version)):
        same = EarlierRelease(arc, name, version)
        entries = with_modes(hash_sources(sources, progress, stat_cache), sources, same.files)
        existing = _existing_release(arc, Release.create(name, version, entries, metadata))
        if existing is not None:
            update_indexes(arc, name)
            stats.unchanged = True
            return existing
    started = time.time_ns()
    digest = scan_digest(sources) if stat_cache is not None else ""
    reused = reused_release(arc, stat_cache, digest, name, version, metadata, sources, stats.bytes) if digest else None
    if reused is not None:  # every file unchanged since a visible release listed them: nothing to read or upload
        committed = commit_release(arc, *reused)
        update_indexes(arc, name)
        logger.info("published %s %s: %d files, all unchanged", name, version, stats.files)
        return committed
    workers = jobs or arc.max_workers
    reusable = reusable_entries(arc, name, sources, progress, stat_cache, latest)
    with lease(arc, (entry.blob for entry in reusable.values())):
        new_sources = [s for s in sources if s.path not in reusable]
        with arc.batched_writes():  # the blobs' own keys are read by none of this; all exist after it
            upload_missing_blobs(arc, [s for s in sources if s.path in reusable], reusable, workers, progress,
                                 started, stats)
            stored = store_new_files(arc, new_sources, jobs, progress, stat_cache, stats)
        entries = with_modes({**reusable, **stored}, sources, latest.files)
        _remember_media_types(stat_cache, sources, reusable, entries)
        release, data = Release.create_encoded(name, version, entries, metadata)
        del entries
        with _guard_new_blobs(arc, new_sources, stored, workers, progress, started, stats):
            committed = commit_release(arc, release, data)
        if committed is release and digest:
            remember_release(stat_cache, arc, digest, sources, started, release, data)
        del data
    update_indexes(arc, name)
    logger.info("published %s %s: %d files, %d bytes (%d files, %d bytes uploaded)", name, version,
                len(release.files), release.total_size, stats.uploaded_files, stats.uploaded_bytes)
    return committed


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
                media_type = _peek_media_type(stream, source)
                blob, size = hash_stream(stream, bar.advance)
                _check_unchanged(source, stream, size)
            bar.file_done()
            return FileEntry(blob, size, media_type=media_type)

        hashed = dict(zip((s.path for s in todo), run_jobs([lambda s=s: job(s) for s in todo], os.cpu_count() or 2)))
    finally:
        bar.close()
    _remember(known, todo, hashed, started)
    return {**remembered, **hashed}


def reusable_entries(arc: "ArchiveInterface", name: str, sources: list[SourceFile],
                     progress: bool | None = None, known: StatCache | None = None,
                     latest: "EarlierRelease | None" = None) -> dict[str, FileEntry]:
    """Entries of the files whose blob may be stored already: those the stat cache knows
    unchanged, and those of the same size as a file of the latest release of ``name``.

    The second kind are most likely that release's files, published again from a machine whose
    stat cache does not know them: they are hashed now (a large one is read again if it turns
    out to be missing), so republishing unchanged data uploads nothing. Every other file is new
    and is read once, by :func:`store_new_files`: asking the archive about it first would only
    cost a round trip.
    """
    remembered = _remembered(sources, known)
    rest = [s for s in sources if s.path not in remembered]
    latest = latest or EarlierRelease(arc, name)
    seen_sizes = latest.sizes() if rest else frozenset()
    likely = [s for s in rest if s.size in seen_sizes]
    return {**remembered, **(hash_sources(likely, progress, known) if likely else {})}


def store_new_files(arc: "ArchiveInterface", sources: list[SourceFile], workers: int | None,
                    progress: bool | None = None, known: StatCache | None = None,
                    stats: PublishStats | None = None) -> dict[str, FileEntry]:
    """Store files whose blob is not known to be stored, each read once: its hash and its
    upload come from the same chunks.

    - a small file (up to :data:`BUFFERED_FILE`) is read whole into memory, hashed, and
      uploaded from memory;
    - a larger file is uploaded as it is hashed, under a name given only at the end by the
      hash (see :meth:`ArchiveInterface.write_key`).

    ``workers`` threads (None: as many as the archive finds worth it for each size, see
    :meth:`ArchiveInterface.write_workers`; files needing more threads go first).
    """
    started = time.time_ns()
    bar = make_progress("uploading", sum(s.size for s in sources), len(sources), progress)
    written = WrittenOnce()
    try:
        def job(source: SourceFile) -> FileEntry:
            entry = with_retries(lambda: _store_new_file(arc, source, bar, written), f"upload of {source.path}")
            if stats is not None:
                stats.uploaded(entry.blob, entry.size)
            bar.file_done()
            return entry

        def stored_by_child(source: SourceFile, entry: FileEntry) -> None:
            bar.advance(entry.size)
            if stats is not None:
                stats.uploaded(entry.blob, entry.size)
            bar.file_done()

        stored: dict[str, FileEntry] = {}
        for threads, group in by_workers(arc, sources, workers):
            processes = processes_to_store(group, workers) if threads == 1 else 1
            if processes > 1:  # one thread is all these files are worth, and there are cores to spare
                entries = store_split(arc, group, processes, job, _check_unchanged, stored_by_child)
            else:
                entries = run_jobs([lambda s=s: job(s) for s in group], threads)
            stored.update(zip((s.path for s in group), entries))
    finally:
        bar.close()
    _remember(known, sources, stored, started)
    return stored


def _remembered(sources: list[SourceFile], known: StatCache | None) -> dict[str, FileEntry]:
    """Entries of the files whose hash the stat cache knows, by release path, with the media
    type it remembers (None when it does not: :func:`with_modes` finds it then)."""
    if known is None:
        return {}
    found = known.recall((s.location, s.info) for s in sources)
    return {sources[n].path: FileEntry(blob, sources[n].size, NO_EXTRA, False, media_type)
            for n, (blob, media_type) in found.items()}


def _remember(known: StatCache | None, sources: list[SourceFile], entries: dict[str, FileEntry],
              started: int) -> None:
    """Remember the hashes and media types of ``sources`` just read (see :meth:`StatCache.remember`)."""
    if known is not None:
        known.remember(((s.location, s.info, entries[s.path].blob, entries[s.path].media_type) for s in sources),
                       started)


def _remember_media_types(known: StatCache | None, sources: list[SourceFile], recalled: Mapping[str, FileEntry],
                          entries: Mapping[str, FileEntry]) -> None:
    """Give the stat cache the media types it lacked for files it knew (rows written by a pull,
    or before it kept them), as :func:`with_modes` found them: the next push needs no earlier
    release and no read for them. The rows' identities matched just now, so they stay valid."""
    if known is not None:
        lacking = [s for s in sources if s.path in recalled and recalled[s.path].media_type is None]
        known.remember([(s.location, s.info, entries[s.path].blob, entries[s.path].media_type) for s in lacking],
                       None)


def _store_new_file(arc: "ArchiveInterface", src: SourceFile, bar: Any, written: WrittenOnce) -> FileEntry:
    """Hash and store one file, from one read (no write if this publish stores its content already)."""
    if src.size <= BUFFERED_FILE:
        data = read_whole(src, _check_unchanged)
        bar.advance(len(data))
        # src.size: read_whole checked that it is the length read, and it is the scan's shared int
        entry = FileEntry(BlobId.of_bytes(data), src.size, media_type=detect_media_type(data, src.path))
        if written.claim(entry.blob):
            try:
                arc.write_key(layout.blob_key(entry.blob), [data])
            except BaseException:
                written.give_back(entry.blob)
                raise
        return entry
    with _opened(src) as stream:
        media_type = _peek_media_type(stream, src)
        hashing = HashingChunks(reporting(iter_chunks(stream), bar.advance))
        arc.write_key(lambda: layout.blob_key(hashing.blob_id),
                      _then_unchanged(hashing, src, stream))
        return FileEntry(hashing.blob_id, hashing.size, media_type=media_type)


def _peek_media_type(stream: BinaryIO, src: SourceFile) -> str:
    """The media type of an open file from its head, leaving it at its start (no second open)."""
    media_type = detect_media_type(stream.read(HEAD_BYTES), src.path)
    stream.seek(0)
    return media_type


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


def _check_unchanged(src: SourceFile, stream: BinaryIO | int, size_read: int) -> None:
    """Raise unless the open file (a stream or a descriptor) is still the one scanned: same
    size, same identity.

    Any write to a file changes its mtime or ctime, so a file whose identity did not change
    from the scan to the end of a read gave that read the content it had when scanned.
    """
    fd = stream if isinstance(stream, int) else stream.fileno()
    if size_read != src.size or identity(os.fstat(fd)) != identity(src.info):
        raise InvalidInputError(f"{src.path!r} changed while being published; publish again when it is stable")


def _then_unchanged(chunks: Iterable[bytes], src: SourceFile, stream: BinaryIO) -> Iterator[bytes]:
    """Pass ``chunks`` through, then check (inside the writer's loop) that the file did not change."""
    size = 0
    for chunk in chunks:
        size += len(chunk)
        yield chunk
    _check_unchanged(src, stream, size)


@contextmanager
def _guard_new_blobs(arc: "ArchiveInterface", sources: list[SourceFile], stored: Mapping[str, FileEntry],
                     workers: int, progress: bool | None, hashed_at_ns: int, stats: PublishStats) -> Iterator[None]:
    """Where moves are not atomic, keep a concurrent gc from deleting a blob just written.

    gc moves an old unreferenced blob aside by copy then delete on such storage; a publish that
    wrote the same content anew between the two loses it to the delete. Leasing the new blobs
    and then checking them closes that: a delete before the check is seen (the blob is uploaded
    again), one after it comes after the lease, which gc reads after its moves, and gc puts the
    blob back. Storage with atomic moves needs neither (a rename never deletes a later write).
    """
    if arc.atomic_moves or not stored:
        yield
        return
    with lease(arc, (entry.blob for entry in stored.values())):
        gone = blobs_not_stored({entry.blob: entry.size for entry in stored.values()}, arc, workers)
        if gone:
            logger.warning("%d new blobs vanished while publishing (a concurrent gc); uploading them again", len(gone))
            again = [s for s in sources if stored[s.path].blob in gone]
            upload_missing_blobs(arc, again, stored, workers, progress, hashed_at_ns, stats)
        yield


def upload_missing_blobs(arc: "ArchiveInterface", sources: list[SourceFile], entries: Mapping[str, FileEntry],
                         workers: int, progress: bool | None = None, hashed_at_ns: int = 0,
                         stats: PublishStats | None = None) -> None:
    """Upload each distinct blob of ``sources`` (hashed before) that the archive lacks, once
    (found as :func:`_blobs_not_stored` finds them: by listings, or a stat that checks the size).

    ``hashed_at_ns`` is when hashing began: files settled before it are checked for change by
    their identity instead of a second hash (see :func:`_upload`).
    """
    first_source: dict[BlobId, SourceFile] = {}
    for source in sources:
        first_source.setdefault(entries[source.path].blob, source)
    absent = blobs_not_stored({blob: src.size for blob, src in first_source.items()}, arc, workers)
    missing = [(blob, src) for blob, src in first_source.items() if blob in absent]
    logger.info("%d known files, %d distinct blobs, %d to upload", len(sources), len(first_source), len(missing))
    bar = make_progress("uploading", sum(src.size for _, src in missing), len(missing), progress)
    try:
        def job(blob: BlobId, src: SourceFile) -> None:
            settled = is_settled(src.info, hashed_at_ns)
            with_retries(lambda: _upload(arc, blob, src, bar, settled), f"upload of {src.path}")
            if stats is not None:
                stats.uploaded(blob, src.size)
            bar.file_done()

        run_jobs([lambda b=b, s=s: job(b, s) for b, s in missing], workers)
    finally:
        bar.close()


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


def commit_release(arc: "ArchiveInterface", release: Release, data: bytes | None = None) -> Release:
    """Store the record blob, then create the pointer that makes the release visible.

    ``data`` is the record's bytes when the caller has them already (from
    :meth:`Release.create_encoded`): a record of 100,000 files is then not serialized twice.
    """
    if data is None:
        data = release.to_bytes()
        record_id = BlobId.of_bytes(data)
    else:
        record_id = release.record_id  # computed from these very bytes by create_encoded
    arc.write_key(layout.blob_key(record_id), [data])
    del data  # the caller's reference aside, the record's bytes are not held while the pointer is written
    prepare_for_name(arc, release.name)
    try:
        arc.write_key(layout.release_key(release.name, release.version), [f"{record_id}\n".encode()],
                      exclusive=True)
    except KeyExistsError:
        existing = _existing_release(arc, release)  # a concurrent publisher won the race
        assert existing is not None
        return existing
    return release
