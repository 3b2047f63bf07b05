"""The files of a record at a million entries: canonical JSON out, strict JSON in, path checks.

:mod:`archive.records` says what a record is; this module makes its bulk fast without changing
one byte of the format (docs/format.md). What costs at scale is per-entry Python work, so each
step here does per entry only what cannot be done for the whole list at once:

- **writing**: an entry is one f-string (its keys are known and their canonical order is
  fixed), paths are escaped by the C encoder ``json`` itself uses, and no intermediate dict per
  entry is built; an entry with fields this version does not know goes through ``json.dumps``;
- **reading**: the JSON is parsed by the C parser without a Python hook per object; duplicate
  keys (which that parser would silently merge) are ruled out by checking that the text is the
  canonical serialization of what was parsed, which every record this project writes is, and
  only a text that is not falls back to the strict, hooked parse;
- **no cyclic garbage collection while a record is parsed** (:func:`gc_paused`): each of a
  million new dicts and entries would count towards the next collection, and the collections
  walk every object alive, a third of the parse time at a million entries; nothing a parse
  makes is cyclic garbage;
- **checking paths**: one regular expression and one NFC check over all paths joined, and one
  sort for case clashes and a file standing where a folder is needed; any doubt falls back to
  the exact per-path check of :func:`archive.records.path_problems`, which names the problem.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import re
import unicodedata
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # C, ensure_ascii=False
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from .errors import IntegrityError

if TYPE_CHECKING:
    from .records import FileEntry

#: The largest record a reader accepts: about 2.8 million of the smallest entries, so a release
#: of a million files (about 140 bytes each) fits. Was 64 MiB (about 700,000 files) until issue 14.
MAX_RECORD_BYTES = 256 * 1024 * 1024
#: The most values (objects, arrays, strings, numbers...) metadata may hold, counted as
#: serialized: a bound that a structure sharing one list many times cannot escape.
MAX_METADATA_VALUES = 1_000_000
#: File entries :func:`encode_record` encodes to bytes at a time.
ENCODED_AT_ONCE = 4096
#: The characters a path may not hold anywhere (controls, backslash).
_UNSAFE_CHARACTER = re.compile(r"[\x00-\x1f\x7f\\]")
#: A component that looks like a drive, in paths joined by ``/`` with one before and after.
_DRIVE_COMPONENT = re.compile(r"/[A-Za-z]:")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a bulk of allocations that make no cycles; it
    runs again afterwards as it was (reference counting frees everything meanwhile)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def paths_are_fine(paths: list[str]) -> bool:
    """True when every path is safe and they can coexist: the fast, whole-list form of
    ``not path_problems(paths)``. False means "look closer", not necessarily a problem.

    Joined by ``/``, the paths are one string to search (by substring searches and two simple
    regular expressions, in C): a control character, backslash, empty, ``.`` or ``..`` component,
    drive-like component, lone surrogate or non-NFC text anywhere in it is in one of
    the paths (``/`` composes with nothing in NFC, so it keeps each path's normalization apart).
    Case clashes and a file where a folder is needed are found by sorting the case-folded paths
    with ``/`` as the smallest character, which puts every ``P/...`` right after ``P``.
    """
    if not paths:
        return True
    try:
        joined = "/".join(paths)
    except TypeError:
        return False
    wrapped = f"/{joined}/"  # every component between two "/": an empty, "." or ".." one is a substring
    if ("//" in wrapped or "/./" in wrapped or "/../" in wrapped or _UNSAFE_CHARACTER.search(joined)
            or _DRIVE_COMPONENT.search(wrapped)):
        return False
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if not unicodedata.is_normalized("NFC", joined):
        return False
    return _no_prefix(_sort_keys(paths))


def _sort_keys(paths: list[str]) -> list[str]:
    """The paths case-folded, ``/`` as NUL (the smallest character), sorted. Done on the paths
    joined by a newline, which none holds (the caller refused control characters) and
    case folding never makes: three C calls instead of two method calls per path."""
    return sorted("\n".join(paths).casefold().replace("/", "\0").split("\n"))


def _no_prefix(keys: list[str]) -> bool:
    """True when no key equals the next (a case clash) or is a folder of it (``P`` and ``P/x``)."""
    for key, later in zip(keys, keys[1:]):
        if later == key or later.startswith(key + "\0"):
            return False
    return True


def encode_files(files: Mapping[str, "FileEntry"]) -> str:
    """The canonical JSON of a record's ``files`` object, sorted by path.

    Equal to ``canonical_json({path: entry.to_json() ...})`` decoded, for every entry: an
    entry's known keys sort as ``blob``, ``executable``, ``media_type``, ``size``; an entry with
    fields of a newer version goes through ``json.dumps`` to place them among those.
    """
    return "{" + ",".join(_encoded_entries(sorted(files.items()))) + "}"


def _encoded_entries(items: list[tuple[str, "FileEntry"]]) -> Iterator[str]:
    """``"path":{...}`` of each entry, in the order of ``items``."""
    media_types: dict[str, str] = {}
    for path, entry in items:
        if entry.extra or type(entry.size) is not int:
            yield f"{encode_basestring(path)}:{_dumps(entry.to_json())}"
            continue
        media_type = ""
        if entry.media_type is not None:
            media_type = media_types.get(entry.media_type) or media_types.setdefault(
                entry.media_type, f'"media_type":{encode_basestring(entry.media_type)},')
        executable = '"executable":true,' if entry.executable else ""
        yield (f'{encode_basestring(path)}:{{"blob":"sha256:{entry.blob.hexdigest}",'
               f'{executable}{media_type}"size":{entry.size}}}')


def encode_record(head: Mapping[str, Any], files: Mapping[str, "FileEntry"]) -> bytes:
    """Canonical JSON of a record: the fields of ``head`` and ``files`` (as :func:`encode_files`
    writes them), keys sorted, as :func:`archive.records.canonical_json` would write it.

    The files are encoded :data:`ENCODED_AT_ONCE` entries at a time straight to UTF-8, so the
    only whole copy of the record is the bytes returned (not a string of every entry, then the
    string, then the bytes: three copies of 11 MiB at 100,000 files).
    """
    return b"".join(encoded_record_parts(head, files))


def encoded_record_parts(head: Mapping[str, Any], files: Mapping[str, "FileEntry"]) -> Iterator[bytes]:
    """:func:`encode_record` in pieces, :data:`ENCODED_AT_ONCE` entries at a time."""
    before, after = record_around_files(head)
    yield before
    entries = _encoded_entries(sorted(files.items()))
    separator = "{"
    while chunk := list(itertools.islice(entries, ENCODED_AT_ONCE)):
        yield (separator + ",".join(chunk)).encode("utf-8")
        separator = ","
    yield b"}" if separator == "," else b"{}"
    yield after


def is_text_of(parts: Iterable[bytes], data: bytes) -> bool:
    """True when ``parts`` joined are exactly ``data``, compared piece by piece (no second
    whole copy of a large record)."""
    view, at = memoryview(data), 0
    for part in parts:
        if view[at:at + len(part)] != part:
            return False
        at += len(part)
    return at == len(data)


def record_around_files(head: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """The canonical bytes of a record with the fields of ``head``, before and after the value
    of its ``files`` (which :func:`encode_record` puts between them, or a re-push reuses from
    an earlier record: :mod:`archive.reuse`)."""
    fields = sorted([(key, _dumps(value)) for key, value in head.items() if key != "files"] + [("files", None)])
    before: list[str] = ["{"]
    after: list[str] = []
    for number, (key, text) in enumerate(fields):
        (after if after else before).append(f"{',' if number else ''}{encode_basestring(key)}:")
        if text is None:
            after.append("")  # from here on, the fields come after the files
        else:
            (after if after else before).append(text)
    after.append("}")
    return "".join(before).encode("utf-8"), "".join(after).encode("utf-8")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise IntegrityError(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def load_json(data: bytes, what: str, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """Parse JSON strictly: bounded size, UTF-8, no duplicate keys, no NaN; else IntegrityError."""
    if len(data) > max_bytes:
        raise IntegrityError(f"{what}: {len(data)} bytes, over the {max_bytes} byte limit")
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys,
                          parse_constant=_reject_constant)
    except IntegrityError as exc:
        raise IntegrityError(f"{what}: {exc}") from None
    except RecursionError:  # the C parser's own guard, about 1000 levels deep
        raise IntegrityError(f"{what}: not valid JSON (nested more than this reader can parse)") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"{what}: not valid JSON ({exc})") from None


def _reject_constant(name: str) -> None:
    raise IntegrityError(f"non-standard JSON constant {name}")


def load_canonical(data: bytes) -> Any | None:
    """The JSON value of ``data`` if it is canonical JSON (then it has no duplicate key: the
    C parser keeps the last of two, and the canonical text of what it kept would differ);
    None when it is not, or not JSON at all, for the strict parser to judge."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    try:
        return value if _is_canonical_text(value, data) else None
    except (ValueError, RecursionError):  # NaN, or nested deeper than the encoder goes
        return None


def _is_canonical_text(value: Any, data: bytes) -> bool:
    """True when ``data`` is the canonical serialization of ``value``, compared piece by piece
    (:func:`_canonical_pieces`), so no second whole copy of a large record is made (at 100,000
    files, a string and its bytes: 30 MiB beside the parsed value)."""
    return is_text_of((piece.encode("utf-8") for piece in _canonical_pieces(value)), data)


def _canonical_pieces(value: Any) -> Iterator[str]:
    """``_dumps(value)`` in pieces: an object's members one by one, and a large object among
    them (a record's ``files``) :data:`ENCODED_AT_ONCE` members at a time."""
    if type(value) is not dict or not value:
        yield _dumps(value)
        return
    yield "{"
    for number, (key, member) in enumerate(sorted(value.items())):
        yield f"{',' if number else ''}{encode_basestring(key)}:"
        if type(member) is dict and len(member) > ENCODED_AT_ONCE:
            items = sorted(member.items())
            for start in range(0, len(items), ENCODED_AT_ONCE):
                text = _dumps(dict(items[start:start + ENCODED_AT_ONCE]))
                yield ("{" if start == 0 else ",") + text[1:-1]
            yield "}"
        else:
            yield _dumps(member)
    yield "}"


def json_value_problem(value: Any, max_depth: int) -> str | None:
    """Why ``value`` cannot be part of a record, or None when it can.

    A value can when it is JSON (objects with string keys, arrays, strings encodable as UTF-8,
    finite numbers, booleans, null), nested at most ``max_depth`` deep, with at most
    :data:`MAX_METADATA_VALUES` values. The walk is iterative and stops at the first problem,
    so a value nested a million deep, a structure that refers to itself, or one that shares a
    list so often that it would serialize to terabytes, is refused in time linear in what is
    looked at (at most that many values), never with a RecursionError.
    """
    budget = MAX_METADATA_VALUES
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        budget -= 1
        if budget < 0:
            return f"has more than {MAX_METADATA_VALUES} values"
        if isinstance(item, (dict, list, tuple)):
            if depth >= max_depth:
                return f"is nested more than {max_depth} deep"
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if isinstance(item, dict) and string_problem(key):
                    return f"has a key {key!r} that is not a UTF-8 string"
                stack.append((child, depth + 1))
        elif isinstance(item, str):
            if string_problem(item):
                return f"has a string {item!r} that is not valid UTF-8"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"has a number {item!r} JSON cannot hold"
        elif item is not None and not isinstance(item, (int, bool)):
            return f"has a {type(item).__name__}, which is not JSON"
    return None


def string_problem(text: Any) -> bool:
    """True unless ``text`` is a string that can be encoded as UTF-8 (no lone surrogate)."""
    if not isinstance(text, str):
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
