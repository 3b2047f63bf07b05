"""What a publish reads: the regular files of a folder, and every reason it cannot be published.

The scan walks the folder iteratively (a folder thousands of levels deep is just a longer
stack, never a deeper Python recursion), in one pass, and collects *every* problem it meets
instead of stopping at the first: broken links, links leaving the folder, link loops, special
files, unreadable files and folders, names that are not valid UTF-8 or hold control
characters, and names that would clash on another system (case, Unicode normalization, a file
where a folder is needed). They are raised together as one :class:`FolderProblemsError`, so a
user fixes a folder in one round instead of one error per run.

What is left out, and never stat'ed beyond what matching needs (an excluded folder is not
entered):

- a top-level ``.archive`` (the marker folder ``archive pull`` writes into a destination), so
  republishing a pulled folder never publishes the marker;
- paths matched by ``--exclude`` patterns or by the folder's ``.archiveignore`` file, both in
  gitignore syntax (matched by the ``pathspec`` library). The ``.archiveignore`` file itself is
  published, as git publishes ``.gitignore``, unless a pattern excludes it.

A file found is recorded with its path, where it is, its stat (the stat cache and the check
that a file did not change while read both need it) and its executable bit.

The stats of regular files, most of a large scan's time, are taken after their folder's
listing; past the first few thousand files a helper process takes part of them
(:mod:`archive.scan_helper`). Its results are used only in the form it would give them; all it
does not answer is stated here, so it changes how long a scan takes and never what it finds.
"""

from __future__ import annotations

import errno
import logging
import operator
import os
import stat
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from .errors import FolderProblemsError, InvalidInputError
from .media import media_type_of_file
from .record_codec import gc_paused, paths_are_fine
from .records import MAX_RECORD_BYTES, FileEntry, path_problems
from .scan_helper import MIN_FILES, StatHelper

if TYPE_CHECKING:
    import pathspec

logger = logging.getLogger(__name__)
#: The top-level name a publish always leaves out: the marker folder of a pulled destination.
RESERVED_NAME = ".archive"
#: The file at the folder's root whose gitignore patterns leave paths out of a publish.
IGNORE_FILE = ".archiveignore"
#: More files than a record can list (the smallest file entry takes 95 of its bytes): the
#: scan stops there, so links to folders that multiply paths cannot make it run for hours.
MAX_FILES = MAX_RECORD_BYTES // 95
#: Regular files listed and not yet stated, at most (their entries are kept until then).
DEFERRED_FILES = 131072
#: How many problems the one-line message names before "and N more".
SHOWN_PROBLEMS = 3
_EUID = os.geteuid() if hasattr(os, "geteuid") else -1
_NAME_OF = operator.attrgetter("name")  # a listing's sort key, without a Python call per entry
_PATH_OF = operator.attrgetter("path")


class SourceFile(NamedTuple):
    """A regular file found in the folder: its release path, where it is, and its stat.

    The scan gives ``location`` as a plain string (a ``Path`` per file of a million would cost
    hundreds of bytes and microseconds each) and ``info`` as a :class:`FileStat`; callers may
    pass any path-like value and a full ``os.stat_result``. A named tuple, so the scan makes
    each by the tuple's C constructor (about 0.3 us less per file than a dataclass).
    """

    path: str
    location: str | os.PathLike[str]
    info: os.stat_result | FileStat

    @property
    def size(self) -> int:
        return self.info.st_size

    @property
    def executable(self) -> bool:
        """True when its owner may execute it: the one mode bit a release keeps, as git does."""
        return bool(self.info.st_mode & stat.S_IXUSR)


class FileStat(NamedTuple):
    """What a publish needs of a file's stat, under the names of ``os.stat_result``: the stat
    cache's identity, the size, the mode bits and the owner. About 250 bytes against 600 for
    a full stat result, which a scan of a million files keeps for each."""

    st_mode: int
    st_size: int
    st_dev: int
    st_ino: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_uid: int

    @classmethod
    def of(cls, info: os.stat_result) -> "FileStat":
        """The parts of ``info``; a mode, size, device or owner met before is the same int object
        (each stat makes its own: 32 bytes apiece, 10 MiB over 100,000 files of one size)."""
        share = _SHARED_INTS.setdefault if len(_SHARED_INTS) < _SHARED_MAX else _SHARED_INTS.get
        mode, size, dev, uid = info.st_mode, info.st_size, info.st_dev, info.st_uid
        return _new_tuple(cls, (share(mode, mode), share(size, size), share(dev, dev), info.st_ino,
                                info.st_mtime_ns, info.st_ctime_ns, share(uid, uid)))


#: One int object per value among the few that many files share (see :meth:`FileStat.of`).
_SHARED_INTS: dict[int, int] = {}
#: :data:`_SHARED_INTS` stops growing here (a folder of files of a million sizes needs none).
_SHARED_MAX = 4096
#: ``st_mode & _PLAIN_MASK == _PLAIN_OWN``: a regular file its owner may read.
_PLAIN_MASK = stat.S_IFMT(0o177777) | stat.S_IRUSR
_PLAIN_OWN = stat.S_IFREG | stat.S_IRUSR
_FOLDER_FLAGS = getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_new_tuple = tuple.__new__  # a named tuple made by its C constructor, not its Python __new__


class _Folder(NamedTuple):
    """A folder waiting to be listed: where it is, its release path prefix, its ancestors."""

    location: str
    prefix: str
    ancestors: "_Chain"


class _Chain(NamedTuple):
    """The (device, inode) of a folder and its parent's chain: the way up, for loop checks."""

    identity: tuple[int, int]
    parent: "_Chain | None"


def scan_folder(folder: Path, exclude: Sequence[str] = ()) -> list[SourceFile]:
    """Every regular file below ``folder`` that is not left out, sorted by release path.

    Symbolic links are followed when they stay inside the folder (the file they point to is
    published) and refused when they point outside it, so a publish never picks up files its
    author did not mean to share. Special files (FIFOs, sockets, devices) are refused.

    Parameters
    ----------
    folder
        The folder to publish.
    exclude
        Gitignore patterns of paths to leave out, added to those of ``.archiveignore``.

    Returns
    -------
    list[SourceFile]
        The files to publish, sorted by release path.

    Raises
    ------
    FolderProblemsError
        Listing every problem found, when there is any.
    InvalidInputError
        When ``folder`` is missing, not a folder, has no file, or a pattern is invalid.
    """
    if not folder.exists():
        raise InvalidInputError(f"folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise InvalidInputError(f"{str(folder)!r} is not a folder")
    root = os.path.realpath(folder)
    with gc_paused():  # a million found files make no cycles for the collector to find
        files, problems = _walk(root, (exclude,) if isinstance(exclude, str) else exclude)
    files.sort(key=_PATH_OF)
    paths = [f.path for f in files]
    if not paths_are_fine(paths):
        problems += path_problems(paths)
    if problems:
        for problem in problems:  # all of them at -v; the error names the first few
            logger.info("cannot publish: %s", problem)
        raise FolderProblemsError(_summary(str(folder), problems), str(folder), problems)
    if not files:
        raise InvalidInputError(f"folder {str(folder)!r} has no files to publish")
    return files


def with_modes(entries: Mapping[str, FileEntry], sources: Iterable[SourceFile],
               previous: Callable[[], Mapping[str, FileEntry]] = dict) -> dict[str, FileEntry]:
    """``entries`` with the executable bit and the media type of each source file recorded.

    Entries hashed just now carry their media type already (detected from the read that
    hashed them). One the stat cache spared from hashing takes it from the entry of the same
    path and blob in ``previous()`` (an earlier release, read only if needed), and failing
    that from one short read of the file's head (:mod:`archive.media`).
    """
    marked = dict(entries)
    for source in sources:
        entry = marked[source.path]
        media_type = entry.media_type or _known_media_type(previous(), source.path, entry)
        if media_type is None:
            try:
                media_type = media_type_of_file(os.fspath(source.location), source.path)
            except OSError as exc:
                raise InvalidInputError(f"cannot read {source.path!r}: {exc.strerror or exc}") from None
        if source.executable != entry.executable or media_type != entry.media_type:
            marked[source.path] = FileEntry(entry.blob, entry.size, entry.extra, source.executable, media_type)
    return marked


def _known_media_type(previous: Mapping[str, FileEntry], path: str, entry: FileEntry) -> str | None:
    prior = previous.get(path)
    return prior.media_type if prior is not None and prior.blob == entry.blob else None


def _summary(folder: str, problems: list[str]) -> str:
    """One line: the problem itself when alone, else the count and the first few."""
    if len(problems) == 1:
        return problems[0]
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = len(problems) - SHOWN_PROBLEMS
    return f"{len(problems)} problems in {folder!r}: {shown}" + (f"; and {more} more" if more > 0 else "")


def _ignore_spec(root: str, exclude: Sequence[str], has_file: bool) -> pathspec.PathSpec | None:
    """The patterns of ``exclude`` and, if ``has_file``, of the root's ``.archiveignore``; None
    if there are none (then nothing is matched at all)."""
    lines = list(exclude)
    try:
        if has_file:
            with open(os.path.join(root, IGNORE_FILE), "rb") as stream:
                lines += stream.read().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidInputError(f"{IGNORE_FILE} in {root!r} is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read {IGNORE_FILE} in {root!r}: {exc.strerror}") from None
    if not any(line.strip() and not line.lstrip().startswith("#") for line in lines):
        return None
    import pathspec  # here: a folder without patterns does not pay for its import (60 ms)

    try:
        return pathspec.GitIgnoreSpec.from_lines(lines)
    except ValueError as exc:  # pathspec's GitWildMatchPatternError
        raise InvalidInputError(f"{exc} (in an --exclude or {IGNORE_FILE})") from None


def _walk(root: str, exclude: Sequence[str]) -> tuple[list[SourceFile], list[str]]:
    """Every file below ``root`` and every problem met, walking with an explicit stack.

    The root is listed first, so its ``.archiveignore`` is read only when the listing has one.
    The regular files of each listing are stated by :class:`_PlainFileStats`.
    """
    files: list[SourceFile] = []
    problems: list[str] = []
    root_info = os.stat(root)
    top = _Folder(root, "", _Chain((root_info.st_dev, root_info.st_ino), None))
    top_listing = _listing(top, problems)
    ignored = _ignore_spec(root, exclude, any(path == IGNORE_FILE and _is_file(entry) for entry, path in top_listing))
    stack = [top]
    with _PlainFileStats(root, files, problems) as plain_files:
        while stack:
            folder = stack.pop()
            listing = top_listing if folder is top else _listing(folder, problems)
            children, plain = _visit_listing(root, folder, listing, ignored, files, problems)
            stack.extend(reversed(children))  # folders in name order, so problems come in path order
            plain_files.add(plain)
            if len(files) + plain_files.waiting > MAX_FILES:
                problems.append(f"more than {MAX_FILES} files, more than a release can list"
                                " (do links to folders multiply the paths?); scan stopped")
                return files, problems
        plain_files.finish()
    return files, problems


class _PlainFiles(NamedTuple):
    """The entries of one folder that its listing says are regular files, with their paths."""

    folder: _Folder
    entries: list[tuple[os.DirEntry[str], str]]


def _visit_listing(root: str, folder: _Folder, listing: list[tuple[os.DirEntry[str], str]],
                   ignored: pathspec.PathSpec | None, files: list[SourceFile],
                   problems: list[str]) -> tuple[list[_Folder], _PlainFiles]:
    """:func:`_visit` each entry of one folder's listing but its regular files; return its
    folders to list, and those files (by far the most common entry), whose stats
    :class:`_PlainFileStats` takes."""
    children, plain = [], []
    by_name = os.stat in os.supports_dir_fd
    for entry, path in listing:
        if ignored is not None and _is_ignored(ignored, entry, path):
            continue
        if by_name and entry.is_file(follow_symlinks=False):  # the listing's type: no system call
            plain.append((entry, path))
            continue
        child = _visit(root, folder, entry, path, files, problems)
        if child is not None:
            children.append(child)
    return children, _PlainFiles(folder, plain)


class _PlainFileStats:
    """The stats of the regular files the walk lists, and the files noted from them.

    The first :data:`archive.scan_helper.MIN_FILES` files are stated as their folder is
    listed. After them a helper process (:class:`~archive.scan_helper.StatHelper`) states the
    folders offered to it, from the first on, while the walk lists the next ones; once the walk
    has listed all (or :data:`DEFERRED_FILES` wait), this process states them from the last
    back, until the two meet. A problem of a file stated late is reported after those of the
    folders listed before it was noted.
    """

    def __init__(self, root: str, files: list[SourceFile], problems: list[str]) -> None:
        self._root, self._files, self._problems = root, files, problems
        self._listed = 0
        self._helper: StatHelper | None = None
        self._pending: dict[int, _PlainFiles] = {}
        #: Files listed and not noted yet.
        self.waiting = 0

    def add(self, plain: _PlainFiles) -> None:
        """Note the files of ``plain`` now, or offer them to the helper."""
        if not plain.entries:
            return
        if self._helper is None or not self._helper.running:  # none yet, or none to be had
            _note_plain_files(self._root, plain, _stat_names(plain), self._files, self._problems)
            self._listed += len(plain.entries)
            if self._helper is None and self._listed >= MIN_FILES:
                self._helper = StatHelper()
            return
        number = self._helper.offer(plain.folder.location, [entry.name for entry, _ in plain.entries])
        self._pending[number] = plain
        self.waiting += len(plain.entries)
        self._note_answers()
        if self.waiting > DEFERRED_FILES:
            self._take_back(DEFERRED_FILES // 2)

    def finish(self) -> None:
        """Note every file still waiting, once the walk has listed all."""
        if self._helper is None:
            return
        self._take_back(0)  # a helper given up on takes nothing: every folder waiting is stated here
        self._helper.finish()
        self._note_answers()
        for number in sorted(self._pending):  # offered and never answered: stated here
            plain = self._pending.pop(number)
            self._note(plain, _stat_names(plain))

    def _take_back(self, until: int) -> None:
        """State waiting folders, from the last offered back, until no more than ``until``
        files wait or the next one is the helper's (it takes them in order: so are those before)."""
        assert self._helper is not None
        for number in sorted(self._pending, reverse=True):
            if self.waiting <= until or not self._helper.take(number):
                return
            plain = self._pending.pop(number)
            self._note(plain, _stat_names(plain))
            self._note_answers()

    def _note_answers(self) -> None:
        assert self._helper is not None
        for number, found in self._helper.answers():
            plain = self._pending.get(number)
            if plain is not None and len(found) == len(plain.entries):
                del self._pending[number]
                self._note(plain, found)

    def _note(self, plain: _PlainFiles, found: list[Any]) -> None:
        """Note the files of ``plain``, waiting until now."""
        self.waiting -= len(plain.entries)
        _note_plain_files(self._root, plain, found, self._files, self._problems)

    def __enter__(self) -> "_PlainFileStats":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._helper is not None:
            self._helper.close()


def _stat_names(plain: _PlainFiles) -> list[tuple[int, ...] | None]:
    """The numbers of a :class:`FileStat` for each file of ``plain``, from its ``lstat`` by name
    from the folder's descriptor (the kernel walks one name, not the whole path); None for each
    that cannot be stated."""
    try:
        fd = os.open(plain.folder.location, os.O_RDONLY | _FOLDER_FLAGS)
    except OSError:
        return [None] * len(plain.entries)
    found: list[tuple[int, ...] | None] = []
    append, stat_at = found.append, os.stat
    try:
        for entry, _ in plain.entries:
            try:
                info = stat_at(entry.name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                append(None)
                continue
            append((info.st_mode, info.st_size, info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns,
                    info.st_uid))
    finally:
        os.close(fd)
    return found


def _note_plain_files(root: str, plain: _PlainFiles, found: list[Any], files: list[SourceFile],
                      problems: list[str]) -> None:
    """Note each file of ``plain`` whose numbers in ``found`` say it is a regular file of ours
    that we may read; every other one (not stated, changed since the listing, another owner's)
    goes through :func:`_visit`, as any entry does."""
    append, euid, shared = files.append, _EUID, _SHARED_INTS
    for (entry, path), numbers in zip(plain.entries, found):
        if (type(numbers) is tuple and len(numbers) == 7 and (numbers[0] & _PLAIN_MASK) == _PLAIN_OWN
                and numbers[6] == euid):
            # FileStat.of and SourceFile(...) written out: a call each is a tenth of the scan
            share = shared.setdefault if len(shared) < _SHARED_MAX else shared.get
            mode, size, dev, ino, mtime_ns, ctime_ns, _ = numbers
            info = _new_tuple(FileStat, (share(mode, mode), share(size, size), share(dev, dev), ino, mtime_ns,
                                         ctime_ns, euid))
            append(_new_tuple(SourceFile, (path, entry.path, info)))
        else:
            _visit(root, plain.folder, entry, path, files, problems)


def _visit(root: str, folder: _Folder, entry: os.DirEntry[str], path: str, files: list[SourceFile],
           problems: list[str]) -> _Folder | None:
    """Note the file ``entry`` is, or its problem; return it as a folder to list if it is one."""
    info = _stat_entry(root, entry, path, problems)
    if info is None:
        return None
    if stat.S_ISDIR(info.st_mode):
        identity = (info.st_dev, info.st_ino)
        if entry.is_symlink() and _is_ancestor(identity, folder.ancestors):
            problems.append(f"{path!r} is a link that loops back to a folder containing it")
            return None
        return _Folder(entry.path, path + "/", _Chain(identity, folder.ancestors))
    if not stat.S_ISREG(info.st_mode):
        problems.append(f"{path!r} is not a regular file or folder (device, FIFO or socket)")
    elif not _readable(entry.path, info):  # found now, before any upload
        problems.append(f"cannot read {path!r}: {os.strerror(errno.EACCES)}")
    else:
        files.append(SourceFile(path, entry.path, FileStat.of(info)))
    return None


def _listing(folder: _Folder, problems: list[str]) -> list[tuple[os.DirEntry[str], str]]:
    """The entries of one folder with their release paths, in name order, minus the reserved
    name at the top; two names equal in Unicode NFC are a problem (one path, two files)."""
    try:
        with os.scandir(folder.location) as listing:
            entries = sorted(listing, key=_NAME_OF)
    except FileNotFoundError:  # removed since its parent was listed: it is not part of the folder
        logger.debug("%r vanished during the scan", folder.prefix)
        return []
    except OSError as exc:
        problems.append(f"cannot read folder {folder.prefix.rstrip('/') or '.'!r}: {exc.strerror}")
        return []
    prefix = folder.prefix
    if unicodedata.is_normalized("NFC", "/".join([entry.name for entry in entries])):
        # every name is NFC already ("/" composes with nothing), so no two can clash: no check per name
        return [(entry, prefix + entry.name) for entry in entries if prefix or entry.name != RESERVED_NAME]
    named: dict[str, str] = {}
    found = []
    for entry in entries:
        name = unicodedata.normalize("NFC", entry.name)
        if not folder.prefix and name == RESERVED_NAME:
            continue
        path = folder.prefix + name
        if name in named:
            problems.append(f"names {named[name]!r} and {folder.prefix + entry.name!r} are the same"
                            " in Unicode NFC and clash")
            continue
        named[name] = folder.prefix + entry.name
        found.append((entry, path))
    return found


def _is_ignored(ignored: pathspec.PathSpec, entry: os.DirEntry[str], path: str) -> bool:
    """True if a pattern leaves ``path`` out; a folder is matched as ``path/`` too, which needs
    a stat only for a link (a plain entry's type comes with the listing)."""
    if ignored.match_file(path):
        return True
    try:
        is_folder = entry.is_dir(follow_symlinks=True)
    except OSError:
        return False  # the stat that follows reports it
    return is_folder and ignored.match_file(path + "/")


def _is_file(entry: os.DirEntry[str]) -> bool:
    """True for a regular file (or a link to one): never open a FIFO, which would block."""
    try:
        return entry.is_file(follow_symlinks=True)
    except OSError:
        return False


def _readable(location: str, info: os.stat_result) -> bool:
    """True if this process may read the file: its owner's read bit when it is ours (no system
    call per file for the common case), else what ``access`` says."""
    if info.st_uid == _EUID and info.st_mode & stat.S_IRUSR:
        return True
    return os.access(location, os.R_OK)


def _is_ancestor(identity: tuple[int, int], chain: _Chain | None) -> bool:
    while chain is not None:
        if chain.identity == identity:
            return True
        chain = chain.parent
    return False


def _stat_entry(root: str, entry: os.DirEntry[str], path: str, problems: list[str]) -> os.stat_result | None:
    """Stat an entry, following a symlink only when it stays inside ``root``; None (with the
    problem noted, unless the entry simply vanished) when it cannot be published."""
    try:
        if not entry.is_symlink():
            return entry.stat(follow_symlinks=False)
        target = os.path.realpath(entry.path)
        if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
            problems.append(f"{path!r} is a link to {target!r}, outside the published folder")
            return None
        return os.stat(entry.path)
    except FileNotFoundError:
        if os.path.lexists(entry.path):
            problems.append(f"{path!r} is a broken link")
        else:
            logger.debug("%r vanished during the scan", path)
        return None
    except OSError as exc:
        problems.append(f"cannot read {path!r}: {exc.strerror}")
        return None
