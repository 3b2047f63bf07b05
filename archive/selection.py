"""Part of a release: the files whose paths match ``--include`` and not ``--exclude``.

Patterns are gitignore patterns, as ``archive push --exclude`` and ``.archiveignore`` take them
(``*.csv`` matches at any depth, ``raw/`` a folder and all below it, ``/top.txt`` the top level
only), so one syntax selects paths on the way in and on the way out. The part keeps the record
id of the whole release: a folder pulled with ``--include`` says which release its files come
from, and lists in its marker only the files placed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from .errors import InvalidInputError, NotFoundError
from .hashing import BlobId
from .records import FileEntry, Release

if TYPE_CHECKING:
    import pathspec


@dataclass(frozen=True)
class PartOfRelease(Release):
    """Some of the files of a release, under the record id of the whole release."""

    whole_id: BlobId | None = None

    @property
    def record_id(self) -> BlobId:
        assert self.whole_id is not None
        return self.whole_id


def matcher(patterns: Iterable[str], option: str) -> pathspec.PathSpec | None:
    """The gitignore patterns as one matcher (None if there are none); a bad one is refused."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        return None
    import pathspec  # here, not at the top: a pull without patterns never needs it (10 ms to import)

    try:
        return pathspec.GitIgnoreSpec.from_lines(patterns)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"bad {option} pattern: {exc}") from None


def select_files(release: Release, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> Release:
    """``release`` itself, or the part of it whose paths match ``include`` (any, if given) and
    no pattern of ``exclude``.

    Raises
    ------
    NotFoundError
        Patterns were given and no file matches them.
    """
    wanted, unwanted = matcher(include, "--include"), matcher(exclude, "--exclude")
    if wanted is None and unwanted is None:
        return release
    files: dict[str, FileEntry] = {
        path: entry for path, entry in release.files.items()
        if (wanted is None or wanted.match_file(path)) and (unwanted is None or not unwanted.match_file(path))}
    if not files:
        raise NotFoundError(f"no file of {release.name} {release.version} matches the --include/--exclude patterns"
                            f" ({len(release.files)} files)")
    return PartOfRelease(release.name, release.version, release.created, release.metadata, files, release.extra,
                         whole_id=release.record_id)
