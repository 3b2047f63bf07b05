"""Putting a verified cached blob at a path: by reflink, hard link, symbolic link or copy.

No mode lets the target be seen partial. A file is written unnamed (Linux ``O_TMPFILE``) and
linked as the target once whole, which costs no more system calls than writing the target in
place, and leaves nothing if the process is killed. Where that is not possible, and for links,
a temporary beside the target is renamed over it; a temporary is held locked while it is
written, so that no other download takes it for a leftover (:mod:`archive.inflight`), and its
name keeps at most :data:`TEMP_NAME_KEEP` bytes of the target's, so that any name the
filesystem allows has one.
The modes trade speed for independence from the cache:

- ``copy``: an independent file (the kernel copies: ``sendfile``/``copy_file_range``).
- ``reflink``: an independent file that shares blocks until either is written
  (copy-on-write filesystems: Btrfs, XFS, APFS...). As safe as a copy, nearly free.
- ``hard``: the cache file itself, read-only. Instant, but shared: editing it after a
  ``chmod`` would change the cache and every other folder linked to it. Use for read-only data.
- ``symlink``: a link into the cache; instant, read-only, and broken if the cache is cleaned.
- ``auto`` (the default): ``reflink`` where the filesystem supports it, else ``copy``; so a
  user who edits a pulled file can never corrupt the cache.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from .errors import InvalidInputError
from .inflight import claim, claim_unnamed, remove_if_stale

logger = logging.getLogger(__name__)
LINK_MODES = ("auto", "reflink", "hard", "symlink", "copy")
#: Modes whose file is independent of its source: an edit of it never reaches the source.
INDEPENDENT_MODES = frozenset({"auto", "reflink", "copy"})
PART_SUFFIX = ".archive-part"
FICLONE = 0x40049409  # Linux ioctl: make the target share the source's blocks
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS}
_NO_REFLINK_DEVICES: set[int] = set()  # filesystems (st_dev) found unable to reflink


def check_link_mode(mode: str) -> str:
    if mode not in LINK_MODES:
        raise InvalidInputError(f"unknown link mode {mode!r}: use one of {', '.join(LINK_MODES)}")
    return mode


def wanted_mode(executable: bool) -> int:
    """The permission bits of a placed file: ``0o777 & ~umask`` for an executable, else
    ``0o666 & ~umask`` (what ``git checkout`` gives)."""
    return (0o777 if executable else 0o666) & ~_umask()


_UMASK: int | None = None


def _umask() -> int:
    """The process umask, read once (reading it means setting it for a moment)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def place_file(source: Path, target: Path, mode: str, file_mode: int) -> None:
    """Make ``target`` hold the content of the cache file ``source``, atomically.

    ``file_mode`` applies to the independent modes; a hard or symbolic link has the cache file's
    mode (read-only, never executable: see :mod:`archive.download` for executables).
    """
    if mode == "auto":
        device = os.stat(target.parent).st_dev
        if device not in _NO_REFLINK_DEVICES:
            try:
                return place_file(source, target, "reflink", file_mode)
            except OSError as exc:
                if exc.errno not in _NO_REFLINK:
                    raise
                _NO_REFLINK_DEVICES.add(device)  # ask each filesystem once, not once per file
        mode = "copy"
    if mode in ("hard", "symlink"):
        _link_atomically(target, source, os.link if mode == "hard" else os.symlink)
    else:
        fill = _reflink if mode == "reflink" else _copy
        _write_atomically(target, lambda out: fill(source, out), file_mode)


def write_file_atomically(target: Path, chunks: Iterable[bytes], file_mode: int) -> None:
    """Write ``chunks`` to ``target`` through a temporary file beside it, then rename.

    A process killed with SIGKILL cannot remove its temporary file; the next download into the
    same folder does, once no live process holds it (see :mod:`archive.inflight`).
    """
    def fill(out: BinaryIO) -> None:
        for chunk in chunks:
            out.write(chunk)

    _write_atomically(target, fill, file_mode)


#: Longest file name most filesystems allow (ext4, XFS, Btrfs, tmpfs, APFS, NTFS: 255 bytes).
NAME_MAX = 255
_TEMP_OVERHEAD = len(".") + len(".") + 12 + len(PART_SUFFIX)
#: Longest part of a target's name kept in its temporary name, so that any name has a temporary.
TEMP_NAME_KEEP = NAME_MAX - _TEMP_OVERHEAD


def temporary_name(target: Path) -> str:
    """A hidden, unique name beside ``target``, recognizable as ours and never too long: the
    target's name is cut to :data:`TEMP_NAME_KEEP` bytes (at a character boundary)."""
    kept = target.name.encode("utf-8", "surrogateescape")[:TEMP_NAME_KEEP].decode("utf-8", "ignore")
    return str(target.parent / f".{kept}.{uuid.uuid4().hex[:12]}{PART_SUFFIX}")


def temporary_is_for(kept: str, names: "set[str]") -> bool:
    """Whether a temporary whose name keeps ``kept`` was made for one of ``names``."""
    if kept in names:
        return True
    if len(kept.encode("utf-8", "surrogateescape")) <= TEMP_NAME_KEEP - 4:
        return False  # not cut: it names its target whole
    return any(name.startswith(kept) for name in names)


_PART = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}" + re.escape(PART_SUFFIX))


def remove_stale_temporaries(folder: Path, names: "set[str]") -> None:
    """Remove the temporaries in ``folder`` made for one of ``names`` whose writer is gone
    (:func:`archive.inflight.remove_if_stale`); a live download's are left alone."""
    try:
        with os.scandir(folder) as entries:
            found = [e.name for e in entries]
    except OSError:
        return  # a folder not made yet holds no temporary
    for name in found:
        match = _PART.fullmatch(name)
        if match and temporary_is_for(match["name"], names):
            remove_if_stale(folder / name)


def _write_atomically(target: Path, fill: Callable[[BinaryIO], None], file_mode: int) -> None:
    """Let ``fill`` write a new file, then give it the name ``target`` whole.

    Where the filesystem can (Linux: ``O_TMPFILE``), the file has no name until it is linked
    as ``target``: a killed download leaves nothing behind, and nothing needs a lock. Elsewhere
    it is a named temporary, locked while written, renamed over ``target`` while the lock still
    says it is alive, and removed on any error.
    """
    fd = _open_unnamed(target.parent, file_mode)
    if fd is None:
        tmp, out = _new_temporary(target)
        try:
            with out:
                _fill_and_seal(out, fill, file_mode)
                os.replace(tmp, target)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return
    with open(fd, "wb") as out:
        _fill_and_seal(out, fill, file_mode)
        link_unnamed(fd, target)


def write_bytes_atomically(target: "str | Path", data: bytes, file_mode: int, *, set_mode: bool = True) -> None:
    """:func:`write_file_atomically` of one buffer, with the fewest system calls (a small file:
    create, write, link, close, and a ``chmod`` unless ``set_mode`` is False because the
    creation gives the file ``file_mode`` already, see :func:`creation_gives_mode`)."""
    path = os.fspath(target)  # strings, not Paths: this runs once per small file
    fd = _open_unnamed(_folder_of(path), file_mode) if _can_name_unnamed() else None
    if fd is None:
        return write_file_atomically(Path(path), [data], file_mode)
    try:
        write_all(fd, data)
        if set_mode:
            os.fchmod(fd, file_mode)
        link_unnamed(fd, path)
    finally:
        os.close(fd)


def _folder_of(path: str) -> str:
    """``os.path.dirname`` of a path below a folder, without its generality (a few us a file)."""
    folder, sep, _ = path.rpartition(os.sep)
    return folder if folder and sep else os.path.dirname(path)


def creation_gives_mode(folders: "dict[str, str | Path]") -> set[str]:
    """The names (keys) of the ``folders`` in which a file created with a mode from
    :func:`wanted_mode` gets exactly that mode, so that :func:`write_bytes_atomically` may leave
    out its ``chmod`` (a system call per small file). Ask once per download.

    The kernel gives a new file its creation mode less the umask, unless the folder has a
    default ACL, which replaces the umask. So: none unless the umask is still the one
    :func:`wanted_mode` uses; then those known to have no default ACL (a filesystem that cannot
    say, or a platform without extended attributes, gets the ``chmod``).
    """
    if _umask_now() != _umask() or not hasattr(os, "getxattr"):
        return set()
    return {name for name, folder in folders.items() if _no_default_acl(folder)}


def _no_default_acl(folder: "str | Path") -> bool:
    try:
        os.getxattr(folder, "system.posix_acl_default")
    except OSError as exc:
        return exc.errno == errno.ENODATA
    return False


def _umask_now() -> int | None:
    """The umask as it is now, without setting it (which would race with other threads'
    creates): Linux tells it in ``/proc/self/status``; None where it cannot be read so."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a short write is rare, not impossible)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fill_and_seal(out: BinaryIO, fill: Callable[[BinaryIO], None], file_mode: int) -> None:
    fill(out)
    out.flush()
    os.fchmod(out.fileno(), file_mode)  # exactly these bits, whatever the umask or a default ACL did


_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
#: Why an ``O_TMPFILE`` open fails where the filesystem (or kernel) cannot make unnamed files.
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS, errno.ENOENT}


def _open_unnamed(folder: "Path | str", file_mode: int) -> int | None:
    """A new file without a name in ``folder``, open for writing; None where there is no such
    thing (not Linux, no ``/proc`` to name it through, or a filesystem without ``O_TMPFILE``)."""
    if not _can_name_unnamed():
        return None
    try:
        return os.open(folder, _O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, file_mode)
    except OSError as exc:
        if exc.errno in _NO_TMPFILE and os.path.isdir(folder):
            return None
        raise


@functools.lru_cache(maxsize=1)
def _can_name_unnamed() -> bool:
    return bool(_O_TMPFILE) and os.path.isdir("/proc/self/fd")


def link_unnamed(fd: int, target: "Path | str") -> None:
    """Give the unnamed file ``fd`` the name ``target``, replacing what is there.

    ``linkat`` never replaces, so a new target (the common case) costs one call; an existing
    one (a file replaced, or written meanwhile by another pull of the same release) gets a
    locked temporary name first, then a rename over it, so that no cleaner takes it for a
    leftover in between.
    """
    source = f"/proc/self/fd/{fd}"
    try:
        # src_dir_fd only makes Python call linkat (AT_SYMLINK_FOLLOW); the path is absolute
        os.link(source, target, src_dir_fd=fd, follow_symlinks=True)
        return
    except FileExistsError:
        pass
    claim_unnamed(fd)
    tmp = temporary_name(Path(target))
    os.link(source, tmp, src_dir_fd=fd, follow_symlinks=True)
    try:
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _new_temporary(target: Path) -> tuple[str, BinaryIO]:
    """Create and claim (lock) a temporary beside ``target``; see :func:`archive.inflight.claim`."""
    for _ in range(5):
        tmp = temporary_name(target)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if claim(fd):
                return tmp, open(fd, "wb")
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        os.close(fd)  # a cleaner took it between our create and our lock: try a new name
    raise OSError(errno.EAGAIN, f"temporary files beside {target.name!r} keep being removed")


def _link_atomically(target: Path, source: Path, make_link: Callable[[Path, str], None]) -> None:
    """Link ``source`` under a temporary name, then rename it over ``target``. A link temporary
    lives for two system calls and is stale only by age (:mod:`archive.inflight`)."""
    tmp = temporary_name(target)
    try:
        make_link(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _copy(source: Path, out: BinaryIO) -> None:
    with open(source, "rb") as src:
        copy_bytes(src, out)


def copy_bytes(src: BinaryIO, out: BinaryIO) -> None:
    """Copy a whole file into ``out``; the kernel copies where it can (``sendfile``), as
    :func:`shutil.copyfile` would, but into a file we created and hold locked."""
    offset = 0
    try:
        while True:
            sent = os.sendfile(out.fileno(), src.fileno(), offset, 1 << 30)
            if not sent:
                return
            offset += sent
    except (AttributeError, OSError) as exc:
        if offset or (isinstance(exc, OSError) and exc.errno not in _NO_SENDFILE):
            raise
    shutil.copyfileobj(src, out, 1 << 20)


_NO_SENDFILE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK, errno.ENODATA}


def _reflink(source: Path, out: BinaryIO) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        raise OSError(errno.EOPNOTSUPP, "reflinks are not supported here") from None
    with open(source, "rb") as src:
        fcntl.ioctl(out.fileno(), FICLONE, src.fileno())
