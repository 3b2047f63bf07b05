"""The media type of a file, from its first bytes and its name (stdlib only).

A release records, per file, a media type (``text/csv``, ``image/png``) so that a reader can
tell what a blob holds without fetching it, as an HTTP server would say in ``Content-Type``.
It is a hint, not part of a file's identity: two entries of the same blob, size and mode are
the same file whatever their media type says (see :class:`archive.records.FileEntry`).

Detection, in order, with no third-party library (libmagic is a C dependency):

1. **Magic numbers**: the signatures of common binary formats, read from the first
   :data:`HEAD_BYTES` bytes (:data:`SIGNATURES`). Content wins over a misleading name.
2. **The name**: :func:`mimetypes.guess_type` on the file's path (``.csv``, ``.json``...).
3. **Text or not**: a head that decodes as UTF-8 with no NUL is ``text/plain``; anything else
   is ``application/octet-stream``.
"""

from __future__ import annotations

import codecs
import functools
import mimetypes

#: Bytes of a file's head that detection looks at.
HEAD_BYTES = 512
#: (offset, signature, media type), tried in order; the first that matches wins.
SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"PK\x05\x06", "application/zip"),
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"BZh", "application/x-bzip2"),
    (0, b"\xfd7zXZ\x00", "application/x-xz"),
    (0, b"(\xb5/\xfd", "application/zstd"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (257, b"ustar", "application/x-tar"),
    (0, b"\x89HDF\r\n\x1a\n", "application/x-hdf5"),
    (0, b"CDF\x01", "application/x-netcdf"),
    (0, b"CDF\x02", "application/x-netcdf"),
    (0, b"\x93NUMPY", "application/x-npy"),
    (0, b"PAR1", "application/vnd.apache.parquet"),
    (0, b"SQLite format 3\x00", "application/vnd.sqlite3"),
    (0, b"\x7fELF", "application/x-executable"),
    (0, b"OggS", "audio/ogg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"\x00\x00\x01\x00", "image/vnd.microsoft.icon"),
    (0, b"wOFF", "font/woff"),
    (0, b"wOF2", "font/woff2"),
    (0, b"\x00asm", "application/wasm"),
)
#: Zip-based formats known by name; the name refines ``application/zip``.
_ZIP_REFINED = ("application/vnd.openxmlformats", "application/vnd.oasis", "application/java-archive",
                "application/epub+zip")


def detect_media_type(head: bytes, path: str) -> str:
    """The media type of a file whose first bytes are ``head`` and whose release path is ``path``.

    Parameters
    ----------
    head
        The first bytes of the file (at most :data:`HEAD_BYTES` are looked at; fewer for a
        short file).
    path
        Its path in the release, for the name-based guess.

    Returns
    -------
    str
        A media type such as ``text/csv``; ``application/octet-stream`` when nothing is known.

    >>> detect_media_type(b"\\x89PNG\\r\\n\\x1a\\n....", "plot.dat")
    'image/png'
    >>> detect_media_type(b"a,b\\n1,2\\n", "gains.csv")
    'text/csv'
    >>> detect_media_type(b"hello\\n", "README")
    'text/plain'
    """
    head = head[:HEAD_BYTES]
    by_name = _by_name(path)
    by_content = _by_signature(head)
    if by_content == "application/zip" and by_name and by_name.startswith(_ZIP_REFINED):
        return by_name
    if by_content is not None:
        return by_content
    if by_name is not None:
        return by_name
    return "text/plain" if _looks_like_text(head) else "application/octet-stream"


def _by_name(path: str) -> str | None:
    """What :func:`mimetypes.guess_type` guesses from the name of the file at ``path``.

    Its guess reads no more than the name's last two suffixes (the last may be an encoding
    such as ``.gz``, the one before it the type), so it is asked once per ending, ``x.tar.gz``
    for ``run-17.tar.gz``, and the answer kept: a publish of 100,000 ``.bin`` files asks once
    (4 us per file saved). A release path is a path, never a URL: a ``data:`` at its start
    means nothing here, where ``guess_type`` would read the rest as a data URL's type.
    """
    name = path.rpartition("/")[2]
    last = name.rfind(".")
    if last < 0:
        return None
    start = name.rfind(".", 0, last)
    start = last if start < 0 else start
    before = name[:start]  # its only effect on the guess: whether it holds more than dots
    return _guess_by_ending(("x" if before.strip(".") else before) + name[start:])


@functools.lru_cache(maxsize=1024)
def _guess_by_ending(name: str) -> str | None:
    return mimetypes.guess_type(name, strict=False)[0]


_ELSEWHERE = tuple(entry for entry in SIGNATURES if entry[0] != 0)
#: The signatures a head may match, by its first byte, in the order of :data:`SIGNATURES`: the
#: first byte rules out all those at offset 0 but one or two.
_CANDIDATES = {first: tuple(entry for entry in SIGNATURES if entry[0] != 0 or entry[1][0] == first)
               for first in {entry[1][0] for entry in SIGNATURES if entry[0] == 0}}


def _by_signature(head: bytes) -> str | None:
    """The media type of the first of :data:`SIGNATURES` that ``head`` matches."""
    for offset, signature, media_type in _CANDIDATES.get(head[0], _ELSEWHERE) if head else _ELSEWHERE:
        if head[offset:offset + len(signature)] == signature:
            return media_type
    if head[8:12] in (b"WEBP", b"WAVE", b"AVI ") and head[:4] == b"RIFF":
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}[head[8:12]]
    return None


def _looks_like_text(head: bytes) -> bool:
    """True for a head with no NUL that is UTF-8, allowing a character cut at the end."""
    if b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # an unfinished end is fine
    except UnicodeDecodeError:
        return False
    return True


def media_type_of_file(location: str, path: str) -> str:
    """The media type of the file at ``location`` (read: its first :data:`HEAD_BYTES`)."""
    with open(location, "rb") as stream:
        return detect_media_type(stream.read(HEAD_BYTES), path)
