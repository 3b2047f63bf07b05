"""Resuming interrupted blob uploads from the bytes that already reached the server.

A blob is written under ``tmp/<blob hex>.<random>.part``, so a later write of the same blob can
find what an interrupted one left: a write whose connection broke in this process (known at
once), or a file left by an earlier process that was killed or cut off (found by listing
``tmp/`` once, and taken only when idle for :data:`FOREIGN_IDLE_SECONDS`, so a live writer of
the same blob in another process is never disturbed). The file is claimed by renaming it to
the new writer's own temporary name: of two claimers only one can win.

"Verified before rename" stays true: the bytes already on the server are read back and
compared with the local chunks before they are kept, and the shared code checks the chunks
themselves (by hash, or by the source file's unchanged identity) whether sent or compared. From the first difference on the file is truncated
and written again. Reading back costs a download of the prefix instead of an upload, the
faster direction on most links; the retry re-reads and re-hashes the local file either way.
"""

from __future__ import annotations

import io
import itertools
import logging
import re
import stat
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterable, Iterator

from .sftp_io import EXISTING_FILE, PipelinedWriter, WindowedReader, remove_quietly
from .sftp_paths import list_names
from .sftp_proto import SFTPClient

logger = logging.getLogger(__name__)
PARTIAL_NAME = re.compile(r"(?P<hex>[0-9a-f]{64})\.[0-9a-f]{32}\.part")
RESUME_MIN_BYTES = 1024 * 1024  # below this, sending again is cheaper than reading back
FOREIGN_IDLE_SECONDS = 60.0  # a file of another process unchanged this long has lost its writer


@dataclass(frozen=True)
class Partial:
    """A claimed partial upload: now at ``path`` (the claimer's own temporary name)."""

    path: str
    size: int


class PartialUploads:
    """Temporary files of interrupted blob uploads in one archive's ``tmp/`` folder."""

    def __init__(self, tmp_dir: str) -> None:
        self._tmp_dir = tmp_dir
        self._own: dict[str, str] = {}  # blob hex -> path a broken write of this process left
        self._orphans: list[str] = []  # other files broken writes of this process left
        self._foreign: dict[str, list[str]] | None = None  # found in tmp/ at the first claim
        self._lock = threading.Lock()

    def remember(self, path: str, hexdigest: str | None) -> None:
        """Note the file a write left when its connection broke: a retry continues a blob's,
        the next write removes any other (nobody else writes to it)."""
        with self._lock:
            if hexdigest is None:
                self._orphans.append(path)
            else:
                self._own[hexdigest] = path

    def sweep(self, sftp: SFTPClient) -> None:
        """Remove the files noted by :meth:`remember` that no retry will continue."""
        with self._lock:
            orphans, self._orphans = self._orphans, []
        for path in orphans:
            remove_quietly(sftp, path)

    def claim(self, sftp: SFTPClient, hexdigest: str, new_path: str) -> Partial | None:
        """Take over a partial upload of ``hexdigest`` by renaming it to ``new_path``; None if none."""
        for path, own in self._candidates(sftp, hexdigest):
            try:
                attrs = sftp.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(attrs.st_mode or 0):
                continue  # a link or FIFO put there: never written through, never opened
            size = attrs.st_size or 0
            if not own and time.time() - (attrs.st_mtime or 0) < FOREIGN_IDLE_SECONDS:
                continue  # perhaps another process is still writing it
            if size < RESUME_MIN_BYTES:
                if own:  # too small to be worth reading back; another process's is left for gc
                    remove_quietly(sftp, path)
                continue
            try:
                sftp.rename(path, new_path)
            except OSError:  # FileNotFoundError: another writer claimed it first
                continue
            return Partial(new_path, size)
        return None

    def _candidates(self, sftp: SFTPClient, hexdigest: str) -> Iterator[tuple[str, bool]]:
        with self._lock:
            own = self._own.pop(hexdigest, None)
        if own is not None:
            yield own, True
        with self._lock:
            if self._foreign is None:
                self._foreign = _list_partials(sftp, self._tmp_dir)
            found = self._foreign.pop(hexdigest, [])
        for path in found:
            yield path, False


def _list_partials(sftp: SFTPClient, tmp_dir: str) -> dict[str, list[str]]:
    try:
        names = list_names(sftp, tmp_dir)
    except FileNotFoundError:
        return {}
    found: dict[str, list[str]] = {}
    for name in names:
        match = PARTIAL_NAME.fullmatch(name)
        if match:
            found.setdefault(match["hex"], []).append(f"{tmp_dir}/{name}")
    return found


def resume_upload(sftp: SFTPClient, partial: Partial, chunks: Iterable[bytes], read_size: int,
                  write_size: int) -> tuple[int, int]:
    """Continue ``partial`` with ``chunks`` (the whole content); return the bytes in all and the
    size the server reports.

    The bytes on the server are compared with the chunks first; writing starts at the first
    difference (or where the server's bytes end), and the file is cut there.
    """
    handle = sftp.open(partial.path, EXISTING_FILE)
    writer = PipelinedWriter(sftp, handle, write_size)
    try:
        offset, rest = _skip_matching_prefix(sftp, handle, partial.size, chunks, read_size)
        logger.info("resuming an upload: %d of %d bytes on the server match", offset, partial.size)
        if offset < partial.size:
            sftp.truncate(handle, offset)
    except BaseException as exc:
        writer.abort(exc)
        raise
    writer.offset = offset
    stored = writer.write_all(rest)
    # A new object's mtime is the time of its write (gc takes an old one for an abandoned blob,
    # see archive.gc); a partial that was already whole got no write, so its time is set here.
    sftp.touch(partial.path)
    return writer.offset, stored


def _skip_matching_prefix(sftp: SFTPClient, handle: bytes, size: int, chunks: Iterable[bytes],
                          read_size: int) -> tuple[int, Iterator[bytes]]:
    """Consume the chunks the server holds already; return where they stop matching and the rest."""
    raw = WindowedReader(sftp, handle, size, read_size, nullcontext)
    remote = io.BufferedReader(raw, buffer_size=1024 * 1024)
    offset = 0
    chunks = iter(chunks)
    for chunk in chunks:
        stored = remote.read(min(len(chunk), size - offset)) if offset < size else b""
        if stored == chunk:
            offset += len(chunk)
            continue
        keep = len(stored) if chunk[:len(stored)] == stored else 0
        raw.drain()
        return offset + keep, itertools.chain([chunk[keep:]], chunks)
    raw.drain()
    return offset, iter(())
