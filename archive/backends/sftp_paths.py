"""Paths of an SFTP archive on storage someone else controls: folders checked, names read as bytes.

SFTP (version 3, as OpenSSH speaks it) has no ``O_NOFOLLOW`` and no descriptor of a folder to
walk from, so every folder below the archive root is checked with ``lstat`` before it is used:
a symbolic link, or anything but a folder, where a folder of the archive should be is refused.
Each folder is checked once per process (:class:`CheckedFolders`, as ``mkdir -p`` was cached
before); a key's own ``lstat`` is sent together with those of the folders on its way not
checked yet, so a read costs one round trip, as the plain ``stat`` before. A process that
used a folder would still use it if it were swapped for a link while the process runs (SFTP
gives no way to pin it); a process started after is safe.
The root itself is the user's choice and may be a link.

A folder may hold a name that is not UTF-8, which paramiko's ``listdir`` could not decode (it
raised ``UnicodeDecodeError`` from ``ls``, ``pull``, ``push`` and ``gc``): :func:`list_names`
reads names as bytes and decodes them as ``os.listdir`` does on a folder (surrogate escapes),
and :func:`~archive.interface.usable_name` skips such names on every backend alike.
"""

from __future__ import annotations

import threading
from typing import Callable

from .sftp_proto import (CLOSE, EOF, HANDLE, LSTAT, NAME, OPENDIR, READDIR, Attributes, SFTPClient, check_ok,
                         status_code, status_error, string)

from ..errors import UnsafeObjectError
from ..keys import check_folder, check_regular


def list_names(sftp: SFTPClient, path: str) -> list[str]:
    """The names in the server folder ``path`` (without ``.`` and ``..``), never failing to
    decode one: bytes that are not UTF-8 become surrogate escapes, as ``os.listdir`` gives them.

    One ``READDIR`` is kept in flight ahead of the one being read (OpenSSH's server sends about
    a hundred names per reply): a large folder costs about half the round trips."""
    reply = sftp.request(OPENDIR, string(path))
    if reply.kind != HANDLE:
        raise status_error(reply, "opendir")
    handle = string(reply.fields().string())
    names: list[str] = []
    ahead = sftp.send(READDIR, handle)
    while True:
        reply = sftp.reply(ahead)
        if reply.kind != NAME:
            break
        ahead = sftp.send(READDIR, handle)
        fields = reply.fields()
        for _ in range(fields.u32()):
            name = bytes(fields.string()).decode("utf-8", "surrogateescape")
            fields.string()  # the long name, as ls -l would show it
            fields.attrs()
            if name not in (".", ".."):
                names.append(name)
    if status_code(reply) != EOF:  # the end of the listing is the status EOF
        raise status_error(reply, "readdir")
    check_ok(sftp.request(CLOSE, handle), "close")
    return names


class CheckedFolders:
    """Folders below an archive root known to be real folders (each component ``lstat``-ed)."""

    def __init__(self, remote_path: Callable[[str], str]) -> None:
        self._remote_path = remote_path
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def check(self, sftp: SFTPClient, folder: str, create: bool) -> None:
        """Make sure ``folder`` (a key prefix such as ``blobs/sha256/ab``) is a real folder.

        Raises :class:`~archive.errors.UnsafeObjectError` naming the first component that is a
        link or anything else but a folder, and ``FileNotFoundError`` for a missing one unless
        ``create``, which makes it (``mkdir -p``, a lost race with another writer is fine).
        """
        if folder in self._known:
            return
        if not folder:
            if create:
                _make_folders(sftp, self._remote_path(""))
                with self._lock:
                    self._known.add(folder)
            return
        self.check(sftp, folder.rpartition("/")[0], create)
        path = self._remote_path(folder)
        try:
            check_folder(folder, sftp.lstat(path).st_mode or 0)
        except FileNotFoundError:
            if not create:
                raise
            try:
                sftp.mkdir(path)
            except OSError:  # made meanwhile by another writer, or something else is there
                check_folder(folder, sftp.lstat(path).st_mode or 0)
        with self._lock:
            self._known.add(folder)

    def lstat(self, sftp: SFTPClient, key: str, folder: bool = False) -> Attributes:
        """The ``lstat`` of ``key``, with every folder on its way not checked before.

        All the ``lstat`` requests are sent at once, so this costs one round trip, as one
        ``stat`` would. ``key`` must be a regular file (a real folder if ``folder``); raises
        :class:`~archive.errors.UnsafeObjectError` naming the first thing that is not what it
        should be, ``FileNotFoundError`` if something on the way is missing.
        """
        parts = key.split("/")
        paths = [p for p in ("/".join(parts[:i]) for i in range(1, len(parts))) if p not in self._known]
        nums = [sftp.send(LSTAT, string(self._remote_path(path))) for path in [*paths, key]]
        replies = [sftp.reply(num) for num in nums]
        for path, reply in zip(paths, replies):  # in order: the first thing amiss on the way is named
            check_folder(path, sftp.attrs_of(reply, "lstat").st_mode or 0)
        attrs = sftp.attrs_of(replies[-1], "lstat")
        (check_folder if folder else check_regular)(key, attrs.st_mode or 0)
        with self._lock:
            self._known.update(paths)
        return attrs

    def lstat_many(self, sftp: SFTPClient, keys: list[str]) -> list["Attributes | Exception"]:
        """:meth:`lstat` of every key at once (one round trip for all): for each key its
        attributes, or the error :meth:`lstat` would raise for it alone (the first folder on
        its way that is missing or not a real folder, or the key itself). Errors of the session
        (a lost connection) are raised."""
        folders: dict[str, None] = {}  # each folder not checked yet, once, in order
        for key in keys:
            parts = key.split("/")
            folders.update((p, None) for p in ("/".join(parts[:i]) for i in range(1, len(parts)))
                           if p not in self._known)
        nums = [sftp.send(LSTAT, string(self._remote_path(path))) for path in [*folders, *keys]]
        replies = [sftp.reply(num) for num in nums]
        problems: dict[str, Exception] = {}
        for path, reply in zip(folders, replies):
            try:
                check_folder(path, sftp.attrs_of(reply, "lstat").st_mode or 0)
            except (OSError, UnsafeObjectError) as exc:
                problems[path] = exc
        results: list[Attributes | Exception] = []
        for key, reply in zip(keys, replies[len(folders):]):
            results.append(self._first_problem(key, problems) or _regular(key, sftp, reply))
        with self._lock:
            self._known.update(path for path in folders if path not in problems)
        return results

    @staticmethod
    def _first_problem(key: str, problems: dict[str, Exception]) -> Exception | None:
        """The error of the first folder on ``key``'s way that is not a real folder, if any."""
        if problems:
            parts = key.split("/")
            for i in range(1, len(parts)):
                problem = problems.get("/".join(parts[:i]))
                if problem is not None:
                    return problem
        return None

    def forget(self) -> None:
        """Check every folder again (one was found removed since it was checked)."""
        with self._lock:
            self._known.clear()


def _regular(key: str, sftp: SFTPClient, reply) -> "Attributes | Exception":
    """The attributes of ``key`` in an ``lstat`` reply if it is a regular file; the error otherwise."""
    try:
        attrs = sftp.attrs_of(reply, "lstat")
        check_regular(key, attrs.st_mode or 0)
    except (OSError, UnsafeObjectError) as exc:
        return exc
    return attrs


def _make_folders(sftp: SFTPClient, path: str) -> None:
    """``mkdir -p`` of the archive root, which (like the folders above it) may be a link."""
    try:
        sftp.stat(path)
        return
    except FileNotFoundError:
        if "/" in path.strip("/"):
            _make_folders(sftp, path.rsplit("/", 1)[0])
    try:
        sftp.mkdir(path)
    except OSError:
        sftp.stat(path)  # made meanwhile by another writer; else the error of the stat
