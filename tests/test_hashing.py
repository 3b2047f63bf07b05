"""Streaming hashing and blob ids."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from archive.errors import IntegrityError, InvalidInputError
from archive.hashing import CHUNK_SIZE, BlobId, hash_file, hash_stream, verified_chunks


def test_hash_file_matches_hashlib_across_chunk_boundaries(tmp_path: Path) -> None:
    data = bytes(range(256)) * (CHUNK_SIZE // 256 * 3 + 7)
    path = tmp_path / "f"
    path.write_bytes(data)
    blob, size = hash_file(path)
    assert (blob.hexdigest, size) == (hashlib.sha256(data).hexdigest(), len(data))


def test_hash_reads_in_bounded_chunks() -> None:
    class Recording(io.BytesIO):
        biggest = 0

        def read(self, n=-1):
            Recording.biggest = max(Recording.biggest, n)
            assert n != -1, "whole-file read"
            return super().read(n)

    hash_stream(Recording(b"x" * (3 * CHUNK_SIZE)))
    assert Recording.biggest == CHUNK_SIZE


def test_blob_id_text_round_trip() -> None:
    blob = BlobId.of_bytes(b"abc")
    assert str(blob) == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert BlobId.parse(str(blob)) == blob


@pytest.mark.parametrize("text", ["md5:abc", "sha256:XYZ", "sha256:" + "A" * 64, "", "sha256", "0" * 64])
def test_blob_id_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidInputError):
        BlobId.parse(text)


def test_verified_chunks_passes_good_data() -> None:
    data = b"hello world"
    assert b"".join(verified_chunks([data[:5], data[5:]], BlobId.of_bytes(data), len(data), "x")) == data


@pytest.mark.parametrize("chunks, size, match", [
    ([b"hello", b" there"], 11, "hashes to"),
    ([b"hello"], 11, "5 bytes, but the record says 11"),
    ([b"hello world", b"!"], 11, "more than the recorded 11 bytes"),
])
def test_verified_chunks_detects_corruption(chunks, size, match) -> None:
    with pytest.raises(IntegrityError, match=match):
        list(verified_chunks(chunks, BlobId.of_bytes(b"hello world"), size, "blob"))


def test_oversized_stream_stops_early() -> None:
    consumed = []

    def endless():
        while True:
            consumed.append(1)
            yield b"x" * 1000

    with pytest.raises(IntegrityError):
        list(verified_chunks(endless(), BlobId.of_bytes(b""), 5000, "blob"))
    assert len(consumed) == 6
