"""Remembered hashes of unchanged files, so that nothing is hashed twice for nothing.

A small sqlite database in the cache folder maps a file's identity (device, inode, size,
mtime and ctime in nanoseconds) to the blob id its content hashed to, and the media type
detected from it (so a push of an unchanged folder needs neither the file nor the previous
release for it). A file whose identity is unchanged is not read again: pushing an unchanged
folder costs a ``stat`` per file, and materializing from the cache need not re-hash blobs
verified before. The files asked about are compared with the remembered ones inside sqlite
(a join with a temporary table), so 100,000 files cost one ``executemany`` and the matches.

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
import time
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional, Tuple, TypeVar, Union

from .hashing import BlobId

logger = logging.getLogger(__name__)
T = TypeVar("T")
#: Tries of the cache's setup that finds the database locked at once (see StatCache._connect).
SETUP_TRIES = 5
RACY_MARGIN_NS = 3_000_000_000
#: The table of remembered files. Was ``files`` (without ``media_type``) until issue 14; a
#: cache that has only the old table is copied over once (:func:`_migrate`), media types unknown.
TABLE = "files_v2"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER,
    mtime_ns INTEGER, ctime_ns INTEGER, blob TEXT, media_type TEXT)
"""
#: The files asked about by :meth:`StatCache.recall`, one row each, joined with the table in
#: sqlite: the identities are compared there, and only the rows that match come back.
_PROBE = """
CREATE TEMP TABLE IF NOT EXISTS probe (
    n INTEGER PRIMARY KEY, path TEXT, dev INTEGER, ino INTEGER, size INTEGER,
    mtime_ns INTEGER, ctime_ns INTEGER)
"""
_MATCHES = f"""
SELECT probe.n, {TABLE}.blob, {TABLE}.media_type FROM probe JOIN {TABLE} ON {TABLE}.path = probe.path
WHERE {TABLE}.dev = probe.dev AND {TABLE}.ino = probe.ino AND {TABLE}.size = probe.size
  AND {TABLE}.mtime_ns = probe.mtime_ns AND {TABLE}.ctime_ns = probe.ctime_ns
"""
#: The records published of whole scans: a digest of every file's path, location, identity and
#: mode (:func:`archive.reuse.scan_digest`) and the archive published to -> the release whose
#: record lists exactly those files, and where its ``files`` object lies in the record's bytes.
#: A re-push whose scan has the same digest reuses that record's files (see :mod:`archive.reuse`).
RECORDS_TABLE = "published_v1"
_RECORDS_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {RECORDS_TABLE} (
    digest TEXT, archive TEXT, name TEXT, version TEXT, record TEXT,
    files_start INTEGER, files_end INTEGER, PRIMARY KEY (digest, archive))
"""
#: The most scans remembered in :data:`RECORDS_TABLE`: the oldest are forgotten beyond it.
MAX_PUBLISHED = 1000
#: A remembered hash: the blob id, and the media type detected when it was hashed (None if unknown).
Known = Tuple[BlobId, Optional[str]]
#: What :meth:`StatCache.remember` takes for each file: its path, its stat and its blob id,
#: optionally followed by its media type.
Remembered = Union[Tuple[Any, Any, BlobId], Tuple[Any, Any, BlobId, Optional[str]]]


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
    """File identity -> blob id (and media type), in a sqlite file; safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._broken = False

    def lookup(self, path: Path, info: os.stat_result, with_ctime: bool = True) -> BlobId | None:
        """The remembered blob id of ``path`` if its identity is unchanged, else None."""
        return self.lookup_many([(path, info)], with_ctime)[0]

    def lookup_many(self, files: Iterable[tuple[str | os.PathLike[str], os.stat_result]],
                    with_ctime: bool = True) -> list[BlobId | None]:
        """:meth:`lookup` of many files at once, in their order."""
        files = list(files)
        known = self.recall(files, with_ctime)
        return [known[n][0] if n in known else None for n in range(len(files))]

    def recall(self, files: Iterable[tuple[str | os.PathLike[str], os.stat_result]],
               with_ctime: bool = True) -> dict[int, Known]:
        """The remembered hash and media type of each of ``files`` whose identity is unchanged,
        by its position in ``files``.

        The files go into a temporary table in one ``executemany`` and are joined with the
        remembered ones inside sqlite, so Python sees only the rows that match: at 100,000
        files, no query text per batch and no comparison per file in Python.
        """
        ctime_of: Callable[[Any], int] = (lambda info: info.st_ctime_ns) if with_ctime else (lambda info: _boot_number())
        rows = ((n, os.fsdecode(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, ctime_of(info))
                for n, (path, info) in enumerate(files))

        def query(db: sqlite3.Connection) -> dict[int, Known]:
            if db.execute(f"SELECT 1 FROM {TABLE} LIMIT 1").fetchone() is None:
                return {}  # remembers nothing (a new cache): no file need be asked about
            db.execute("DELETE FROM probe")
            db.executemany("INSERT INTO probe VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            try:
                return _known_rows(db.execute(_MATCHES))  # row by row: no list of every match
            finally:
                db.execute("DELETE FROM probe")

        return self._run(query, {}, commit=True)  # committed: no transaction is left open

    def remember(self, entries: Iterable[Remembered], hashed_at_ns: int | None, with_ctime: bool = True) -> None:
        """Remember the hashes of files that had settled before they were hashed at ``hashed_at_ns``
        (None: files only this program writes, whole and read-only, which cannot be racy).

        Each entry is ``(path, stat, blob)`` or ``(path, stat, blob, media_type)``.
        """
        rows = [(os.fsdecode(entry[0]), *identity(entry[1], with_ctime), str(entry[2]),
                 entry[3] if len(entry) > 3 else None)
                for entry in entries if hashed_at_ns is None or is_settled(entry[1], hashed_at_ns)]
        if rows:
            self._run(lambda db: db.executemany(f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                                rows), None, commit=True)

    def published(self, digest: str, archive: str) -> "Published | None":
        """The release remembered for a scan of ``digest`` published to ``archive``, if any."""
        def query(db: sqlite3.Connection) -> Published | None:
            row = db.execute(f"SELECT name, version, record, files_start, files_end FROM {RECORDS_TABLE}"
                             " WHERE digest = ? AND archive = ?", (digest, archive)).fetchone()
            return None if row is None else _published_row(row)

        return self._run(query, None)

    def remember_published(self, digest: str, archive: str, published: "Published") -> None:
        """Remember that a scan of ``digest`` was published to ``archive`` as ``published``.

        Only for scans whose every file had settled before it was read (the rule of
        :meth:`remember`): the caller sees to it."""
        def store(db: sqlite3.Connection) -> None:
            db.execute(f"INSERT OR REPLACE INTO {RECORDS_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (digest, archive, published.name, published.version, str(published.record),
                        published.files_start, published.files_end))
            db.execute(f"DELETE FROM {RECORDS_TABLE} WHERE rowid <= (SELECT max(rowid) FROM {RECORDS_TABLE}) - ?",
                       (MAX_PUBLISHED,))

        self._run(store, None, commit=True)

    def forget(self, path: Path) -> None:
        self._run(lambda db: db.execute(f"DELETE FROM {TABLE} WHERE path = ?", (os.fsdecode(path),)), None,
                  commit=True)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _run(self, action: Callable[[sqlite3.Connection], T], otherwise: T, commit: bool = False) -> T:
        """``action(db)`` under the lock (in a transaction if ``commit``); ``otherwise`` when the
        cache is unusable or fails, which makes it act empty from then on."""
        with self._lock:
            db = self._connect()
            if db is None:
                return otherwise
            try:
                if not commit:
                    return action(db)
                with db:
                    return action(db)
            except (sqlite3.Error, OverflowError) as exc:  # OverflowError: a number over 64 bits
                self._give_up(exc)
                return otherwise

    def _connect(self) -> sqlite3.Connection | None:
        """The open database, set up on first use (None once it proved unusable).

        Two processes setting up a new cache at once (two pushes started together) can find it
        locked without waiting: sqlite answers at once, not after its busy timeout, when
        switching the journal mode or turning a read into a write. The setup is then tried
        again after a pause, a few times, before the cache is given up.
        """
        for attempt in range(1, SETUP_TRIES + 1):
            if self._db is not None or self._broken:
                break
            db = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # a lost entry only costs a re-hash
                db.execute("PRAGMA temp_store=MEMORY")  # the probe table never touches the disk
                _migrate(db)
                db.execute(_PROBE)
                with db:
                    db.execute(_RECORDS_SCHEMA)
                self._db = db
            except (sqlite3.Error, OSError) as exc:
                if db is not None:
                    db.close()
                if attempt < SETUP_TRIES and isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                    time.sleep(0.05 * attempt)
                    continue
                self._give_up(exc)
        return self._db

    def _give_up(self, exc: BaseException) -> None:
        """Act empty from now on: the cache only ever saves time."""
        logger.warning("stat cache %s unusable (%s); hashing everything", self.path, exc)
        self._broken = True
        self._db = None


class Published(NamedTuple):
    """A release remembered of a scan: its pointer, its record, and where in the record's bytes
    its ``files`` object lies (``files_start`` to ``files_end``, the braces included)."""

    name: str
    version: str
    record: BlobId
    files_start: int
    files_end: int


def _published_row(row: tuple[Any, ...]) -> Published | None:
    """A row of :data:`RECORDS_TABLE` as a :class:`Published`; None when it is not one (a
    damaged cache only costs the reuse)."""
    name, version, record, start, end = row
    try:
        if not (isinstance(name, str) and isinstance(version, str) and type(start) is int and type(end) is int
                and 0 < start < end):
            return None
        return Published(name, version, BlobId.parse(record), start, end)
    except (ValueError, TypeError):
        return None


def _known_rows(rows: Iterable[tuple[int, str, str | None]]) -> dict[int, Known]:
    """The matches of :data:`_MATCHES` by position, one string per distinct media type (not one
    per file: 73 bytes each); a row whose blob id is not one is skipped (it only costs a hash)."""
    known: dict[int, Known] = {}
    media_types: dict[str, str] = {}
    for n, blob, media_type in rows:
        try:
            known[n] = (BlobId.parse(blob), media_types.setdefault(media_type, media_type) if media_type else None)
        except (ValueError, TypeError):
            continue
    return known


def _migrate(db: sqlite3.Connection) -> None:
    """Create the table; the first time, copy the rows of the table before it (``files``,
    without media types), so an upgrade costs no re-hash. The old table stays for older clients."""
    with db:
        new = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone() is None
        db.execute(_SCHEMA)
        old = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'files'").fetchone()
        if new and old:
            db.execute(f"INSERT OR IGNORE INTO {TABLE} SELECT path, dev, ino, size, mtime_ns, ctime_ns, blob, NULL"
                       " FROM files")
