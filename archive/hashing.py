"""Streaming sha256 and content addresses.

A blob is named by the sha256 of its bytes, written ``sha256:<64 hex digits>``. The text form is
parsed in exactly one place (:meth:`BlobId.parse`). Files are hashed in fixed-size chunks so
memory stays flat however large they are; ``hashlib`` releases the GIL on large updates, so
several files hash in parallel threads.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from .errors import IntegrityError, InvalidInputError

CHUNK_SIZE = 1024 * 1024
ALGORITHM = "sha256"
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, order=True, slots=True)
class BlobId:
    """The content address of a blob: its sha256 as lowercase hex.

    >>> BlobId.parse("sha256:" + "0" * 64).hexdigest[:4]
    '0000'
    """

    hexdigest: str

    def __post_init__(self) -> None:
        if not _HEX.fullmatch(self.hexdigest):
            raise InvalidInputError(f"not a sha256 hex digest: {self.hexdigest!r}")

    @classmethod
    def parse(cls, text: str) -> "BlobId":
        """Parse ``sha256:<hex>``; anything else raises :class:`InvalidInputError`."""
        algorithm, sep, hexdigest = text.partition(":")
        if not sep or algorithm != ALGORITHM:
            raise InvalidInputError(f"not a blob id (want 'sha256:<hex>'): {text!r}")
        return cls(hexdigest)

    @classmethod
    def of_bytes(cls, data: bytes) -> "BlobId":
        """The id of an in-memory byte string (records, small files)."""
        return cls.of_digest(hashlib.sha256(data).hexdigest())

    @classmethod
    def of_digest(cls, hexdigest: str) -> "BlobId":
        """The id of a digest ``hashlib`` just gave: not checked again (a publish makes one per
        new file; the check costs as much as the rest of making it)."""
        blob = object.__new__(cls)
        object.__setattr__(blob, "hexdigest", hexdigest)
        return blob

    def __str__(self) -> str:
        return f"{ALGORITHM}:{self.hexdigest}"

    @property
    def short(self) -> str:
        """The first 12 hex digits, for messages and listings."""
        return self.hexdigest[:12]


def iter_chunks(stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield a binary stream in chunks until it is exhausted."""
    while chunk := stream.read(chunk_size):
        yield chunk


class HashingChunks:
    """Pass chunks through, hashing them on the way: one read serves the hash and the write.

    :attr:`blob_id` and :attr:`size` describe the bytes that went by; the id is known once the
    chunks are exhausted (reading it earlier raises ``RuntimeError``).
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self._digest = hashlib.sha256()
        self._blob_id: BlobId | None = None
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self._digest.update(chunk)
            self.size += len(chunk)
            yield chunk
        self._blob_id = BlobId(self._digest.hexdigest())

    @property
    def blob_id(self) -> BlobId:
        if self._blob_id is None:
            raise RuntimeError("the chunks have not all gone by yet")
        return self._blob_id


def hash_stream(stream: BinaryIO, on_bytes: Callable[[int], None] | None = None) -> tuple[BlobId, int]:
    """Hash a stream in chunks; return its id and its length in bytes.

    ``on_bytes`` (a progress callback) hears of each chunk as it is hashed, so a bar moves
    during a large file, not only after it.
    """
    hashing = HashingChunks(iter_chunks(stream))
    for chunk in hashing:
        if on_bytes is not None:
            on_bytes(len(chunk))
    return hashing.blob_id, hashing.size


def hash_file(path: Path) -> tuple[BlobId, int]:
    """Hash a file in chunks; return its id and size. Never reads it whole into memory."""
    with open(path, "rb") as stream:
        return hash_stream(stream)


def verified_chunks(chunks: Iterable[bytes], expected: BlobId, size: int, what: str) -> Iterator[bytes]:
    """Pass chunks through, checking they add up to exactly ``size`` bytes hashing to ``expected``.

    The check on the last chunk raises :class:`IntegrityError` *inside* the consumer's loop, so a
    writer that consumes this iterator aborts before it commits anything. Reading stops as soon
    as more than ``size`` bytes arrive, which bounds the memory and time a hostile, oversized
    blob can cost.
    """
    digest = hashlib.sha256()
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if seen > size:
            raise IntegrityError(f"{what}: more than the recorded {size} bytes")
        digest.update(chunk)
        yield chunk
    if seen != size:
        raise IntegrityError(f"{what}: {seen} bytes, but the record says {size}")
    got = BlobId(digest.hexdigest())
    if got != expected:
        raise IntegrityError(f"{what}: content hashes to {got.short}, expected {expected.short}")
