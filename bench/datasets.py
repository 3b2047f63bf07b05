"""The benchmark's data sets, built fresh in a scratch folder for every run.

File contents are random (``os.urandom``) so that nothing compresses and no two files share a
blob: a publish really has to hash and store every byte. The name with many versions is made
of real records and pointers, written straight into a folder archive with the library's own
layout and record code (and its index writer), because publishing 10,000 releases one by one
would take longer than the benchmark itself while only the resolve is measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from archive import layout
from archive.backends.filesystem import FileSystemArchive
from archive.hashing import BlobId
from archive.index import update_indexes
from archive.records import FileEntry, Release

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
WRITE_CHUNK = 4 * MIB
MAJORS = 4
PATCHES_PER_MINOR = 50


@dataclass(frozen=True)
class Sizes:
    """How big each data set is; :data:`FULL` is the issue's size, :data:`QUICK` the CI size."""

    folder_files: int
    folder_file_size: int
    single_file_size: int
    small_files: int
    small_file_size: int
    versions: int
    big_file_size: int

    @property
    def folder_bytes(self) -> int:
        return self.folder_files * self.folder_file_size


FULL = Sizes(folder_files=256, folder_file_size=4 * MIB, single_file_size=1 * GIB, small_files=10_000,
             small_file_size=4 * KIB, versions=10_000, big_file_size=4 * GIB)
QUICK = Sizes(folder_files=256, folder_file_size=256 * KIB, single_file_size=64 * MIB, small_files=1_000,
              small_file_size=4 * KIB, versions=1_000, big_file_size=256 * MIB)


def describe_size(nbytes: int) -> str:
    """``4 GiB``, ``256 KiB``: whole binary units for row labels.

    >>> describe_size(4 * GIB), describe_size(256 * KIB), describe_size(1000)
    ('4 GiB', '256 KiB', '1000 B')
    """
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if nbytes >= factor and nbytes % factor == 0:
            return f"{nbytes // factor} {unit}"
    return f"{nbytes} B"


def write_random_file(path: Path, size: int) -> None:
    """Write ``size`` random bytes to ``path`` in chunks (memory stays flat for 4 GiB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        left = size
        while left > 0:
            chunk = os.urandom(min(WRITE_CHUNK, left))
            out.write(chunk)
            left -= len(chunk)


def make_random_folder(root: Path, count: int, size: int, per_folder: int = 64) -> Path:
    """``count`` random files of ``size`` bytes in subfolders of ``per_folder`` files each."""
    for index in range(count):
        write_random_file(root / f"{index // per_folder:03d}" / f"part-{index:05d}.bin", size)
    return root


def first_file(root: Path) -> Path:
    """The first file of a folder in sorted order: the one a 'one file changed' run rewrites."""
    return min(path for path in root.rglob("*") if path.is_file())


def rewrite_file(path: Path) -> int:
    """Give ``path`` new random content of the same size (a fresh mtime too); return the size."""
    size = path.stat().st_size
    write_random_file(path, size)
    return size


def version_numbers(count: int) -> list[str]:
    """``count`` distinct versions spread over majors 0..3, so ``^1`` matches a quarter.

    >>> version_numbers(6)
    ['0.0.0', '1.0.0', '2.0.0', '3.0.0', '0.0.1', '1.0.1']
    >>> len(set(version_numbers(10_000)))
    10000
    """
    versions = []
    for index in range(count):
        major, serial = index % MAJORS, index // MAJORS
        versions.append(f"{major}.{serial // PATCHES_PER_MINOR}.{serial % PATCHES_PER_MINOR}")
    return versions


def highest_match_of_caret_one(count: int) -> str:
    """The version ``^1`` must resolve to among :func:`version_numbers` (for a sanity check)."""
    return max((v for v in version_numbers(count) if v.startswith("1.")),
               key=lambda v: tuple(int(p) for p in v.split(".")))


def make_versions(store: Path, name: str, count: int) -> list[str]:
    """Add ``count`` releases of ``name`` to the folder archive at ``store``; return the versions.

    Each is a real record (one tiny file) stored as a blob, with its pointer, laid out by
    :mod:`archive.layout`; the library then writes the name's index itself. Files are written
    without fsync: this is set-up, not a measured publish.
    """
    arc = FileSystemArchive(store)
    payload = b"one tiny file\n"
    entry = FileEntry(BlobId.of_bytes(payload), len(payload))
    _write_plain(arc.local_path(layout.blob_key(entry.blob)), payload)
    versions = version_numbers(count)
    for version in versions:
        data = Release.create(name, version, {"data.txt": entry}, {"message": "bench"}).to_bytes()
        record_id = BlobId.of_bytes(data)
        _write_plain(arc.local_path(layout.blob_key(record_id)), data)
        _write_plain(arc.local_path(layout.release_key(name, version)), f"{record_id}\n".encode())
    update_indexes(arc, name)
    return versions


def _write_plain(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o444)
