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


@pytest.mark.parametrize("name", ["", "Calib", "-x", "x-", ".x", "a/b/c", "a..b", "x" * 129, "café", "a b", "index json"])
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


def nested_json(depth: int) -> bytes:
    """JSON text of an object nested ``depth`` deep, built without recursion."""
    return b'{"a":' * depth + b"{}" + b"}" * depth


def record_with_raw(field: bytes, value: bytes) -> bytes:
    """A record's JSON with ``value`` (raw JSON text) in place of ``field``'s value."""
    marker = '"__hole__"'
    text = canonical_json(record_json(**{field.decode(): "__hole__"}))
    return text.replace(marker.encode(), value)


@pytest.mark.parametrize("depth", [600, 990, 100_000])
@pytest.mark.parametrize("field", [b"metadata", b"future_field"])
def test_a_record_nested_deep_is_an_integrity_error(depth: int, field: bytes) -> None:
    """Deep in metadata or in a field this version does not know: refused, never a
    RecursionError (json parses ~1000 deep, which recursive checks and printing could not)."""
    with pytest.raises(IntegrityError, match="nested more than 16 deep|not valid JSON"):
        parse_record(record_with_raw(field, nested_json(depth)))


def test_a_file_entry_with_a_deep_unknown_field_is_an_integrity_error() -> None:
    data = record_with_raw(b"files", b'{"a.txt":{"blob":"%s","size":1,"x":%s}}' % (str(BLOB).encode(), nested_json(500)))
    with pytest.raises(IntegrityError, match="file entry is nested more than 16 deep"):
        parse_record(data)


@pytest.mark.parametrize("raw, match", [
    (b'{"a":"\\ud800"}', "not valid UTF-8"),
    (b'{"\\udcff":1}', "not a UTF-8 string"),
])
def test_a_record_with_a_lone_surrogate_is_an_integrity_error(raw: bytes, match: str) -> None:
    """Valid JSON escapes can spell a string UTF-8 cannot hold: the record could never be
    serialized again (its id, ``show --json``), so it is refused when read."""
    with pytest.raises(IntegrityError, match=match):
        parse_record(record_with_raw(b"metadata", raw))


def test_metadata_nested_100000_deep_is_refused_before_serializing() -> None:
    from archive.errors import InvalidInputError

    deep: dict = {}
    for _ in range(100_000):
        deep = {"a": deep}
    with pytest.raises(InvalidInputError, match="metadata is nested more than 16 deep"):
        Release.create("calib", "1.0.0", {"a.txt": FileEntry(BLOB, 1)}, {"deep": deep})


def self_referring() -> dict:
    loop: dict = {}
    loop["me"] = loop
    return loop


@pytest.mark.parametrize("metadata, match", [
    ({"when": {1, 2}}, "has a set, which is not JSON"),
    ({"x": float("nan")}, "JSON cannot hold"),
    ({1: "x"}, "key 1 that is not"),
    ({"s": "\udcff"}, "not valid UTF-8"),
    (self_referring(), "nested more than 16 deep"),
    (["not", "a", "mapping"], "not a mapping"),
])
def test_metadata_that_is_not_json_is_refused_in_one_line(metadata, match: str) -> None:
    from archive.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=match):
        Release.create("calib", "1.0.0", {"a.txt": FileEntry(BLOB, 1)}, metadata)


def test_metadata_sharing_one_list_many_times_is_bounded() -> None:
    """A value whose shared parts expand to more nodes than a record holds bytes is refused
    once that budget is spent, not after walking (or serializing) all of them."""
    from archive.errors import InvalidInputError
    from archive.records import json_value_problem

    wide: list = [0] * 64
    for _ in range(6):  # 64 ** 7 = 4e12 values, 7 deep
        wide = [wide] * 64
    assert json_value_problem({"w": wide}, 16).startswith("has more than")
    with pytest.raises(InvalidInputError, match="has more than"):
        Release.create("calib", "1.0.0", {"a.txt": FileEntry(BLOB, 1)}, {"w": wide})


@pytest.mark.timeout(20)  # a hang guard only: the quadratic check took hours on these
def test_path_checks_are_linear_in_the_size_of_the_paths() -> None:
    deep = "/".join(["d"] * 200_000)
    check_paths([deep])
    with pytest.raises(InvalidPathError, match="needs it to be a folder"):
        check_paths([deep, deep + "/x"])
    with pytest.raises(InvalidPathError, match="clash on a case-insensitive"):
        check_paths([deep, deep.upper()])
    many = [f"dir{i % 100}/sub{i % 7}/file{i}.txt" for i in range(100_000)]
    check_paths(many)
    with pytest.raises(InvalidPathError, match="'dir3' is a file"):
        check_paths(many + ["dir3"])


def test_path_problems_lists_every_problem() -> None:
    from archive.records import path_problems

    problems = path_problems(["ok", "A", "a", "b", "b/c", "../x", "n\nl"])
    assert problems == ["paths 'A' and 'a' clash on a case-insensitive filesystem",
                        "unsafe path '../x' in release: empty, '.' or '..' component",
                        "unsafe path 'n\\nl' in release: control character",
                        "'b' is a file but 'b/c' needs it to be a folder"]


def test_a_record_written_here_is_parsed_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes :meth:`Release.to_bytes` writes are recognized by encoding what the C parser
    read (no second parse, no re-dump); any other text takes the checking path."""
    import archive.records as records

    release = Release.create("calib", "1.2.3", {f"d/f{i}.csv": FileEntry(BLOB, i, media_type="text/csv")
                                                for i in range(3)}, {"note": "x"})
    data = release.to_bytes()
    monkeypatch.setattr(records, "load_canonical", lambda data: pytest.fail("parsed a second time"))
    assert parse_record(data) == release
    other = data.replace(b'"metadata":{"note":"x"}', b'"metadata": {"note":"x"}')  # valid, not canonical
    with pytest.raises(pytest.fail.Exception, match="parsed a second time"):
        parse_record(other)
