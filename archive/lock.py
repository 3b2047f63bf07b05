"""``archive.lock``: the exact releases a project uses, pinned by record id.

A lock file names, per release name, the version a range resolved to, the record id of that
release and the archive it came from. :func:`sync` materializes exactly those releases and
refuses one whose record id differs from the pin, so data used today comes back byte for byte
in five years, from the same archive or from any mirror of it (record ids do not depend on
where a release is stored). A yanked release is still served to a lock: a lock names an exact
version, never a range.

The file is TOML (read with :mod:`tomllib`, or ``tomli`` before Python 3.11), written here by
hand: it holds only strings and integers, so no writer library is needed::

    # archive.lock: written by `archive lock`; `archive sync` materializes exactly these.
    lock-version = 1

    [[release]]
    name = "calib"
    range = "^1"
    version = "1.2.3"
    record = "sha256:..."
    archive = "/srv/archive"
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from . import tomltext
from .errors import IntegrityError, InvalidInputError
from .hashing import BlobId
from .records import check_name
from .versions import check_release_version

if TYPE_CHECKING:
    from .interface import ArchiveInterface
    from .records import Release

logger = logging.getLogger(__name__)
LOCK_FILE = "archive.lock"
LOCK_VERSION = 1
_HEADER = "# archive.lock: written by `archive lock`; `archive sync` materializes exactly these releases.\n"


@dataclass(frozen=True)
class LockEntry:
    """One pinned release: the range asked for, and what it resolved to."""

    name: str
    range: str
    version: str
    record: BlobId
    archive: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "range": self.range, "version": self.version, "record": str(self.record),
                "archive": self.archive}


@dataclass(frozen=True)
class Lock:
    """The releases of a lock file, one per name, in the order written."""

    entries: tuple[LockEntry, ...]

    def to_toml(self) -> str:
        """The text of the lock file (stable: the same pins give the same bytes)."""
        blocks = [f"{_HEADER}lock-version = {LOCK_VERSION}\n"]
        for entry in self.entries:
            lines = "".join(f"{key} = {tomltext.string(value)}\n" for key, value in entry.to_json().items())
            blocks.append(f"[[release]]\n{lines}")
        return "\n".join(blocks)


def split_spec(spec: str) -> tuple[str, str]:
    """``NAME@RANGE`` -> (NAME, RANGE); a bare NAME means every version (``*``)."""
    name, sep, range_ = spec.partition("@")
    return check_name(name), (range_.strip() or "*") if sep else "*"


def make_lock(arc: "ArchiveInterface", specs: Iterable[str], *, include_prerelease: bool = False) -> Lock:
    """Resolve each ``NAME[@RANGE]`` in ``arc`` (skipping yanked versions, as ranges do) and pin it.

    Raises
    ------
    InvalidInputError
        A spec is malformed, or names a release twice.
    NotFoundError
        A name has no release, or none that matches.
    """
    entries: dict[str, LockEntry] = {}
    for spec in specs:
        name, range_ = split_spec(spec)
        if name in entries:
            raise InvalidInputError(f"{name!r} is named twice; a lock pins one version per name")
        release = arc.resolve(name, range_, include_prerelease=include_prerelease)
        entries[name] = LockEntry(name, range_, release.version, release.record_id, arc.location)
    return Lock(tuple(entries.values()))


def write_lock(lock: Lock, path: str | Path = LOCK_FILE) -> Path:
    """Write ``lock`` to ``path`` atomically (a reader never sees half a lock); return the path."""
    from .materialize import write_file_atomically

    path = Path(path)
    write_file_atomically(path, [lock.to_toml().encode("utf-8")], 0o644)
    return path


def load_lock(path: str | Path = LOCK_FILE) -> Lock:
    """Read and check the lock file at ``path``.

    Raises
    ------
    InvalidInputError
        The file is missing, is not TOML, or an entry lacks a field or has a malformed one.
    """
    path = Path(path)
    try:
        document = tomltext.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"cannot read lock file {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path} is not a valid lock file: {exc}") from None
    if document.get("lock-version") != LOCK_VERSION:
        raise InvalidInputError(f"{path}: lock-version {document.get('lock-version')!r}, this tool reads {LOCK_VERSION}")
    releases = document.get("release", [])
    if not isinstance(releases, list):
        raise InvalidInputError(f"{path}: 'release' must be an array of tables")
    return Lock(tuple(_entry(item, f"{path}: release {number}") for number, item in enumerate(releases, 1)))


def _entry(item: object, what: str) -> LockEntry:
    fields = ("name", "range", "version", "record", "archive")
    if not isinstance(item, dict) or not all(isinstance(item.get(key), str) for key in fields):
        raise InvalidInputError(f"{what}: needs the strings {', '.join(fields)}")
    try:
        record = BlobId.parse(item["record"])
    except ValueError:
        raise InvalidInputError(f"{what}: record {item['record']!r} is not a record id (sha256:<hex>)") from None
    return LockEntry(check_name(item["name"]), item["range"], check_release_version(item["version"]), record,
                     item["archive"])


def check_pin(arc: "ArchiveInterface", entry: LockEntry) -> "Release":
    """The release ``entry`` pins, read from ``arc``; :class:`IntegrityError` unless its record
    id is the pinned one (the lock or the archive was altered, or this is another archive)."""
    release = arc.get_release(entry.name, entry.version)
    if release.record_id != entry.record:
        raise IntegrityError(f"{entry.name} {entry.version} in {arc.location} has record {release.record_id.short},"
                             f" but the lock pins {entry.record.short}: refusing it")
    return release


def sync(lock: Lock, arc: "ArchiveInterface | None" = None, dest: str | Path | None = None, *,
         jobs: int | None = None, progress: bool | None = None) -> dict[str, Path]:
    """Materialize exactly the releases of ``lock``; return the folder of each name.

    Every pin is checked before any file is written, so a lock with one bad pin changes
    nothing. ``arc`` serves every entry (a mirror, say); without it each entry comes from the
    archive it names. ``dest`` holds one folder per name (``dest/NAME``); without it each
    release is a read-only folder in the cache.

    Raises
    ------
    IntegrityError
        A release's record id differs from its pin.
    """
    from .download import download
    from .layout import name_folder
    from .locations import get_interface

    opened: dict[str, "ArchiveInterface"] = {}
    try:
        plan = []
        for entry in lock.entries:
            source = arc if arc is not None else opened.get(entry.archive)
            if source is None:
                source = opened[entry.archive] = get_interface(entry.archive)
            plan.append((entry, source, check_pin(source, entry)))
        return {entry.name: download(source, release, None if dest is None else Path(dest) / name_folder(entry.name),
                                     jobs=jobs, progress=progress)
                for entry, source, release in plan}
    finally:
        for source in opened.values():
            source.close()
