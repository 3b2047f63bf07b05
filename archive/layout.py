"""The storage layout: the only place where keys are built.

A key is a relative POSIX path inside the archive root. Backends store bytes under keys and
never know what they mean; everything the archive writes is named here (see docs/format.md,
which is the public contract for this layout)::

    archive.json                      marker: {"format": "archive", "version": 1}
    blobs/sha256/ab/abcdef...         file contents and records, named by sha256
    index.json                        {"format": 1, "names": [...]}
    releases/NAME/index.json          {"format": 1, "name": ..., "versions": {VERSION: record id}}
    releases/NAME/VERSION             one line: the record id, "sha256:<hex>"
    releases/@NAMESPACE/NAME/...      the same for a namespaced name ``NAMESPACE/NAME`` (format 2)
    yanks/NAME/VERSION/NNNNNNNN.json  yank and unyank markers, create-only (see archive.yank)
    leases/ID                         blobs a publish in flight is reusing (see archive.gc)
    trash/sha256/ab/abcdef...         blobs gc has set aside, restored or removed by gc
    tmp/                              temporary files of writes in flight
"""

from __future__ import annotations

from .hashing import BlobId

#: The format an archive is created with. An archive becomes format 2 when its first namespaced
#: release is published (:mod:`archive.namespaces`): a reader of format 1 would not see those
#: releases, and its gc would remove their blobs, so it must refuse the archive instead.
FORMAT_VERSION = 1
NAMESPACES_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
#: A folder of ``releases/`` that holds a namespace starts with this character, which no name
#: has: a namespace never clashes with a plain name, and a format-1 reader skips it.
NAMESPACE_MARK = "@"
MARKER_KEY = "archive.json"
BLOBS_DIR = "blobs/sha256"
RELEASES_DIR = "releases"
INDEX_FILE = "index.json"
TMP_DIR = "tmp"
LEASES_DIR = "leases"
TRASH_DIR = "trash"
YANKS_DIR = "yanks"


def blob_key(blob_id: BlobId) -> str:
    """``blobs/sha256/ab/<hex>``: a two-hex-digit fan-out keeps folders small (256 of them)."""
    return f"{BLOBS_DIR}/{blob_id.hexdigest[:2]}/{blob_id.hexdigest}"


def blob_id_from_key(key: str) -> BlobId:
    """The inverse of :func:`blob_key` (for gc and verify, which walk the blob folders)."""
    return BlobId(key.rsplit("/", 1)[-1])


def trash_key(blob_id: BlobId) -> str:
    """Where gc sets a blob aside before deciding whether to remove it: ``trash/<blob key>``."""
    return f"{TRASH_DIR}/{blob_key(blob_id)}"


def lease_key(lease_id: str) -> str:
    """The lease of one publish in flight: the blobs it found stored and is about to reference."""
    return f"{LEASES_DIR}/{lease_id}"


def name_folder(name: str) -> str:
    """The relative folder of a (checked) release name: ``NAME``, or ``@NAMESPACE/NAME``.

    Used for the archive's keys and for every local folder named after a release (cache, pins).
    """
    namespace, sep, base = name.rpartition("/")
    return f"{NAMESPACE_MARK}{namespace}/{base}" if sep else name


def namespace_dir(namespace: str) -> str:
    """``releases/@NAMESPACE``: the folder of the names of one namespace."""
    return f"{RELEASES_DIR}/{NAMESPACE_MARK}{namespace}"


def release_dir(name: str) -> str:
    return f"{RELEASES_DIR}/{name_folder(name)}"


def release_key(name: str, version: str) -> str:
    """The create-only pointer whose existence publishes ``name`` ``version``."""
    return f"{release_dir(name)}/{version}"


def versions_index_key(name: str) -> str:
    return f"{release_dir(name)}/{INDEX_FILE}"


def names_index_key() -> str:
    return INDEX_FILE


def yank_dir(name: str) -> str:
    """``yanks/NAME``: one folder per version that was ever yanked, holding its markers."""
    return f"{YANKS_DIR}/{name_folder(name)}"


def yank_key(name: str, version: str, number: int) -> str:
    """The ``number``-th yank or unyank marker of ``name`` ``version``: numbered, so the
    markers sort in the order they were written, whatever the clocks say."""
    return f"{yank_dir(name)}/{version}/{number:08d}.json"


def yank_index_key(name: str) -> str:
    """``yanks/NAME/index.json``: the yanked versions of ``name``, derived from the markers,
    for storage that cannot list (a static web server)."""
    return f"{yank_dir(name)}/{INDEX_FILE}"
