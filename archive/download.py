"""Downloading a release: fetch missing blobs into the cache, then materialize the files.

Every byte written to a destination comes from a verified cache blob and is checked again on
the way out. Each file is written to a temporary file beside its target and renamed over it
only once complete and verified, so an interrupted download never leaves a partial or corrupt
file under a release path. Files already there with the right content are kept; files with
other content are only replaced with ``force``, and the whole download is refused before
anything is written otherwise. Nothing is ever written outside the destination, whatever the
record says and whatever symbolic links the destination holds.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .cache import BlobCache, default_cache
from .errors import (DestinationConflictError, DestinationError, IntegrityError, InvalidInputError,
                     InvalidPathError)
from .hashing import hash_file
from .records import FileEntry, Release
from .transfer import make_progress, run_jobs

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
PART_SUFFIX = ".archive-part"
_PART = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}" + re.escape(PART_SUFFIX))


@dataclass(frozen=True)
class Placement:
    """One file to write: its release path, its entry, and the target path."""

    path: str
    entry: FileEntry
    target: Path


def download(arc: "ArchiveInterface", release: Release, dest: Path | None, *, force: bool = False,
             jobs: int | None = None, progress: bool | None = None, cache: BlobCache | None = None) -> Path:
    """Materialize ``release`` into ``dest`` (or a read-only snapshot in the cache); return the folder.

    Raises
    ------
    DestinationConflictError
        Files in ``dest`` differ from the release and ``force`` is not set; nothing was written.
    IntegrityError
        A blob does not match its id or size, in the archive or (twice) in the cache.
    """
    cache = cache or default_cache()
    workers = jobs or arc.max_workers
    if dest is None:
        return _snapshot(arc, release, cache, workers, progress)
    placements = plan(release, dest, force)
    remove_stale_parts(placements)
    _umask()  # read once here, in one thread: reading it means setting it for a moment
    fetch_blobs(arc, cache, [p.entry for p in placements], workers, progress)
    run_jobs([lambda p=p: place(arc, cache, p) for p in placements], workers)
    logger.info("downloaded %s %s into %s (%d files written)", release.name, release.version, dest, len(placements))
    return dest


def plan(release: Release, dest: Path, force: bool) -> list[Placement]:
    """The files to write into ``dest``: all but those already there with the same content."""
    if dest.exists() and not dest.is_dir():
        raise InvalidInputError(f"destination {str(dest)!r} exists and is not a folder")
    root = Path(os.path.realpath(dest))
    todo: list[Placement] = []
    conflicts: list[str] = []
    for path, entry in release.files.items():
        target = safe_target(root, path)
        state = _existing_state(target, entry)
        if state == "same":
            continue
        if state == "different":
            conflicts.append(path)
        todo.append(Placement(path, entry, target))
    if conflicts and not force:
        shown = ", ".join(conflicts[:5]) + (f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
        raise DestinationConflictError(
            f"{len(conflicts)} file(s) in {str(dest)!r} differ from {release.name} {release.version}"
            f" and would be overwritten: {shown} (use --force to replace them)", conflicts)
    return todo


def safe_target(root: Path, path: str) -> Path:
    """``root/path``, refused if a symbolic link would take the write outside ``root``."""
    target = root.joinpath(*path.split("/"))
    parent = Path(os.path.realpath(target.parent))
    if parent != root and root not in parent.parents:
        raise InvalidPathError(f"{path!r} would be written outside {str(root)!r} (through a symbolic link)")
    return target


def _existing_state(target: Path, entry: FileEntry) -> str:
    """'absent', 'same' (a regular file with the release's content) or 'different'."""
    if not os.path.lexists(target):
        return "absent"
    if target.is_symlink() or not target.is_file():
        if target.is_dir() and not target.is_symlink():
            raise DestinationConflictError(f"{str(target)!r} is a folder where the release has a file", [str(target)])
        return "different"
    try:
        if target.stat().st_size != entry.size:
            return "different"
        return "same" if hash_file(target)[0] == entry.blob else "different"
    except OSError as exc:
        raise DestinationError(f"cannot read {str(target)!r}: {exc.strerror or exc}") from exc


def fetch_blobs(arc: "ArchiveInterface", cache: BlobCache, entries: list[FileEntry], workers: int,
                progress: bool | None) -> None:
    """Copy every distinct blob the cache lacks from ``arc``, in parallel, verified."""
    wanted = {e.blob: e.size for e in entries}
    missing = [(blob, size) for blob, size in wanted.items() if not cache.has(blob, size)]
    bar = make_progress("downloading", sum(size for _, size in missing), len(missing), progress)
    try:
        def job(blob, size) -> None:
            cache.fetch(arc, blob, size, bar.advance)
            bar.file_done()

        run_jobs([lambda b=b, s=s: job(b, s) for b, s in missing], workers)
    finally:
        bar.close()


def place(arc: "ArchiveInterface", cache: BlobCache, placement: Placement) -> None:
    """Write one file from the cache; a corrupt cache blob is evicted and fetched again once."""
    entry = placement.entry
    try:
        _copy_out(cache, placement)
    except IntegrityError:
        cache.evict(entry.blob)
        cache.fetch(arc, entry.blob, entry.size)
        _copy_out(cache, placement)


def _copy_out(cache: BlobCache, placement: Placement) -> None:
    """Copy a cache blob into place through a temporary file, verified as it is copied."""
    target = placement.target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        safe_target(Path(os.path.realpath(target.parent)), target.name)
        chunks = cache.verified_chunks(placement.entry.blob, placement.entry.size)
        write_file_atomically(target, chunks, 0o666 & ~_umask())
    except OSError as exc:
        raise DestinationError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc


def write_file_atomically(target: Path, chunks: Iterable[bytes], mode: int) -> None:
    """Write ``chunks`` to ``target`` so that it is never seen partial.

    The data goes to a hidden temporary file beside the target (same filesystem, so the rename
    is atomic) and replaces the target only once complete; on any error the temporary file is
    removed. A process killed with SIGKILL cannot clean up, so the next download into the same
    folder removes what it left (:func:`remove_stale_parts`).
    """
    tmp_name = _temporary_name(target)
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            os.fchmod(out.fileno(), mode)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _temporary_name(target: Path) -> str:
    return str(target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}{PART_SUFFIX}")


def remove_stale_parts(placements: list[Placement]) -> None:
    """Remove temporary files that a killed download left beside the files it was writing."""
    wanted: dict[Path, set[str]] = {}
    for placement in placements:
        wanted.setdefault(placement.target.parent, set()).add(placement.target.name)
    for folder, names in wanted.items():
        try:
            entries = [e.name for e in os.scandir(folder)]
        except OSError:
            continue
        for entry in entries:
            match = _PART.fullmatch(entry)
            if match and match["name"] in names:
                (folder / entry).unlink(missing_ok=True)
                logger.info("removed %s, left by an interrupted download", folder / entry)


_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def _snapshot(arc: "ArchiveInterface", release: Release, cache: BlobCache, workers: int,
              progress: bool | None) -> Path:
    """A read-only copy of the release in the cache, built aside and renamed into place whole."""
    final = cache.snapshot_dir(release.name, release.version, release.record_id)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=final.parent, prefix=".building-"))
    try:
        download(arc, release, building, jobs=workers, progress=progress, cache=cache)
        for path in release.files:
            os.chmod(building.joinpath(*path.split("/")), 0o444)
        os.rename(building, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return final
