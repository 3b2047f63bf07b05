"""Release records: the immutable description of one published version.

A record maps every relative POSIX path of a published folder to a blob id and a size, and
carries the name, the version, the UTC creation time and free-form metadata. It is stored as
canonical JSON (sorted keys, no spaces, UTF-8), itself as a blob, so a record is
content-addressed like the files it lists. Every record is validated when read: the schema, the
name rules and every path, because a record may come from a tampered archive. Fields this
version does not know are kept, so an older client never drops what a newer one wrote.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from types import MappingProxyType
from typing import Any, Mapping

from .errors import ArchiveError, IntegrityError, InvalidInputError, InvalidNameError, InvalidPathError
from .hashing import BlobId
from .record_codec import (MAX_METADATA_VALUES, MAX_RECORD_BYTES, encode_record, encoded_record_parts,  # noqa: F401
                           gc_paused, is_text_of, json_value_problem, load_canonical, load_json, paths_are_fine,
                           string_problem as _string_problem)
from .versions import parse_version

RECORD_FORMAT = 1
MAX_METADATA_DEPTH = 16
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,126}[a-z0-9])?")
_DRIVE = re.compile(r"[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KNOWN_FIELDS = {"format", "name", "version", "created", "metadata", "files"}
_ENTRY_FIELDS = ("blob", "size", "executable", "media_type")
_ENTRY_KEYS = frozenset(_ENTRY_FIELDS)
#: The ``extra`` of every entry that has none: one shared, read-only empty mapping instead of a
#: new dict per entry (a million entries would hold a million empty dicts).
NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid release name, else raise :class:`InvalidNameError`.

    Names are lowercase ASCII letters, digits, ``.``, ``_`` and ``-``, start and end with a
    letter or digit, at most 128 characters. Lowercase only, so that two names can never clash
    on a case-insensitive filesystem or object store. A name may carry one namespace,
    ``NAMESPACE/NAME``, both parts following these rules (as teams group names on model hubs).
    """
    parts = name.split("/") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(_NAME.fullmatch(part) and ".." not in part for part in parts):
        raise InvalidNameError(
            f"invalid release name {name!r}: use 1-128 lowercase letters, digits, '.', '_' or '-',"
            " starting and ending with a letter or digit, optionally after one 'NAMESPACE/'"
        )
    return name


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is a valid namespace (the rules of a plain name), else raise."""
    if not isinstance(namespace, str) or "/" in namespace:
        raise InvalidNameError(f"invalid namespace {namespace!r}: a namespace has no '/'")
    try:
        return check_name(namespace)
    except InvalidNameError:
        raise InvalidNameError(f"invalid namespace {namespace!r}: use 1-128 lowercase letters, digits, '.', '_'"
                               " or '-', starting and ending with a letter or digit") from None


def check_path(path: str) -> str:
    """Return ``path`` if it is a safe, normalized, relative POSIX path; else raise.

    Refused: empty paths and components, ``.`` and ``..``, absolute paths, drive letters,
    backslashes, NUL and other control characters, and paths not in Unicode NFC form. A path
    that passes can be joined to a destination folder without ever leaving it.
    """
    problem = _path_problem(path)
    if problem:
        raise InvalidPathError(f"unsafe path {path!r} in release: {problem}")
    return path


def _path_problem(path: str) -> str | None:
    if not isinstance(path, str) or not path:
        return "empty"
    if _CONTROL.search(path):
        return "control character"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if "\\" in path:
        return "backslash"
    if path.startswith("/") or _DRIVE.match(path):
        return "absolute"
    if not unicodedata.is_normalized("NFC", path):
        return "not in Unicode NFC form"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "empty, '.' or '..' component"
    return None


def check_paths(paths: list[str]) -> None:
    """Check that a set of paths can coexist in one folder on every common filesystem.

    Each path must be safe; no two may collide when case is folded (macOS, Windows); and no
    file may stand where another needs a directory (``a`` and ``a/b``). Raises
    :class:`InvalidPathError` naming the first problem of :func:`path_problems`.
    """
    problems = path_problems(paths)
    if problems:
        raise InvalidPathError(problems[0])


def path_problems(paths: list[str]) -> list[str]:
    """Every problem of :func:`check_paths`, one line each, in time linear in the total length.

    The case-folded paths are entered into a tree whose nodes are numbered by (parent node,
    component), so a folder prefix is found by one lookup per component instead of joining
    every prefix again (which is quadratic in the number of components of a path).

    Parameters
    ----------
    paths
        Release paths, in the order problems should be reported.

    Returns
    -------
    list[str]
        One message per problem (unsafe path, case clash, file where a folder is needed);
        empty when the paths can coexist.
    """
    problems: list[str] = []
    nodes: dict[tuple[int, str], int] = {}
    folders: dict[int, str] = {}  # node -> the first path that needs it to be a folder
    files: dict[int, str] = {}  # node -> the path of the file it is
    for path in paths:
        problem = _path_problem(path)
        if problem:
            problems.append(f"unsafe path {path!r} in release: {problem}")
            continue
        node = 0
        parts = path.casefold().split("/")
        for depth, part in enumerate(parts, 1):
            node = nodes.setdefault((node, part), len(nodes) + 1)
            if depth < len(parts):
                folders.setdefault(node, path)
        if node in files:
            problems.append(f"paths {files[node]!r} and {path!r} clash on a case-insensitive filesystem")
        else:
            files[node] = path
    problems.extend(f"{files[node]!r} is a file but {folders[node]!r} needs it to be a folder"
                    for node in files if node in folders)
    return problems


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``metadata`` as a dict if a record can hold it; else raise :class:`InvalidInputError`.

    It must be a mapping of JSON values nested at most :data:`MAX_METADATA_DEPTH` deep (see
    :func:`json_value_problem`); checked before anything is serialized or uploaded, so bad
    metadata never costs an upload nor recurses.

    Parameters
    ----------
    metadata
        The metadata given to a publish; None is an empty mapping.

    Returns
    -------
    dict
        A plain dict of it.

    Raises
    ------
    InvalidInputError
        Naming the first problem found.
    """
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata is a {type(metadata).__name__}, not a mapping")
    metadata = dict(metadata)
    problem = json_value_problem(metadata, MAX_METADATA_DEPTH)
    if problem:
        raise InvalidInputError(f"metadata {problem}")
    return metadata


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a release: its content address, size in bytes, and whether it is executable.

    ``executable`` is the one mode bit kept, as git keeps it: a pulled ``run.sh`` must run.
    It is stored only when true, so records of other files are what they always were.
    ``media_type`` (:mod:`archive.media`) is a hint derived from the content and the name, not
    part of a file's identity: it takes no part in comparisons, so a folder published again
    matches a release recorded before the field existed. Slotted: a release may hold a
    million of them.
    """

    blob: BlobId
    size: int
    extra: Mapping[str, Any] = field(default_factory=lambda: NO_EXTRA)
    executable: bool = False
    media_type: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        flags = {"executable": True} if self.executable else {}
        if self.media_type is not None:
            flags["media_type"] = self.media_type
        return {**self.extra, "blob": str(self.blob), "size": self.size, **flags}


@dataclass(frozen=True)
class Release:
    """An immutable release record. Build with :meth:`create`, read with :func:`parse_record`."""

    name: str
    version: str
    created: str
    metadata: Mapping[str, Any]
    files: Mapping[str, FileEntry]
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, name: str, version: str, files: Mapping[str, FileEntry],
               metadata: Mapping[str, Any] | None = None) -> "Release":
        """A new record stamped with the current UTC time, checked like a stored one
        (:meth:`create_encoded` without its bytes)."""
        return cls.create_encoded(name, version, files, metadata)[0]

    @classmethod
    def create_encoded(cls, name: str, version: str, files: Mapping[str, FileEntry],
                       metadata: Mapping[str, Any] | None = None) -> "tuple[Release, bytes]":
        """:meth:`create`, and the record's canonical bytes, serialized once for both its id
        and the write that stores it (:func:`archive.publish.commit_release`).

        A record whose every entry has the known fields of the right types is checked as it
        is (:func:`_is_plainly_valid`); any other is read back from its bytes by
        :func:`parse_record`, which names the problem. Either way the record writes its bytes
        again unchanged (the canonical form is a fixed point), so their id is its
        :attr:`record_id` at no second serialization (a million entries take seconds).
        """
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        metadata = json.loads(canonical_json(check_metadata(metadata)))  # as a reader will see it
        release = cls(name, version, created, metadata, dict(sorted(files.items())))
        data = release.to_bytes()
        checked = release if len(data) <= MAX_RECORD_BYTES and _is_plainly_valid(release) else parse_record(data)
        checked.__dict__["record_id"] = BlobId.of_bytes(data)  # the cached_property's own slot
        return checked, data

    @property
    def total_size(self) -> int:
        known = getattr(self.files, "total_size", None)  # a mapping parsed only when read knows it
        return known if isinstance(known, int) else sum(entry.size for entry in self.files.values())

    def head(self) -> dict[str, Any]:
        """The record's fields but ``files``, as :meth:`to_bytes` writes them."""
        return {**self.extra, "format": RECORD_FORMAT, "name": self.name, "version": self.version,
                "created": self.created, "metadata": dict(self.metadata)}

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "format": RECORD_FORMAT,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "metadata": dict(self.metadata),
            "files": {path: entry.to_json() for path, entry in self.files.items()},
        }

    def to_bytes(self) -> bytes:
        """The canonical JSON form (``canonical_json(self.to_json())``, written without building
        a dict per entry); its sha256 is the record's id."""
        return encode_record(self.head(), self.files)

    @cached_property
    def record_id(self) -> BlobId:
        """The record's id: the sha256 of its bytes, as stored when it was read from an archive
        (:meth:`archive.interface.ArchiveInterface.read_record` sets it), else of :meth:`to_bytes`,
        computed once (a record is immutable)."""
        return BlobId.of_bytes(self.to_bytes())

    def same_content(self, other: "Release") -> bool:
        """True when both describe the same files and metadata (the creation time aside)."""
        return (self.name, self.version, self.files, dict(self.metadata)) == (
            other.name, other.version, other.files, dict(other.metadata))


def _is_plainly_valid(release: Release) -> bool:
    """True when :func:`parse_record` of the release's bytes would give the release itself:
    valid name and canonical version, safe paths, plain entries (no fields of a newer version).
    False means "parse it to know", not necessarily a defect."""
    try:
        check_name(release.name)
        if str(parse_version(release.version)) != release.version:
            return False
    except (InvalidInputError, ValueError):
        return False
    if not paths_are_fine(list(release.files)):
        return False
    return all(type(entry) is FileEntry and type(entry.blob) is BlobId and type(entry.size) is int
               and entry.size >= 0 and type(entry.executable) is bool and not entry.extra
               and (entry.media_type is None or _is_media_type(entry.media_type))
               for entry in release.files.values())


def canonical_json(value: Any) -> bytes:
    """Serialize deterministically: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_record(data: bytes, what: str = "release record") -> Release:
    """Parse and validate a stored record; any defect raises :class:`IntegrityError`.

    A record is first parsed by the C parser alone and checked by encoding the release it
    gives: if that is ``data`` again, byte for byte, the text was this project's canonical
    form (every record it writes), which holds no duplicate key and nothing the strict parse
    would judge otherwise. The check is the record writer's (:func:`encode_record`), a third
    of the cost of ``json.dumps`` of what was parsed. Any other text (another writer's, a
    damaged one) gets :func:`archive.record_codec.load_canonical`, then the strict parse.
    """
    with gc_paused():
        if len(data) <= MAX_RECORD_BYTES:
            release = _written_here(data)
            if release is not None:
                return release
        obj = load_canonical(data) if len(data) <= MAX_RECORD_BYTES else None
        if obj is None:
            obj = load_json(data, what)
        return _release_from_checked_json(obj, what)


def _written_here(data: bytes) -> Release | None:
    """The release of ``data`` if it is exactly what :meth:`Release.to_bytes` writes; else None."""
    try:
        release = _release_from_json(json.loads(data))
    except (ArchiveError, KeyError, TypeError, ValueError, RecursionError):
        return None  # the full parse says what is wrong
    return release if is_text_of(encoded_record_parts(release.head(), release.files), data) else None


def _release_from_checked_json(obj: Any, what: str) -> Release:
    try:
        return _release_from_json(obj)
    except (InvalidNameError, InvalidPathError) as exc:
        raise IntegrityError(f"{what}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{what}: bad schema ({exc})") from None


def _release_from_json(obj: Any) -> Release:
    _require(isinstance(obj, dict), "a record is a JSON object")
    _require(obj.get("format") == RECORD_FORMAT, f"unsupported record format {obj.get('format')!r}")
    name = check_name(obj["name"])
    version = str(parse_version(obj["version"]))
    _require(version == obj["version"], "version not in canonical form")
    created = obj["created"]
    _require(isinstance(created, str), "created is a string")
    metadata = obj["metadata"]
    _require(isinstance(metadata, dict), "metadata is an object")
    _require_json("metadata", metadata)
    _require_json("created", created)
    files_obj = obj["files"]
    _require(isinstance(files_obj, dict), "files is an object")
    paths = list(files_obj)
    if not paths_are_fine(paths):
        check_paths(paths)
    shared: dict[Any, Any] = {}  # one object per distinct size and media type, not one per entry
    # each parsed entry is dropped once converted (popped), so the two forms never both exist whole
    files = {path: _entry_from_json(files_obj.pop(path), shared) for path in sorted(paths)}
    extra = {key: value for key, value in obj.items() if key not in _KNOWN_FIELDS}
    _require_json("unknown fields", extra)
    return Release(name, version, created, metadata, files, extra)


def _entry_from_json(obj: Any, shared: dict[Any, Any]) -> FileEntry:
    """A file entry, checked: the known fields of the right types (fast), else the full check.

    Its size and media type are taken from ``shared`` when an entry had the same before (the
    parser makes a new object for every value: 100,000 files of 1 KiB hold 100,000 ints and
    100,000 copies of their media type, 10 MiB, where two objects do)."""
    if type(obj) is dict and obj.keys() <= _ENTRY_KEYS:
        blob, size = obj.get("blob"), obj.get("size")
        executable, media_type = obj.get("executable", False), obj.get("media_type")
        if (type(blob) is str and type(size) is int and size >= 0 and type(executable) is bool
                and (media_type is None or _is_media_type(media_type))):
            return FileEntry(BlobId.parse(blob), shared.setdefault(size, size), NO_EXTRA, executable,
                             None if media_type is None else shared.setdefault(media_type, media_type))
    return _checked_entry(obj)


@functools.lru_cache(maxsize=1024)
def _is_media_type(value: Any) -> bool:
    """True for a short string that is valid UTF-8 (remembered: a record holds few distinct ones)."""
    return isinstance(value, str) and not _string_problem(value) and len(value) <= 255


def _checked_entry(obj: Any) -> FileEntry:
    """A file entry of any shape, each field checked with a message naming the problem."""
    _require(isinstance(obj, dict), "a file entry is an object")
    size = obj["size"]
    _require(isinstance(size, int) and not isinstance(size, bool) and size >= 0, "size is a count of bytes")
    executable = obj.get("executable", False)
    _require(isinstance(executable, bool), "executable is true or false")
    media_type = obj.get("media_type")
    _require(media_type is None or _is_media_type(media_type), "media_type is a short string")
    extra = {key: value for key, value in obj.items() if key not in _ENTRY_FIELDS}
    if extra:
        _require_json("unknown fields of a file entry", extra)
    return FileEntry(BlobId.parse(obj["blob"]), size, extra or NO_EXTRA, executable, media_type)


def _require_json(what: str, value: Any) -> None:
    problem = json_value_problem(value, MAX_METADATA_DEPTH)
    if problem:
        raise ValueError(f"{what} {problem}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
