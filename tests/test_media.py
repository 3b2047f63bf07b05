"""Media types in records: detected from content and name, optional, never part of identity."""

from __future__ import annotations

import doctest
import json
import os
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import archive.media
from archive import layout
from archive.hashing import BlobId
from archive.media import detect_media_type
from archive.records import parse_record
from tests.conftest import make_tree


def test_doctests() -> None:
    assert doctest.testmod(archive.media).failed == 0


@pytest.mark.parametrize("head, path, expected", [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "plot.dat", "image/png"),  # content beats the name
    (b"\x1f\x8b\x08\x00", "table.csv.gz", "application/gzip"),
    (b"\x89HDF\r\n\x1a\n", "run.h5", "application/x-hdf5"),
    (b"\x93NUMPY\x01\x00", "a.npy", "application/x-npy"),
    (b"PK\x03\x04rest", "sheet.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    (b"PK\x03\x04rest", "bundle.bin", "application/zip"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "a.bin", "audio/wav"),
    (b"ch,gain\n", "gains.csv", "text/csv"),
    (b"{}", "run.json", "application/json"),
    (b"caf\xc3\xa9 au lait \xe2\x82", "README", "text/plain"),  # a character cut at the end of the head
    (b"\x00\x01\x02", "blob", "application/octet-stream"),
    (b"\xff\xfe\xfa", "blob", "application/octet-stream"),
])
def test_detection(head: bytes, path: str, expected: str) -> None:
    assert detect_media_type(head, path) == expected


def test_ustar_is_found_at_its_offset() -> None:
    head = bytes(257) + b"ustar\x0000"
    assert detect_media_type(head + bytes(100), "backup") == "application/x-tar"


def _first_signature_in_order(head: bytes) -> str | None:
    """What the signatures say when tried one by one, in their order (the definition)."""
    for offset, signature, media_type in archive.media.SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            return media_type
    return None


_A_SIGNATURE = st.sampled_from([None, *range(len(archive.media.SIGNATURES))])


@settings(max_examples=300, deadline=None)
@given(_A_SIGNATURE, _A_SIGNATURE, st.binary(max_size=600))
def test_signatures_are_tried_in_their_order(first: int | None, second: int | None, noise: bytes) -> None:
    """The lookup by first byte finds what trying every signature in order finds, also for a
    head that carries two of them (one at its start, ``ustar`` at 257)."""
    head = bytearray(noise.ljust(600, b"\0") if first is not None or second is not None else noise)
    for chosen in (first, second):
        if chosen is not None:
            offset, signature, _ = archive.media.SIGNATURES[chosen]
            head[offset:offset + len(signature)] = signature
    expected = _first_signature_in_order(bytes(head))
    assert archive.media._by_signature(bytes(head)) == expected
    if expected is not None:
        assert detect_media_type(bytes(head), "x.unknownsuffix") == expected


def test_publish_records_media_types_also_for_large_and_remembered_files(folder_archive, tmp_path: Path) -> None:
    big = b"\x89PNG\r\n\x1a\n" + os.urandom(6 * 1024 * 1024)  # uploaded as it is hashed
    src = make_tree(tmp_path / "src", {"big.img": big, "notes.txt": b"hello", "data.json": b"[1]"})
    first = folder_archive.publish(src, "calib", "1.0.0", progress=False)
    types = {p: e.media_type for p, e in first.files.items()}
    assert types == {"big.img": "image/png", "notes.txt": "text/plain", "data.json": "application/json"}
    old = 1_000_000_000
    for path in src.iterdir():
        os.utime(path, (old, old))  # settled: remembered by the stat cache from now on
    folder_archive.publish(src, "calib", "1.1.0", progress=False)
    (src / "added.csv").write_bytes(b"a,b\n")
    third = folder_archive.publish(src, "calib", "1.2.0", progress=False)
    assert {p: e.media_type for p, e in third.files.items()} == {**types, "added.csv": "text/csv"}


def test_a_record_without_media_types_stays_readable_and_equal(folder_archive, tmp_path: Path) -> None:
    """A release recorded before the field existed: read as before, and publishing the same
    folder again under its version is still a no-op (the field is not part of identity)."""
    src = make_tree(tmp_path / "src", {"a.csv": b"x,y\n"})
    entry = {"blob": str(BlobId.of_bytes(b"x,y\n")), "size": 4}
    record = {"created": "2026-01-01T00:00:00Z", "files": {"a.csv": entry}, "format": 1, "metadata": {},
              "name": "calib", "version": "1.0.0"}
    data = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    folder_archive.write_key(layout.blob_key(BlobId.of_bytes(b"x,y\n")), [b"x,y\n"])
    folder_archive.write_key(layout.blob_key(BlobId.of_bytes(data)), [data])
    folder_archive.write_key(layout.release_key("calib", "1.0.0"), [f"{BlobId.of_bytes(data)}\n".encode()])
    old = folder_archive.resolve("calib", "1.0.0")
    assert old.files["a.csv"].media_type is None and old.to_bytes() == data
    again = folder_archive.publish(src, "calib", "1.0.0", progress=False)
    assert again.record_id == old.record_id


def test_a_bad_media_type_is_refused_and_unknown_fields_kept() -> None:
    blob = str(BlobId.of_bytes(b""))
    base = {"created": "2026-01-01T00:00:00Z", "format": 1, "metadata": {}, "name": "n", "version": "1.0.0"}
    bad = json.dumps({**base, "files": {"f": {"blob": blob, "size": 0, "media_type": 7}}}).encode()
    with pytest.raises(archive.IntegrityError, match="media_type"):
        parse_record(bad)
    kept = json.dumps({**base, "files": {"f": {"blob": blob, "size": 0, "media_type": "text/plain", "z": 1}}},
                      sort_keys=True, separators=(",", ":")).encode()
    assert parse_record(kept).to_bytes() == kept


_NAME_PARTS = st.sampled_from(["", ".", "..", "a", "B", "tar", "gz", "GZ", "tgz", "svgz", "bin", "csv", "json",
                               "Z", "bz2", "xz", "html", "HTML", "dat", "data:", "x/", "/"])


@given(st.lists(_NAME_PARTS, max_size=8).map("".join))
def test_a_type_by_name_is_the_one_mimetypes_guesses(path: str) -> None:
    """Asked by the name's ending and remembered, the guess is still ``guess_type``'s own for
    every name, except where ``guess_type`` reads the path as a URL (``scheme:`` before any
    ``/``, whose scheme it drops): a release path is never one."""
    import mimetypes
    import re

    from archive.media import _by_name

    assume(not re.match(r"[^/:]+:", path))
    assert _by_name(path) == mimetypes.guess_type(path, strict=False)[0]
