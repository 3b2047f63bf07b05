"""Reading an rmellipse 0.4.5 ``FileSystemArchive``: its layout, records and blobs.

What rmellipse writes (its ``workflows.archive_interface`` and ``rme release``)::

    ROOT/.rmearchive                                   marker (an empty file)
    ROOT/<workspace>/<title>/<title>-v<version>.yml    a release record (YAML)
    ROOT/<workspace>/<title>/blobs/<sha[:2]>/<sha>     file bytes by sha256, per workspace and title

A record holds ``title``, ``title_versionless``, ``version``, ``workflow_config_path``,
``workflow``, ``requirements``, ``datasets`` and ``project``: the released folder as a tree
nested by path component, whose entries carry ``/path/``, ``/item/`` and ``/attrs/``; ``File``
and ``H5_File`` entries also carry ``/bpid/`` (the sha256), ``/bytes/`` and ``/file-type/``.
``Directory`` entries nest more entries; ``H5_Group`` and ``H5_DATASET`` entries describe the
inside of an HDF5 file and are not files.

Everything is read through an :class:`~archive.interface.ArchiveInterface`'s read primitives
(``list_keys``, ``stat_key``, ``open_key``), so the rmellipse archive may be a folder or on any
storage we read (``sftp://``). Nothing here writes.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import ArchiveError, IntegrityError, InvalidInputError, KeyNotFoundError, UnsafeObjectError
from ..hashing import BlobId
from ..records import MAX_METADATA_DEPTH, canonical_json, check_name, check_namespace, json_value_problem
from ..versions import check_release_version

if TYPE_CHECKING:
    from ..interface import ArchiveInterface

logger = logging.getLogger(__name__)
MARKER = ".rmearchive"
DEFAULT_WORKSPACE = "Global Public Workspace"
BLOBS_FOLDER = "blobs"
RECORD_SUFFIX = ".yml"
MAX_RECORD_BYTES = 64 * 1024 * 1024
FILE_ITEMS = ("File", "H5_File")
OTHER_ITEMS = ("Directory", "H5_Group", "H5_DATASET")
EMPTY = BlobId.of_bytes(b"")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SourceFile:
    """One file of an rmellipse release: where its bytes are, and what they must be."""

    path: str  # the path in the release (NFC)
    blob: BlobId
    size: int
    key: str | None  # the blob's key in the rmellipse archive; None for an empty file


@dataclass(frozen=True)
class SourceRelease:
    """One rmellipse release, as it will be named and described in our archive."""

    name: str
    version: str
    record_key: str
    created: str
    files: tuple[SourceFile, ...]
    metadata: dict[str, Any]

    @property
    def shown(self) -> str:
        return f"{self.name} {self.version}"


def check_marker(src: "ArchiveInterface") -> None:
    """Raise :class:`InvalidInputError` unless ``src`` holds an rmellipse archive (its ``.rmearchive``)."""
    try:
        src.stat_key(MARKER)
    except KeyNotFoundError:
        raise InvalidInputError(f"{src.location} is not an rmellipse archive (it has no {MARKER})") from None


def workspace_namespace(workspace: str) -> str | None:
    """The namespace of a workspace's releases: None for the default workspace, else its slug,
    lowercased with each run of other characters than ``a-z0-9`` made one ``-``
    (``Metrology Group`` -> ``metrology-group``)."""
    if workspace == DEFAULT_WORKSPACE:
        return None
    slug = re.sub(r"[^a-z0-9]+", "-", workspace.lower()).strip("-")
    try:
        return check_namespace(slug)
    except InvalidInputError:
        raise InvalidInputError(f"rmellipse workspace {workspace!r} makes no valid namespace ({slug!r})") from None


def release_name(title: str, namespace: str | None) -> str:
    """Our name for an rmellipse title: the title itself when it is a valid name, else its slug
    (lowercased, each run of characters a name cannot hold made one ``-``)."""
    slug = title
    try:
        check_name(title)
    except InvalidInputError:
        slug = re.sub(r"[^a-z0-9._-]+", "-", title.lower()).strip("-._")
        slug = re.sub(r"\.{2,}", ".", slug)
    name = slug if namespace is None else f"{namespace}/{slug}"
    try:
        return check_name(name)
    except InvalidInputError:
        raise InvalidInputError(f"rmellipse title {title!r} makes no valid release name ({name!r})") from None


def read_releases(src: "ArchiveInterface") -> list[SourceRelease]:
    """Every release of every workspace of the rmellipse archive ``src``, checked and sorted.

    Raises
    ------
    InvalidInputError
        Two releases would get the same name and version, or a name or version is unusable.
    IntegrityError
        A record is not what rmellipse writes.
    """
    releases, seen = [], {}
    for workspace, title, entries in _titles(src):
        namespace = workspace_namespace(workspace)
        for key in _record_keys(f"{workspace}/{title}", title, entries):
            release = _read_release(src, key, workspace, title, release_name(title, namespace))
            other = seen.setdefault((release.name, release.version), key)
            if other != key:
                raise InvalidInputError(f"rmellipse records {other} and {key} would both become {release.shown}")
            releases.append(release)
    return sorted(releases, key=lambda release: (release.name, release.record_key))


def _titles(src: "ArchiveInterface") -> Iterator[tuple[str, str, list[str]]]:
    """(workspace, title, its entries) of every title folder; files at these levels are not
    rmellipse's and are skipped."""
    for workspace in sorted(src.list_keys("")):
        for title in sorted(_folder_entries(src, workspace) or []):
            entries = _folder_entries(src, f"{workspace}/{title}")
            if entries is not None:
                yield workspace, title, entries


def _folder_entries(src: "ArchiveInterface", prefix: str) -> list[str] | None:
    """The names below ``prefix``, or None if it is a file (a link or anything else: raised)."""
    try:
        return src.list_keys(prefix)
    except UnsafeObjectError as exc:
        if exc.what != "a file":
            raise
        logger.debug("skipping the file %s", prefix)
        return None


def _record_keys(folder: str, title: str, entries: list[str]) -> list[str]:
    """The record files of one title folder, as rmellipse finds them (named after the title)."""
    return [f"{folder}/{entry}" for entry in sorted(entries) if entry.endswith(RECORD_SUFFIX) and title in entry]


def _read_release(src: "ArchiveInterface", key: str, workspace: str, title: str, name: str) -> SourceRelease:
    record = _load_record(src, key)
    if record.get("title_versionless") != title:
        raise IntegrityError(f"rmellipse record {key} is for {record.get('title_versionless')!r}, not {title!r}")
    try:
        version = check_release_version(str(record.get("version")))
    except ArchiveError as exc:
        raise InvalidInputError(f"rmellipse record {key}: {exc}") from None
    entries = dict(_project_entries(record.get("project"), key))
    blobs_at = f"{workspace}/{title}/{BLOBS_FOLDER}"
    files = tuple(_source_file(entry, key, blobs_at) for entry in entries.values() if entry["/item/"] in FILE_ITEMS)
    created = dt.datetime.fromtimestamp(src.stat_key(key).mtime, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    kept = {field: value for field, value in record.items() if field != "project"}
    metadata = {"workspace": workspace, "record": key.rsplit("/", 1)[-1], **kept, "project": entries}
    return SourceRelease(name, version, key, created, files, {"rmellipse": _fitting(to_json_value(metadata))})


def _load_record(src: "ArchiveInterface", key: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise InvalidInputError("reading rmellipse records needs PyYAML: install archive[rmellipse]") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        record = yaml.load(src.read_key(key, MAX_RECORD_BYTES), Loader=loader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        raise IntegrityError(f"rmellipse record {key} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(record, dict):
        raise IntegrityError(f"rmellipse record {key} is not a mapping")
    return record


def _project_entries(mapping: Any, key: str, depth: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every entry of a project tree, flat, by its ``/path/``: files, folders, HDF5 groups and
    datasets with their attributes, so the tree fits a record however deep it is."""
    if not isinstance(mapping, dict) or depth > 200:
        raise IntegrityError(f"rmellipse record {key}: the project is not a tree of entries")
    for child_name, child in mapping.items():
        if str(child_name).startswith("/"):
            continue  # the attributes of the entry itself
        if not isinstance(child, dict) or child.get("/item/") not in FILE_ITEMS + OTHER_ITEMS \
                or not isinstance(child.get("/path/"), str):
            raise IntegrityError(f"rmellipse record {key}: project entry {child_name!r} is not one rmellipse writes")
        yield child["/path/"], {field: value for field, value in child.items() if str(field).startswith("/")}
        yield from _project_entries(child, key, depth + 1)


def _source_file(entry: dict[str, Any], key: str, blobs_at: str) -> SourceFile:
    path, size, sha = unicodedata.normalize("NFC", entry["/path/"]), entry.get("/bytes/"), entry.get("/bpid/")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise IntegrityError(f"rmellipse record {key}: {path!r} has no size")
    if size == 0 and sha in (None, EMPTY.hexdigest):
        return SourceFile(path, EMPTY, 0, None)  # rmellipse's download makes it without a blob
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise IntegrityError(f"rmellipse record {key}: {path!r} has no stored content (its /bpid/ is {sha!r})")
    return SourceFile(path, BlobId(sha), size, f"{blobs_at}/{sha[:2]}/{sha}")


def to_json_value(value: Any) -> Any:
    """A YAML value as JSON: dates as ISO text, binary as ``{"base64": ...}``, NaN and infinities
    as text, keys as text; everything else as it is."""
    if isinstance(value, dict):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_json_value(item) for item in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _fitting(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` with each field nested too deep for a record kept as its JSON text
    (``{"json": "..."}``), so nothing is lost and the record stays valid."""
    fitted = {}
    for field, value in metadata.items():
        if json_value_problem({"rmellipse": {field: value}}, MAX_METADATA_DEPTH):
            value = {"json": canonical_json(value).decode("utf-8")}
        fitted[field] = value
    return fitted
