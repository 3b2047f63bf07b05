"""Release records: schema, canonical form, name and path rules, hostile input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archive.errors import IntegrityError, InvalidNameError, InvalidPathError
from archive.hashing import BlobId
from archive.records import (MAX_RECORD_BYTES, FileEntry, Release, canonical_json, check_name, check_path,
                             check_paths, parse_record)

BLOB = BlobId.of_bytes(b"x")


def record_json(**overrides) -> dict:
    base = {"format": 1, "name": "calib", "version": "1.0.0", "created": "2026-01-01T00:00:00Z",
            "metadata": {"author": "ann"}, "files": {"a.txt": {"blob": str(BLOB), "size": 1}}}
    base.update(overrides)
    return base


def test_round_trip_is_canonical_and_content_addressed() -> None:
    release = Release.create("calib", "1.0.0", {"b/c.txt": FileEntry(BLOB, 1), "a.txt": FileEntry(BLOB, 1)},
                             {"message": "first"})
    data = release.to_bytes()
    assert data == canonical_json(json.loads(data))
    again = parse_record(data)
    assert again == release and again.record_id == BlobId.of_bytes(data)
    assert list(again.files) == ["a.txt", "b/c.txt"]


def test_unknown_fields_are_preserved() -> None:
    obj = record_json(signature="abc", files={"a.txt": {"blob": str(BLOB), "size": 1, "mode": 420}})
    release = parse_record(canonical_json(obj))
    assert json.loads(release.to_bytes()) == obj


@pytest.mark.parametrize("name", ["calib", "a", "cal-ib_2.0", "x" * 128, "0day"])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "Calib", "-x", "x-", ".x", "a/b", "a..b", "x" * 129, "café", "a b", "index json"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid release name"):
        check_name(name)


@pytest.mark.parametrize("path, problem", [
    ("../etc/passwd", "'..'"), ("a/../../b", "'..'"), ("/etc/passwd", "absolute"), ("C:/x", "absolute"),
    ("c:x", "absolute"), ("a\\b", "backslash"), ("a\x00b", "control"), ("a//b", "empty"), ("./a", "'.'"),
    ("a/", "empty"), ("", "empty"), ("e\u0301", "NFC"), ("a\nb", "control"), ("\udcff", "UTF-8"),
])
def test_unsafe_paths(path: str, problem: str) -> None:
    with pytest.raises(InvalidPathError, match=problem):
        check_path(path)


def test_case_and_prefix_collisions() -> None:
    with pytest.raises(InvalidPathError, match="case-insensitive"):
        check_paths(["A.txt", "a.txt"])
    with pytest.raises(InvalidPathError, match="needs it to be a folder"):
        check_paths(["data", "data/x.csv"])
    check_paths(["data/x.csv", "data2", "Data-x"])


@pytest.mark.parametrize("mutate, match", [
    (lambda o: o.update(format=2), "unsupported record format"),
    (lambda o: o.update(name="../x"), "invalid release name"),
    (lambda o: o.update(version="1.0"), "invalid version"),
    (lambda o: o.update(version="v1.0.0"), "invalid version"),
    (lambda o: o.update(files={"../x": {"blob": str(BLOB), "size": 1}}), "unsafe path"),
    (lambda o: o.update(files={"a": {"blob": "md5:00", "size": 1}}), "not a blob id"),
    (lambda o: o.update(files={"a": {"blob": str(BLOB), "size": -1}}), "size"),
    (lambda o: o.update(files={"a": {"blob": str(BLOB), "size": True}}), "size"),
    (lambda o: o.update(files=[]), "files is an object"),
    (lambda o: o.pop("files"), "bad schema"),
    (lambda o: o.update(metadata={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": {"l": {"m": {"n": {"o": {"p": {"q": 1}}}}}}}}}}}}}}}}}), "nested"),
])
def test_schema_violations_are_integrity_errors(mutate, match) -> None:
    obj = record_json()
    mutate(obj)
    with pytest.raises(IntegrityError, match=match):
        parse_record(canonical_json(obj))


@pytest.mark.parametrize("data, match", [
    (b'{"format":1,"format":1}', "duplicate JSON key"),
    (b'{"format":1', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b'{"format": NaN}', "non-standard JSON constant"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
])
def test_malformed_json(data: bytes, match: str) -> None:
    with pytest.raises(IntegrityError, match=match):
        parse_record(data)


def test_oversized_record_refused_before_parsing() -> None:
    with pytest.raises(IntegrityError, match="byte limit"):
        parse_record(b" " * (MAX_RECORD_BYTES + 1))


@given(st.text(max_size=40))
def test_path_check_never_lets_a_path_escape(path: str) -> None:
    """Whatever the text, a path that passes stays inside any folder it is joined to."""
    try:
        check_path(path)
    except InvalidPathError:
        return
    import posixpath

    joined = posixpath.normpath(posixpath.join("/dest", path))
    assert joined.startswith("/dest/") and "\\" not in path and "\x00" not in path


@given(st.binary(max_size=300))
def test_parser_only_raises_integrity_errors(data: bytes) -> None:
    try:
        parse_record(data)
    except IntegrityError:
        pass


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
                    max_leaves=20))
def test_parser_on_arbitrary_json_shapes(value) -> None:
    for obj in (value, record_json(files=value), record_json(metadata=value)):
        try:
            parse_record(canonical_json(obj))
        except IntegrityError:
            pass
