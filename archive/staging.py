"""A new destination folder, built aside and given its name whole.

A pull into a folder that does not exist yet builds it under a hidden name beside it
(``.NAME.<12 hex>.archive-part``, the temporary name :func:`archive.materialize.temporary_name`
gives) and renames it into place once every file and the pull's marker are in. So:

- the folder appears complete or not at all: a pull that fails or is interrupted leaves
  nothing at the destination, and one killed with SIGKILL leaves only the hidden folder, which
  the next pull beside it removes once its lock is gone (:mod:`archive.inflight`);
- inside it, no file needs its own atomic placement: nothing else sees the folder, so a small
  file is created at its name and written (:func:`write_bytes_in_place`), as ``cp`` does,
  where a file placed alone is created unnamed and linked through ``/proc`` (``linkat``): in
  a bare loop on ext4 about 40% more time per file, the unnamed file being put on the
  journal's orphan list and taken off again.

The name is taken with ``mkdir`` (which never replaces) just before the rename, which then
replaces only that empty folder. If the destination appeared meanwhile (another process made
it, or pulled into it), :func:`reveal_folder` says so and leaves both alone; the caller then
fills the existing folder the usual way. Not on Windows, where a rename cannot replace a folder.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .inflight import ClaimedFolder
from .materialize import remove_stale_temporaries, temporary_name, write_all

logger = logging.getLogger(__name__)
_WRITE_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


def can_stage(target: Path) -> bool:
    """Whether a pull into ``target`` (a resolved path) may build it aside: it does not exist,
    and the platform can rename a folder over the empty one that reserves its name."""
    return os.name == "posix" and not os.path.lexists(target)


@contextmanager
def staged_folder(target: Path) -> Iterator[Path | None]:
    """A new, empty, hidden folder beside ``target`` (whose parents are made), locked as alive
    while in use, and removed on leaving unless :func:`reveal_folder` gave it its name; None
    where it cannot be made (the caller then writes ``target`` itself, and meets the error
    there, about the path the user gave).

    Folders of this kind that killed pulls left beside ``target`` are removed first.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent, {target.name})
        folder = ClaimedFolder(lambda: Path(temporary_name(target)))
    except OSError as exc:
        logger.debug("cannot build %s aside: %s", target, exc)
        yield None
        return
    with folder as path:
        yield path


def reveal_folder(staged: Path, target: Path) -> bool:
    """Give the finished folder ``staged`` the name ``target``; False, changing nothing, if
    ``target`` exists (or came to exist while this ran, and holds something)."""
    try:
        os.mkdir(target)  # the name, reserved: mkdir never replaces
    except FileExistsError:
        return False
    try:
        os.rename(staged, target)  # replaces only the empty folder just made
    except OSError:
        try:
            os.rmdir(target)  # ours, unless another pull already wrote into it
        except OSError:
            pass
        if os.path.isdir(staged):
            return False
        raise
    logger.debug("built %s aside, as %s", target, staged.name)
    return True


def write_bytes_in_place(target: str, data: bytes, file_mode: int, *, set_mode: bool = True) -> None:
    """Write a small file straight at its name, in a staged folder no other process sees:
    create, write, close (and a ``chmod`` unless ``set_mode`` is False). A file already at the
    name (this pull's own, from an attempt that failed) is overwritten."""
    fd = os.open(target, _WRITE_NEW, file_mode)
    try:
        write_all(fd, data)
        if set_mode:
            os.fchmod(fd, file_mode)
    finally:
        os.close(fd)
