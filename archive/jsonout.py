"""The ``--json`` outputs of the commands: one function per schema, documented in docs/json.md.

Keeping every schema here, apart from the printing, lets a change to one be seen (and
versioned) in one place. Each function returns plain JSON values; fields are only ever added.
A record (``show --json``) may list a million files: :func:`record_json_chunks` writes its
indented text in pieces, without a dict per entry nor ``json``'s pure-Python indenting encoder.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

if TYPE_CHECKING:
    from .download import PullReport
    from .gc import GcReport
    from .placed import Status
    from .records import FileEntry, Release
    from .verify import VerifyReport
    from .yank import YankMarker


def yank_json(marker: "YankMarker | None") -> dict[str, str] | None:
    """``{"reason", "by", "at"}`` of a yank, or None."""
    return None if marker is None else {"reason": marker.reason, "by": marker.by, "at": marker.at}


def pull_json(release: "Release", report: "PullReport", yank: "YankMarker | None") -> dict[str, Any]:
    return {"name": release.name, "version": release.version, "record": str(release.record_id),
            "folder": str(report.folder), "files": report.files, "written": report.written,
            "already_there": report.already_there, "removed": list(report.removed), "yanked": yank_json(yank)}


def status_json(folder: str, report: "Status") -> dict[str, Any]:
    pulled = report.pulled
    return {"folder": folder, "name": pulled.name, "version": pulled.version, "record": pulled.record_id,
            "archive": pulled.archive, "clean": report.clean, "modified": report.modified,
            "missing": report.missing, "extra": report.extra}


def verify_json(report: "VerifyReport", cache: bool, rehashed: bool) -> dict[str, Any]:
    return {"ok": report.ok, "cache": cache, "releases": None if cache else report.releases,
            "blobs": report.blobs, "bytes": report.bytes, "rehashed": rehashed,
            "errors": report.errors, "warnings": report.warnings}


def gc_json(report: "GcReport", dry_run: bool, grace_hours: float) -> dict[str, Any]:
    return {"dry_run": dry_run, "removed": report.removed, "restored": report.restored,
            "bytes_freed": report.bytes_freed, "kept_young": report.kept_young, "grace_hours": grace_hours}


#: Entries per piece of :func:`record_json_chunks`.
CHUNK_ENTRIES = 10_000


def record_json_chunks(release: "Release", ensure_ascii: bool) -> Iterator[str]:
    """``json.dumps(release.to_json(), indent=2, sort_keys=True, ensure_ascii=...)`` in pieces.

    Every field but ``files`` is written by ``json.dumps`` itself; each file entry is one
    f-string (its known keys sort as blob, executable, media_type, size), an entry with fields
    of a newer version goes through ``json.dumps``. The joined pieces equal the one text.
    """
    head = release.to_json()  # the files are replaced below: only the other fields are dumped
    head["files"] = {}
    fields = sorted(head.items())
    encode = encode_basestring_ascii if ensure_ascii else encode_basestring
    yield "{"
    for number, (key, value) in enumerate(fields):
        yield ("," if number else "") + f"\n  {encode(key)}: "
        if key == "files" and release.files:
            yield from _files_chunks(release.files, encode, ensure_ascii)
        else:
            yield _indented(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=ensure_ascii), "  ")
    yield "\n}"


def _files_chunks(files: "Mapping[str, FileEntry]", encode: Callable[[str], str],
                  ensure_ascii: bool) -> Iterator[str]:
    """The indented ``files`` object (not empty), :data:`CHUNK_ENTRIES` entries a piece."""
    opening, lines = "{\n", []
    for path, entry in sorted(files.items()):
        lines.append(f"    {encode(path)}: {_entry_text(entry, encode, ensure_ascii)}")
        if len(lines) == CHUNK_ENTRIES:
            yield opening + ",\n".join(lines)
            opening, lines = ",\n", []
    if lines:
        yield opening + ",\n".join(lines)
    yield "\n  }"


def _entry_text(entry: "FileEntry", encode: Callable[[str], str], ensure_ascii: bool) -> str:
    if entry.extra or type(entry.size) is not int:
        return _indented(json.dumps(entry.to_json(), indent=2, sort_keys=True, ensure_ascii=ensure_ascii), "    ")
    executable = '\n      "executable": true,' if entry.executable else ""
    media_type = "" if entry.media_type is None else f'\n      "media_type": {encode(entry.media_type)},'
    return f'{{\n      "blob": "{entry.blob}",{executable}{media_type}\n      "size": {entry.size}\n    }}'


def _indented(text: str, prefix: str) -> str:
    """``text`` (indented JSON) as the value of a key at ``prefix``: its later lines shifted."""
    return text.replace("\n", "\n" + prefix)
