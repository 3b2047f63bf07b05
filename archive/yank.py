"""Yanking: a release found wrong stops being picked by ranges, without breaking anyone who pinned it.

The release itself is never altered. Yanking appends a create-only marker,
``yanks/NAME/VERSION/NNNNNNNN.json`` (see docs/format.md), saying who yanked it, when and why;
unyanking appends another, so the history is kept and auditable. The last marker of a version
says its state. Markers are numbered, and each number is taken by a create-only write, so two
people yanking at once both get their marker, in a definite order.

A yanked version is skipped by a range (``^1`` picks 1.2.2 over a yanked 1.2.3) but still
served to an exact version (``1.2.3``, ``=1.2.3``) and to a lock. Reading the state costs one
listing per resolve (``yanks/NAME``; nothing more when no version of the name was ever yanked),
plus one listing and one small read per yanked version. Storage that cannot list (a static web
server) shows no yanks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from . import layout
from .errors import IntegrityError, InvalidInputError, KeyExistsError, KeyNotFoundError
from .records import canonical_json, check_name, load_json
from .versions import check_release_version, key_of, parse_version

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
MARKER_FORMAT = 1
MAX_MARKER_BYTES = 64 * 1024
MAX_REASON_CHARS = 2000
MAX_INDEX_BYTES = 16 * 1024 * 1024
INDEX_FORMAT = 1
_ACTIONS = ("yank", "unyank")


@dataclass(frozen=True)
class YankMarker:
    """One yank or unyank of a release: what, who, when (UTC, ISO 8601) and why."""

    action: str
    name: str
    version: str
    reason: str
    by: str
    at: str

    def to_json(self) -> dict[str, Any]:
        return {"format": MARKER_FORMAT, "action": self.action, "name": self.name, "version": self.version,
                "reason": self.reason, "by": self.by, "at": self.at}


def yank(arc: "ArchiveInterface", name: str, version: str, reason: str, by: str) -> YankMarker:
    """Mark ``name`` ``version`` as yanked for ``reason``; ranges skip it from now on.

    Raises
    ------
    InvalidInputError
        The reason is empty or too long.
    ReleaseNotFoundError
        There is no such release.
    """
    return _append(arc, "yank", name, version, reason, by)


def unyank(arc: "ArchiveInterface", name: str, version: str, reason: str, by: str) -> YankMarker:
    """Take back a yank of ``name`` ``version``: ranges pick it again; the yank stays in its history."""
    return _append(arc, "unyank", name, version, reason, by)


def _append(arc: "ArchiveInterface", action: str, name: str, version: str, reason: str, by: str) -> YankMarker:
    check_name(name)
    version = check_release_version(version)
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON_CHARS:
        raise InvalidInputError(f"a {action} needs a reason of 1 to {MAX_REASON_CHARS} characters")
    arc.check_writable()
    arc.release_id(name, version)  # ReleaseNotFoundError if there is none
    history = _marker_keys(arc, name, version)
    if (history and _read(arc, history[-1]).action == action) or (not history and action == "unyank"):
        raise InvalidInputError(f"{name} {version} is {'not ' if action == 'unyank' else ''}yanked already")
    marker = YankMarker(action, name, version, reason, by, datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    number = len(history) + 1
    while True:  # a concurrent writer took the number: take the next one
        try:
            arc.write_key(layout.yank_key(name, version, number), [canonical_json(marker.to_json()) + b"\n"],
                          exclusive=True)
            break
        except KeyExistsError:
            number += 1
    update_yank_index(arc, name)
    logger.info("%sed %s %s: %s", action, name, version, reason)
    return marker


def history(arc: "ArchiveInterface", name: str, version: str) -> list[YankMarker]:
    """Every yank and unyank of ``name`` ``version``, oldest first (on storage that cannot
    list: the yank in force only, from the yank index)."""
    if not arc.listable:
        return _indexed(arc, name, "history").get(version, [])
    return [_read(arc, key) for key in _marker_keys(arc, name, version)]


def state(arc: "ArchiveInterface", name: str, version: str) -> YankMarker | None:
    """The marker that yanked ``name`` ``version``, or None if it is not yanked now."""
    if not arc.listable:
        return _indexed(arc, name).get(version)
    keys = _marker_keys(arc, name, version)
    last = _read(arc, keys[-1]) if keys else None
    return last if last is not None and last.action == "yank" else None


def yanked(arc: "ArchiveInterface", name: str) -> dict[str, YankMarker]:
    """The versions of ``name`` that are yanked now, each with the marker that yanked it."""
    if not arc.listable:
        return _indexed(arc, name)
    states = {}
    for version in arc.list_keys(layout.yank_dir(name)):
        if key_of(version) is None:
            continue
        marker = state(arc, name, version)
        if marker is not None:
            states[version] = marker
    return states


def update_yank_index(arc: "ArchiveInterface", name: str) -> None:
    """Rewrite ``yanks/NAME/index.json`` from the markers (see :func:`archive.index.sync_index`:
    markers are only ever added, so concurrent yanks converge to the truth)."""
    from .index import sync_index

    def list_now() -> list[str]:
        return [key for version in arc.list_keys(layout.yank_dir(name)) if key_of(version) is not None
                for key in _marker_keys(arc, name, version)]

    def build(keys: set[str], old: dict) -> dict:
        markers: dict[str, list[dict]] = {}
        for key in sorted(keys):
            markers.setdefault(key.rsplit("/", 2)[-2], []).append(_read(arc, key).to_json())
        return {"format": INDEX_FORMAT, "name": name, "history": dict(sorted(markers.items())),
                "yanked": {v: ms[-1] for v, ms in sorted(markers.items()) if ms[-1]["action"] == "yank"}}

    sync_index(arc, layout.yank_index_key(name), list_now, build)


def _indexed(arc: "ArchiveInterface", name: str, field: str = "yanked") -> dict:
    """The yanks of ``name`` in force (``yanked``: version -> marker) or all of them
    (``history``: version -> markers), as its yank index lists them (empty when it has none)."""
    key = layout.yank_index_key(name)
    try:
        document = load_json(arc.read_key(key, MAX_INDEX_BYTES), key, MAX_INDEX_BYTES)
    except KeyNotFoundError:
        return {}
    entries = document.get(field) if isinstance(document, dict) else None
    if document.get("format") != INDEX_FORMAT or not isinstance(entries, dict):
        raise IntegrityError(f"{key}: not a yank index of format {INDEX_FORMAT}")
    if field == "yanked":
        return {version: _marker_from(entry, key) for version, entry in entries.items()}
    if not all(isinstance(markers, list) for markers in entries.values()):
        raise IntegrityError(f"{key}: history must map versions to lists of markers")
    return {version: [_marker_from(entry, key) for entry in markers] for version, markers in entries.items()}


def is_exact(range_: str) -> bool:
    """True when ``range_`` names one version (``1.2.3``, ``=1.2.3``, ``==1.2.3``): a yanked
    version is still served to it."""
    text = range_.strip().lstrip("=").strip().removeprefix("v")
    try:
        parse_version(text)
    except InvalidInputError:
        return False
    return True


def _marker_keys(arc: "ArchiveInterface", name: str, version: str) -> list[str]:
    folder = f"{layout.yank_dir(name)}/{version}"
    return [f"{folder}/{entry}" for entry in sorted(arc.list_keys(folder))
            if entry.endswith(".json") and entry[:-5].isdigit()]


def _read(arc: "ArchiveInterface", key: str) -> YankMarker:
    try:
        document = load_json(arc.read_key(key, MAX_MARKER_BYTES), key, MAX_MARKER_BYTES)
    except KeyNotFoundError:
        raise IntegrityError(f"{key}: yank marker vanished") from None
    return _marker_from(document, key)


def _marker_from(document: object, key: str) -> YankMarker:
    fields = ("action", "name", "version", "reason", "by", "at")
    if not isinstance(document, dict) or not all(isinstance(document.get(f), str) for f in fields) \
            or document["action"] not in _ACTIONS:
        raise IntegrityError(f"{key}: not a yank marker")
    return YankMarker(*(document[f] for f in fields))


def copy_markers(source: "ArchiveInterface", target: "ArchiveInterface", releases: list[tuple[str, str]]) -> int:
    """Copy to ``target`` the yank markers of ``releases`` (``(name, version)`` pairs) it lacks,
    so that a mirror skips what its source skips; return how many were copied.

    Costs one listing of ``yanks/NAME`` per name on the source, and one per yanked version on
    both sides. A marker the target holds under the same number is left as it is.
    """
    if not source.listable:
        return 0
    copied = 0
    wanted: dict[str, set[str]] = {}
    for name, version in releases:
        wanted.setdefault(name, set()).add(version)
    for name, versions in wanted.items():
        for version in set(source.list_keys(layout.yank_dir(name))) & versions:
            have = {key.rsplit("/", 1)[-1] for key in _marker_keys(target, name, version)}
            for key in _marker_keys(source, name, version):
                if key.rsplit("/", 1)[-1] in have:
                    continue
                try:
                    target.write_key(key, [source.read_key(key, MAX_MARKER_BYTES)], exclusive=True)
                    copied += 1
                except KeyExistsError:
                    pass
        update_yank_index(target, name)
    return copied
