"""Index files: the list of names and each name's versions, readable without listing.

The truth is the set of release pointers (``releases/NAME/VERSION``). Storage that can list
(folder, SFTP, S3) is read directly; storage that cannot (a static HTTP server) is read through
two derived files, ``index.json`` (names) and ``releases/NAME/index.json`` (versions and their
record ids), which every publish rewrites.

Two publishers may rewrite an index at the same time, and the later write could drop what the
earlier one added. :func:`sync_index` makes that harmless: after writing, it lists again and
rewrites until the listing holds nothing the written index lacks. The last writer of an index
therefore always wrote a listing taken after every pointer that existed before its write, so
the index converges to the truth once the publishers are done (see docs/format.md).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from . import layout
from .errors import IntegrityError, InvalidInputError, KeyNotFoundError
from .records import canonical_json, check_name, check_namespace, load_json
from .versions import key_of, sort_versions

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
INDEX_FORMAT = 1
MAX_SYNC_ROUNDS = 50
MAX_INDEX_BYTES = 64 * 1024 * 1024


def list_names(arc: "ArchiveInterface", namespace: str | None = None) -> list[str]:
    """All release names (``NAMESPACE/NAME`` included), or those of one ``namespace``, from a
    listing where possible, else from the names index."""
    if namespace is not None:
        check_namespace(namespace)
    if arc.listable:
        names = _listed_names(arc) if namespace is None else _listed_namespace(arc, namespace)
    else:
        names = _read_index(arc, layout.names_index_key()).get("names", [])
        if namespace is not None:
            names = [name for name in names if name.startswith(f"{namespace}/")]
    return sorted(names)


def list_versions(arc: "ArchiveInterface", name: str) -> list[str]:
    """All versions of ``name`` (unsorted), from a listing where possible, else the index."""
    if arc.listable:
        return _listed_versions(arc, name)
    return versions_in_index(arc, name)


def versions_in_index(arc: "ArchiveInterface", name: str) -> list[str]:
    """The versions the index file of ``name`` lists (empty if it has none)."""
    return list(_read_index(arc, layout.versions_index_key(name)).get("versions", {}))


def update_indexes(arc: "ArchiveInterface", name: str) -> None:
    """Bring the versions index of ``name`` and the names index up to date after a publish."""
    sync_index(arc, layout.versions_index_key(name), lambda: _listed_versions(arc, name),
               lambda versions, old: _versions_document(arc, name, versions, old))
    sync_index(arc, layout.names_index_key(), lambda: _listed_names(arc),
               lambda names, old: {"format": INDEX_FORMAT, "names": sorted(names)})


def sync_index(arc: "ArchiveInterface", key: str, list_now: Callable[[], list[str]],
               build: Callable[[set[str], dict[str, Any]], dict[str, Any]]) -> None:
    """Rewrite the index at ``key`` until a fresh listing adds nothing to what was written.

    A corrupt index is rebuilt from the listing (it is derived), never left to block publishes.
    """
    try:
        old = _read_index(arc, key)
    except IntegrityError as exc:
        logger.warning("%s; rebuilding it", exc)
        old = {}
    listed = set(list_now())
    for _ in range(MAX_SYNC_ROUNDS):
        document = build(listed, old)
        arc.write_key(key, [canonical_json(document) + b"\n"])
        again = set(list_now())
        if again <= listed:
            return
        listed, old = listed | again, document
    logger.warning("%s: index still changing after %d rounds; the next publish completes it", key,
                   MAX_SYNC_ROUNDS)


def _versions_document(arc: "ArchiveInterface", name: str, versions: set[str],
                       old: dict[str, Any]) -> dict[str, Any]:
    known = old.get("versions", {}) if isinstance(old.get("versions"), dict) else {}
    ids = {v: known.get(v) or str(arc.release_id(name, v)) for v in versions}
    ordered = sort_versions(ids)
    return {"format": INDEX_FORMAT, "name": name, "versions": {v: ids[v] for v in ordered}}


def _read_index(arc: "ArchiveInterface", key: str) -> dict[str, Any]:
    """The index at ``key``, or an empty one if it is missing."""
    try:
        document = load_json(arc.read_key(key, MAX_INDEX_BYTES), key, MAX_INDEX_BYTES)
    except KeyNotFoundError:
        return {}
    if not isinstance(document, dict) or document.get("format") != INDEX_FORMAT:
        raise IntegrityError(f"{key}: not an index of format {INDEX_FORMAT}")
    names, versions = document.get("names", []), document.get("versions", {})
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)
            and isinstance(versions, dict) and all(isinstance(i, str) for i in versions.values())):
        raise IntegrityError(f"{key}: names must be a list of strings, versions an object of strings")
    return document


def _listed_names(arc: "ArchiveInterface") -> list[str]:
    """Plain names, and the names of every namespace (one more listing per namespace)."""
    names = []
    for entry in arc.list_keys(layout.RELEASES_DIR):
        namespace = entry[len(layout.NAMESPACE_MARK):] if entry.startswith(layout.NAMESPACE_MARK) else None
        if namespace is None:
            names += [entry] if _is_name(entry) and "/" not in entry else []
        elif _is_name(namespace) and "/" not in namespace:
            names += _listed_namespace(arc, namespace)
    return names


def _listed_namespace(arc: "ArchiveInterface", namespace: str) -> list[str]:
    names = (f"{namespace}/{entry}" for entry in arc.list_keys(layout.namespace_dir(namespace)) if "/" not in entry)
    return [name for name in names if _is_name(name)]


def _listed_versions(arc: "ArchiveInterface", name: str) -> list[str]:
    return [entry for entry in arc.list_keys(layout.release_dir(name)) if _is_version(entry)]


def _is_name(text: str) -> bool:
    try:
        check_name(text)
    except InvalidInputError:
        return False
    return True


def _is_version(text: str) -> bool:
    return key_of(text) is not None
