"""Remembered hashes of unchanged files, so that nothing is hashed twice for nothing.

A small sqlite database in the cache folder maps a file's identity (device, inode, size,
mtime and ctime in nanoseconds) to the blob id its content hashed to. A file whose identity
is unchanged is not read again: pushing an unchanged folder costs a ``stat`` per file, and
materializing from the cache need not re-hash blobs verified before.

It must never give a wrong hash. Two rules see to it:

- The "racily clean" rule (as git has it): an entry is written only for a file whose mtime is
  older than :data:`RACY_MARGIN` at the time it was hashed. A later change then always gives a
  different mtime, even on filesystems with coarse timestamps (FAT: 2 s).
- ctime is part of the identity where it can be (the owner cannot set it), so tools that
  restore mtimes (``cp -p``, ``rsync -t``) do not fool it.

A wrong or unreadable database can only cost speed: every error makes it act empty, and
blobs are still verified wherever they are written.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

from .hashing import BlobId

logger = logging.getLogger(__name__)
RACY_MARGIN_NS = 3_000_000_000
#: Paths asked for in one query by :meth:`StatCache.lookup_many` (under sqlite's oldest
#: limit of 999 parameters).
LOOKUP_BATCH = 500
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER,
    mtime_ns INTEGER, ctime_ns INTEGER, blob TEXT)
"""


def identity(info: os.stat_result, with_ctime: bool = True) -> tuple[int, int, int, int, int]:
    """What must not change for a remembered hash to hold.

    Without ctime (for files whose ctime moves for harmless reasons, like hard links to the
    cache's blobs), the current boot takes its place, so such an entry holds until a reboot.
    """
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
            info.st_ctime_ns if with_ctime else _boot_number())


def knows_boots() -> bool:
    """True where entries without ctime expire at reboot (Linux); elsewhere they do not."""
    return _boot_number() != -1


@functools.lru_cache(maxsize=1)
def _boot_number() -> int:
    """A number that changes with every boot (Linux's boot id), or -1 where there is none."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as stream:
            return int(stream.read().strip().replace("-", "")[:15], 16)
    except (OSError, ValueError):
        return -1


def is_settled(info: os.stat_result, hashed_at_ns: int) -> bool:
    """True when the file was last changed long enough before it was hashed to be remembered."""
    return hashed_at_ns - info.st_mtime_ns > RACY_MARGIN_NS


class StatCache:
    """File identity -> blob id, in a sqlite file; safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._broken = False

    def lookup(self, path: Path, info: os.stat_result, with_ctime: bool = True) -> BlobId | None:
        """The remembered blob id of ``path`` if its identity is unchanged, else None."""
        row = self._query("SELECT dev, ino, size, mtime_ns, ctime_ns, blob FROM files WHERE path = ?",
                          (os.fsdecode(path),))
        return self._blob_of(row, info, with_ctime)

    def lookup_many(self, files: Iterable[tuple[str | os.PathLike[str], os.stat_result]],
                    with_ctime: bool = True) -> list[BlobId | None]:
        """:meth:`lookup` of many files at once, in their order: one query per
        :data:`LOOKUP_BATCH` paths instead of one per file (100,000 files: 200 queries)."""
        files = [(os.fsdecode(path), info) for path, info in files]
        rows: dict[str, tuple] = {}
        for start in range(0, len(files), LOOKUP_BATCH):
            names = list({name for name, _ in files[start:start + LOOKUP_BATCH]})
            marks = ",".join("?" * len(names))
            found = self._query_all(f"SELECT path, dev, ino, size, mtime_ns, ctime_ns, blob FROM files"
                                    f" WHERE path IN ({marks})", tuple(names))
            if found is None:  # the cache is unusable: it knows nothing
                return [None] * len(files)
            rows.update((row[0], row[1:]) for row in found)
        return [self._blob_of(rows.get(name), info, with_ctime) for name, info in files]

    @staticmethod
    def _blob_of(row: tuple | None, info: os.stat_result, with_ctime: bool) -> BlobId | None:
        """The blob of a row whose identity matches ``info``, else None."""
        if row is None or tuple(row[:5]) != identity(info, with_ctime):
            return None
        try:
            return BlobId.parse(row[5])
        except ValueError:
            return None

    def remember(self, entries: list[tuple[Path, os.stat_result, BlobId]], hashed_at_ns: int | None,
                 with_ctime: bool = True) -> None:
        """Remember the hashes of files that had settled before they were hashed at ``hashed_at_ns``
        (None: files only this program writes, whole and read-only, which cannot be racy)."""
        rows = [(os.fsdecode(path), *identity(info, with_ctime), str(blob)) for path, info, blob in entries
                if hashed_at_ns is None or is_settled(info, hashed_at_ns)]
        if rows:
            self._execute_many("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def forget(self, path: Path) -> None:
        self._execute_many("DELETE FROM files WHERE path = ?", [(os.fsdecode(path),)])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _query(self, sql: str, args: tuple) -> tuple | None:
        with self._lock:
            db = self._connect()
            if db is None:
                return None
            try:
                return db.execute(sql, args).fetchone()
            except sqlite3.Error as exc:
                return self._give_up(exc)

    def _query_all(self, sql: str, args: tuple) -> list[tuple] | None:
        with self._lock:
            db = self._connect()
            if db is None:
                return None
            try:
                return db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                return self._give_up(exc)

    def _execute_many(self, sql: str, rows: list[tuple]) -> None:
        with self._lock:
            db = self._connect()
            if db is None:
                return
            try:
                with db:
                    db.executemany(sql, rows)
            except sqlite3.Error as exc:
                self._give_up(exc)

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None and not self._broken:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # a lost entry only costs a re-hash
                db.execute(_SCHEMA)
                self._db = db
            except (sqlite3.Error, OSError) as exc:
                self._give_up(exc)
        return self._db

    def _give_up(self, exc: BaseException) -> None:
        """Act empty from now on: the cache only ever saves time."""
        logger.warning("stat cache %s unusable (%s); hashing everything", self.path, exc)
        self._broken = True
        self._db = None
        return None
