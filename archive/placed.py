"""What a pull placed in a folder: the marker ``.archive/pulled.json``, ``status`` and ``--exact``.

A pull into a folder writes, atomically and last, a small marker at the folder's root: the
release (name, version, record id), the archive it came from (its location, which never holds a
secret) and every file it placed with its blob, size and executable bit. Files that an earlier
pull placed and a later one did not remove are kept under ``earlier``. With it:

- :func:`status` tells whether the folder still matches its release: files modified (content or
  executable bit), missing, and extra. A clean check of a large folder costs a ``stat`` per
  file: unchanged files are known from the stat cache, never hashed again.
- :func:`leftovers` finds what ``--exact`` may remove: files an earlier pull placed that the new
  release lacks, and only those still as placed (a user's own file is never touched; an edited
  one only with ``force``).

The marker is read from a folder the user controls, so every path in it is checked like a
record's, and every removal stays inside the folder.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from .destination import Folders, Kind, find, is_unchanged, links_to_cache, make_folders
from .errors import ArchiveError, DestinationError, IntegrityError, InvalidInputError
from .hashing import BlobId
from .materialize import wanted_mode, write_file_atomically
from .record_codec import encode_files
from .records import FileEntry, Release, check_path, load_json

if TYPE_CHECKING:
    from .cache import BlobCache
    from .statcache import StatCache

MARKER_DIR = ".archive"
MARKER_FILE = f"{MARKER_DIR}/pulled.json"
MARKER_FORMAT = 1
MAX_MARKER_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Pulled:
    """The content of a marker: which release a folder was filled from, and what was placed."""

    name: str
    version: str
    record_id: str
    archive: str
    files: Mapping[str, FileEntry]
    earlier: Mapping[str, FileEntry] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Canonical JSON (keys sorted, compact, UTF-8), one line, as docs/format.md shows it."""
        return b"".join(self.chunks())

    def chunks(self) -> Iterator[bytes]:
        """:meth:`to_bytes` in pieces of at most :data:`_ENTRIES_PER_CHUNK` files, in order: the
        marker of 100,000 files is written without its whole text in memory at once.

        The file lists are written by the record's own encoder
        (:func:`~archive.record_codec.encode_files`), which gives the same text as ``json.dumps``
        of a dict per entry without building one: a third of the cost.
        """
        fields: list[tuple[str, object]] = [("format", MARKER_FORMAT), ("name", self.name), ("version", self.version),
                                            ("record", self.record_id), ("archive", self.archive),
                                            ("files", self.files), ("earlier", self.earlier)]
        opening = "{"
        for key, value in sorted(fields, key=lambda field: field[0]):
            if isinstance(value, Mapping):
                yield f'{opening}"{key}":'.encode("utf-8")
                yield from _encoded_entries(value)
            else:
                yield f'{opening}"{key}":{json.dumps(value, ensure_ascii=False)}'.encode("utf-8")
            opening = ","
        yield b"}\n"


#: Files per piece of the marker's text (:meth:`Pulled.chunks`).
_ENTRIES_PER_CHUNK = 4096


def _encoded_entries(entries: Mapping[str, FileEntry]) -> Iterator[bytes]:
    """The JSON object of ``entries`` (:func:`~archive.record_codec.encode_files`), in pieces."""
    items = sorted(entries.items())
    if not items:
        yield b"{}"
        return
    for start in range(0, len(items), _ENTRIES_PER_CHUNK):
        text = encode_files(dict(items[start:start + _ENTRIES_PER_CHUNK]))  # "{...}", sorted as items are
        yield (("{" if start == 0 else ",") + text[1:-1]).encode("utf-8")
    yield b"}"


def is_reserved(path: str) -> bool:
    """Whether a release path would stand where the marker lives (``.archive`` at the top)."""
    return path == MARKER_DIR or path.startswith(MARKER_DIR + "/")


def read_marker(root: Path) -> Pulled | None:
    """The marker of the folder ``root``, or None if it has none; :class:`IntegrityError` if unreadable."""
    path = root / MARKER_FILE
    try:
        if os.path.islink(path) or os.path.islink(root / MARKER_DIR):
            raise IntegrityError(f"{str(path)!r} is a symbolic link, not a marker written by archive")
        with open(path, "rb") as stream:
            data = stream.read(MAX_MARKER_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DestinationError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        obj = load_json(data, str(path), MAX_MARKER_BYTES)
        return Pulled(str(obj["name"]), str(obj["version"]), str(obj["record"]), str(obj["archive"]),
                      _entries(obj["files"]), _entries(obj.get("earlier", {})))
    except (KeyError, TypeError, ValueError, ArchiveError) as exc:
        raise IntegrityError(f"{str(path)!r} is not a valid marker of archive pull ({exc})") from None


def _entries(obj: dict) -> dict[str, FileEntry]:
    return {check_path(path): FileEntry(BlobId.parse(e["blob"]), int(e["size"]), executable=e.get("executable") is True)
            for path, e in obj.items()}


def write_marker(root: Path, release: Release, location: str, earlier: dict[str, FileEntry]) -> None:
    """Write the marker of a pull that has just succeeded, atomically."""
    pulled = Pulled(release.name, release.version, str(release.record_id), location, release.files,
                    {p: e for p, e in earlier.items() if p not in release.files})
    make_folders(root, MARKER_DIR, set())
    write_file_atomically(root / MARKER_DIR / "pulled.json", pulled.chunks(), wanted_mode(False))


@dataclass(frozen=True)
class Leftovers:
    """Files of an earlier pull that a new release lacks: those to remove, and those kept."""

    remove: list[str]
    kept: dict[str, FileEntry]


def leftovers(root: Path, previous: Pulled | None, release: Release, force: bool,
              stat_cache: "StatCache") -> Leftovers:
    """What ``--exact`` removes: files an earlier pull placed, absent from ``release``, still as
    placed (or edited, with ``force``). Never a folder, never a file no pull placed."""
    remove: list[str] = []
    kept: dict[str, FileEntry] = {}
    if previous is None:
        return Leftovers(remove, kept)
    folders = Folders(root)
    for path, entry in {**previous.earlier, **previous.files}.items():
        if path in release.files or is_reserved(path):
            continue
        found = find(folders, path)
        if found.kind is Kind.ABSENT:
            continue
        as_placed = found.kind is Kind.FILE and is_unchanged(found.target, found.info, entry, stat_cache)
        if as_placed or (force and found.kind in (Kind.FILE, Kind.LINK, Kind.SPECIAL)):
            remove.append(path)
        else:
            kept[path] = entry
    return Leftovers(remove, kept)


def remove_empty_folders(root: Path, paths: list[str]) -> None:
    """Remove the folders that removing ``paths`` left empty, up to (not including) ``root``."""
    for path in sorted(paths, key=lambda p: -p.count("/")):
        parts = path.split("/")[:-1]
        while parts:
            try:
                os.rmdir(root.joinpath(*parts))
            except OSError:
                break  # not empty, a link, or gone: stop climbing
            parts.pop()


@dataclass
class Status:
    """How a folder compares with the release it was pulled from."""

    pulled: Pulled
    modified: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.modified or self.missing or self.extra)


def status(folder: str | Path, cache: "BlobCache | None" = None) -> Status:
    """Compare ``folder`` with the release its last pull placed (see the module docstring).

    Raises
    ------
    InvalidInputError
        ``folder`` is not a folder, or no pull wrote a marker there.
    """
    if cache is None:
        from .cache import default_cache

        cache = default_cache()
    root = Path(os.path.realpath(folder))
    if not root.is_dir():
        raise InvalidInputError(f"{str(folder)!r} is not a folder")
    pulled = read_marker(root)
    if pulled is None:
        raise InvalidInputError(f"{str(folder)!r} was not filled by archive pull (it has no {MARKER_FILE})")
    report = Status(pulled)
    present = dict(walk_files(root))
    folders = Folders(root)
    for path, entry in pulled.files.items():
        info = present.pop(path, None)
        if info is None:
            report.missing.append(path)
        elif not _as_pulled(folders.target_of(path), info, entry, cache):
            report.modified.append(path)
    report.extra = sorted(present)
    report.modified.sort()
    report.missing.sort()
    return report


def _as_pulled(target: "str | Path", info: os.stat_result, entry: FileEntry, cache: "BlobCache") -> bool:
    """Whether ``target`` is as a pull places ``entry``: a file of its content and executable
    bit, or (``--link symlink``) a link to its intact cache file."""
    if stat.S_ISLNK(info.st_mode) and links_to_cache(target, entry, cache):
        source = cache.path_of(entry.blob)
        try:
            info = os.stat(source)
        except OSError:
            return False
        target = source
    if not stat.S_ISREG(info.st_mode) or bool(info.st_mode & stat.S_IXUSR) != entry.executable:
        return False
    return is_unchanged(target, info, entry, cache.stat_cache)


def walk_files(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every non-folder below ``root`` with its ``lstat``, iteratively (no recursion limit),
    without following links and without the top-level marker folder."""
    stack = [("", root)]
    while stack:
        rel, folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise DestinationError(f"cannot list {str(folder)!r}: {exc.strerror or exc}") from exc
        for entry in entries:
            path = f"{rel}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                if path != MARKER_DIR:
                    stack.append((path + "/", Path(entry.path)))
            else:
                yield path, entry.stat(follow_symlinks=False)
