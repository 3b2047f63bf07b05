"""What a destination folder holds before a download, found whole before anything is written.

Every release path is compared with the folder: its file (absent, the release's content, other
content, a link, a special file, a folder) and each of its parent folders (absent, a folder, or
something else in the way). Every conflict of every kind is collected first, so a download that
cannot proceed is refused in one error naming them all, with the folder untouched. Each folder
is looked at once (``lstat``) however many files it holds, and nothing under an absent folder
is looked at at all, so planning a fresh download costs almost nothing.

A symbolic link to a folder inside the destination is followed; one that leads outside is
refused (:class:`InvalidPathError`): nothing is ever written outside the destination.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DestinationConflictError, DestinationError, InvalidPathError
from .hashing import BlobId, hash_file
from .records import FileEntry

if TYPE_CHECKING:
    from .cache import BlobCache
    from .statcache import StatCache


class Kind(Enum):
    """What a release path finds in the destination."""

    ABSENT = "absent"
    FILE = "a regular file"
    LINK = "a symbolic link"
    FOLDER = "a folder where the release has a file"
    SPECIAL = "a special file"
    IN_THE_WAY = "a file where the release needs a folder"


def in_the_way(path: str) -> "Conflict":
    """The conflict of a non-folder standing where the release needs the folder ``path``."""
    return Conflict(path, Kind.IN_THE_WAY.value, forceable=True)


@dataclass(frozen=True, slots=True)
class Found:
    """A release path as found: its kind, and the ``lstat`` of what is there (None if absent)."""

    path: str
    target: str
    kind: Kind
    info: os.stat_result | None = None


@dataclass(frozen=True)
class Conflict:
    """Something in the destination a download would have to replace or cannot replace."""

    path: str
    reason: str
    forceable: bool


_FOLDER, _ABSENT, _BLOCKED = "folder", "absent", "blocked"


class Folders:
    """The folders of one destination as found, memoized: each is looked at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prefix = os.path.join(str(root), "")
        self._state: dict[str, str] = {"": _FOLDER if os.path.isdir(root) else _ABSENT}
        #: Parent paths with something other than a folder in the way (release-relative).
        self.in_the_way: dict[str, os.stat_result] = {}

    def ancestors_clear(self, path: str) -> bool:
        """Whether every parent folder of ``path`` exists (False: absent or something in the way).

        Walks down iteratively: a 1,200-deep path must not recurse 1,200 times.
        """
        parts = path.split("/")[:-1]
        above = self._state[""]
        for depth in range(1, len(parts) + 1):
            if above != _FOLDER:
                return False
            folder = "/".join(parts[:depth])
            known = self._state.get(folder)
            if known is None:
                known = self._state[folder] = self._look(folder)
            above = known
        return above == _FOLDER

    def target_of(self, path: str) -> str:
        """The file of the release path ``path`` in the destination, as a string: made once per
        file, where a :class:`~pathlib.Path` costs some microseconds more."""
        return self._prefix + (path if os.sep == "/" else path.replace("/", os.sep))

    def _look(self, folder: str) -> str:
        path = self.root.joinpath(*folder.split("/"))
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return _ABSENT
        except OSError as exc:
            raise DestinationError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
        if stat.S_ISDIR(info.st_mode):
            return _FOLDER
        if stat.S_ISLNK(info.st_mode):
            check_inside(self.root, path, folder)
            if os.path.isdir(path):
                return _FOLDER
        self.in_the_way[folder] = info
        return _BLOCKED


def check_inside(root: Path, path: Path, shown: str) -> None:
    """Refuse ``path`` if a symbolic link would take it outside ``root``."""
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise InvalidPathError(f"{shown!r} would be written outside {str(root)!r} (through a symbolic link)")


def find(folders: Folders, path: str) -> Found:
    """What ``path`` finds in the destination (its parents already checked by ``folders``)."""
    target = folders.target_of(path)
    if not folders.ancestors_clear(path):
        return Found(path, target, Kind.ABSENT)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return Found(path, target, Kind.ABSENT)
    except OSError as exc:
        raise DestinationError(f"cannot read {str(target)!r}: {exc.strerror or exc}") from exc
    mode = info.st_mode
    kind = (Kind.FILE if stat.S_ISREG(mode) else Kind.LINK if stat.S_ISLNK(mode)
            else Kind.FOLDER if stat.S_ISDIR(mode) else Kind.SPECIAL)
    return Found(path, target, kind, info)


def conflict_of(found: Found) -> Conflict:
    """The conflict a path in the way makes (a file of other content is reported by the caller)."""
    return Conflict(found.path, found.kind.value, forceable=found.kind is not Kind.FOLDER)


def refuse(conflicts: list[Conflict], dest: Path, release: str, force: bool) -> None:
    """Raise one :class:`DestinationConflictError` naming every conflict ``force`` does not settle."""
    blocking = [c for c in conflicts if not (force and c.forceable)]
    if not blocking:
        return
    shown = ", ".join(f"{c.path} ({c.reason})" for c in blocking[:5])
    more = f" and {len(blocking) - 5} more" if len(blocking) > 5 else ""
    hint = ("use --force to replace them" if all(c.forceable for c in blocking)
            else "--force replaces files, never folders: move those away first")
    raise DestinationConflictError(f"{len(blocking)} path(s) in {str(dest)!r} conflict with {release}:"
                                   f" {shown}{more} ({hint})", [c.path for c in blocking])


def remove_files(root: Path, paths: list[str]) -> None:
    """Remove the files (or links) at ``paths`` in ``root``, never through a link leading outside
    it; one already gone is fine. Used for non-folders standing where folders must go (``force``
    allowed it) and for what ``--exact`` removes."""
    checked: set[Path] = set()  # each folder once, not once per file (a realpath is a stat per level)
    for path in paths:
        target = root.joinpath(*path.split("/"))
        if target.parent not in checked:
            check_inside(root, target.parent, path)
            checked.add(target.parent)
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise DestinationError(f"cannot remove {str(target)!r}: {exc.strerror or exc}") from exc


def make_folders(root: Path, folder: str, made: set[str]) -> None:
    """Create ``root/folder`` and its parents, iteratively (pathlib and ``os.makedirs`` recurse
    once per level), each once per download, refusing a link that leads outside ``root``."""
    if not folder or folder in made:
        return
    parts = folder.split("/")
    start = len(parts)
    while start > 0 and "/".join(parts[:start]) not in made:
        start -= 1
    for depth in range(start + 1, len(parts) + 1):
        rel = "/".join(parts[:depth])
        path = root.joinpath(*parts[:depth])
        try:
            os.mkdir(path)
        except FileExistsError:
            if os.path.islink(path):
                check_inside(root, path, rel)
            if not os.path.isdir(path):
                raise DestinationError(f"{str(path)!r} exists and is not a folder") from None
        made.add(rel)


def entry_mode_ok(info: os.stat_result, entry: FileEntry) -> bool:
    """Whether a file's executable bit is what the release says (owner's bit decides)."""
    return bool(info.st_mode & stat.S_IXUSR) == entry.executable


def is_unchanged(target: "str | Path", info: os.stat_result, entry: FileEntry, stat_cache: "StatCache") -> bool:
    """Whether the regular file ``target`` still holds ``entry``'s content (stat cache first)."""
    if info.st_size != entry.size:
        return False
    if stat_cache.lookup(target, info) == entry.blob:
        return True
    started = time.time_ns()  # before hashing: a change made while it reads is never remembered
    try:
        same = hash_file(target)[0] == entry.blob
    except OSError as exc:
        raise DestinationError(f"cannot read {str(target)!r}: {exc.strerror or exc}") from exc
    if same:
        stat_cache.remember([(target, info, entry.blob)], started)
    return same


def compare(found: Found, entry: FileEntry, cache: "BlobCache", link: str) -> str:
    """``same``, ``mode`` (same content, executable bit to fix), ``ours`` (a link into the cache
    to re-place without asking) or ``conflict``."""
    if found.kind is Kind.LINK:
        if not links_to_cache(found.target, entry, cache):
            return "conflict"
        verified = cache_file_verified(cache, entry.blob)
        return "same" if link == "symlink" and verified is not None and not entry.executable else "ours"
    if found.kind is not Kind.FILE:
        return "conflict"
    info = found.info
    shared = cache_file_verified(cache, entry.blob) if info.st_nlink > 1 else None
    if shared is not None and (shared.st_dev, shared.st_ino) == (info.st_dev, info.st_ino):
        return "ours" if entry.executable else "same"  # the cache's own file: never chmod it
    try:
        same = is_unchanged(found.target, info, entry, cache.stat_cache)
    except OSError:
        return "conflict"
    if not same:
        return "conflict"
    return "same" if entry_mode_ok(info, entry) else "mode"


def as_placed_before(found: Found, before: FileEntry | None, cache: "BlobCache") -> bool:
    """Whether a file is still what an earlier pull placed there."""
    return (before is not None and found.kind is Kind.FILE and stat.S_ISREG(found.info.st_mode)
            and is_unchanged(found.target, found.info, before, cache.stat_cache))


def links_to_cache(target: "str | Path", entry: FileEntry, cache: "BlobCache") -> bool:
    try:
        return os.readlink(target) == str(cache.path_of(entry.blob))
    except OSError:
        return False


def cache_file_verified(cache: "BlobCache", blob: BlobId) -> os.stat_result | None:
    """The ``stat`` of the cache file of ``blob`` if it is there and verified since the last boot."""
    path = cache.path_of(blob)
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info if cache.stat_cache.lookup(path, info, with_ctime=False) == blob else None
