"""Moving bytes to and from S3 with bounded memory: multipart uploads, ranged reads, copies.

Parts are :data:`PART_SIZE` (8 MiB) each. One write or read keeps at most :data:`WINDOW`
parts in flight on the backend's part threads, and all writes and reads of one archive share a
budget of :data:`BUDGET` buffered parts (:class:`PartBudget`): a part that finds the budget
spent is sent (or fetched) in the caller's own thread instead, so memory stays bounded
(about ``(jobs + BUDGET) x 8 MiB``) and no transfer ever waits on another one.

* :func:`upload_parts` streams the chunks of a write into a multipart upload.
* :class:`RangedReader` reads an object by ranged GETs, the next ones fetched in parallel
  while the caller reads, each pinned to the first answer's ETag (``If-Match``) so that an
  object replaced meanwhile is never spliced.
* :func:`copy_ranges` cuts a server-side copy into UploadPartCopy ranges: the backend copies
  with one CopyObject up to :data:`COPY_LIMIT` (5 GiB), by parts above it, or when the
  target must not exist (``If-None-Match`` is honoured on completing a multipart upload,
  not on CopyObject).
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

from .. import layout
from ..errors import BackendError, BackendUnavailableError, InvalidInputError
from .s3_client import error_code

logger = logging.getLogger(__name__)
T = TypeVar("T")
MiB = 1024 * 1024
PART_SIZE = 8 * MiB
WINDOW = 4  # parts of one transfer in flight at once
BUDGET = 24  # parts buffered by all transfers of one archive beyond the one each is working on
COPY_LIMIT = 5 * 1024 * MiB  # the largest CopyObject S3 accepts
COPY_PART = 512 * MiB
MAX_PARTS = 10_000  # parts of one multipart upload, at most
BODY_ATTEMPTS = 3  # reads of one part body (botocore retries the request, not the body)


def payload_checksum(key: str, data: bytes) -> str:
    """The base64 sha256 of ``data``, sent as ``x-amz-checksum-sha256`` with its PUT.

    A blob's key names the sha256 of its content, which the publish has checked before the
    write, so for a blob the checksum is known without reading a byte; other keys hold small
    objects (pointers, records, indexes) and are hashed here. The server checks the body
    against it (a mismatch is refused, not stored), and since the header is signed, the body
    itself need not be hashed a second time for the signature (see
    :func:`.s3_client.make_client`).
    """
    try:
        blob = layout.blob_id_from_key(key)
    except InvalidInputError:
        blob = None
    if blob is not None and layout.blob_key(blob) == key:
        digest = bytes.fromhex(blob.hexdigest)
    else:
        digest = hashlib.sha256(data).digest()
    return base64.b64encode(digest).decode("ascii")


def part_size(number: int) -> int:
    """Size of part ``number`` (1-based) of an upload: 8 MiB, doubled every 2,000 parts, so a
    stream of unknown length fits S3's 10,000 parts up to about 480 GiB."""
    return PART_SIZE << ((number - 1) // 2000)


class PartBudget:
    """How many parts all transfers of one archive may buffer beyond their current one."""

    def __init__(self, parts: int) -> None:
        self._free = threading.Semaphore(parts)

    def try_take(self) -> bool:
        return self._free.acquire(blocking=False)

    def give_back(self) -> None:
        self._free.release()


def parts_of(chunks: Iterable[bytes], first: bytes) -> Iterator[bytes]:
    """The bytes of ``first`` then ``chunks``, cut into parts of :func:`part_size` bytes.

    Each part is joined once from the chunks it spans (only a chunk that straddles two parts
    is cut), so a part costs one copy of its bytes.
    """
    buffer: list[bytes] = []
    held, number = 0, 1
    for chunk in itertools.chain([first], chunks):
        while chunk:
            need = part_size(number) - held
            if len(chunk) < need:
                buffer.append(chunk)
                held += len(chunk)
                break
            buffer.append(chunk[:need] if len(chunk) > need else chunk)
            yield b"".join(buffer)
            chunk, buffer, held, number = chunk[need:], [], 0, number + 1
    if held or number == 1:
        yield b"".join(buffer)


def upload_parts(send: Callable[[int, bytes], dict], parts: Iterator[bytes], pool: ThreadPoolExecutor,
                 budget: PartBudget) -> list[dict]:
    """Send each part with ``send(number, data)`` (which returns ``{"PartNumber", "ETag"}``).

    Parts are read from ``parts`` in this thread (so the chunks' own checks and interrupts run
    here); up to :data:`WINDOW` are sent at once on ``pool`` while the budget allows, else here.
    Every part sent has been answered when this returns or raises.
    """
    done: list[dict] = []
    flight: deque[Future] = deque()
    try:
        for number, data in enumerate(parts, 1):
            while len(flight) >= WINDOW:
                done.append(flight.popleft().result())
            if budget.try_take():
                flight.append(pool.submit(_send_and_give_back, send, number, data, budget))
            else:
                done.append(send(number, data))
        while flight:
            done.append(flight.popleft().result())
    finally:
        for future in flight:  # an error: let the parts in flight finish before the upload is aborted
            future.exception()
    return sorted(done, key=lambda part: part["PartNumber"])


def _send_and_give_back(send: Callable[[int, bytes], dict], number: int, data: bytes, budget: PartBudget) -> dict:
    try:
        return send(number, data)
    finally:
        budget.give_back()


class RangedReader(io.RawIOBase):
    """An S3 object read by ranged GETs of :data:`PART_SIZE`, the next ones fetched in parallel.

    ``fetch(start, end, etag)`` returns the bytes ``start..end`` (inclusive) as a GET with that
    ``Range`` (and ``If-Match: etag`` when given) answers them. ``first`` is the answer to the
    first range, with ``total`` the object's size and ``etag`` its ETag.
    """

    def __init__(self, fetch: Callable[[int, int, str | None], bytes], first: bytes, total: int, etag: str | None,
                 pool: ThreadPoolExecutor, budget: PartBudget) -> None:
        super().__init__()
        self._fetch, self._total, self._etag = fetch, total, etag
        self._pool, self._budget = pool, budget
        self._current = memoryview(first)
        self._next_start = len(first)  # the first byte not yet asked for
        self._ahead: deque[tuple[Future | None, int, int]] = deque()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._current:
            self._advance()
            if not self._current:
                return 0
        count = min(len(buffer), len(self._current))
        buffer[:count] = self._current[:count]
        self._current = self._current[count:]
        return count

    def _advance(self) -> None:
        """Make the next part current, and ask for more parts ahead while the budget allows."""
        self._schedule()
        if not self._ahead:
            return
        future, start, end = self._ahead.popleft()
        if future is None:
            data = self._fetch(start, end, self._etag)
        else:
            try:
                data = future.result()
            finally:
                self._budget.give_back()
        self._current = memoryview(data)
        self._schedule()

    def _schedule(self) -> None:
        while self._next_start < self._total and len(self._ahead) < WINDOW:
            start, end = self._next_start, min(self._next_start + PART_SIZE, self._total) - 1
            if self._budget.try_take():
                self._ahead.append((self._pool.submit(self._fetch, start, end, self._etag), start, end))
            elif not self._ahead:
                self._ahead.append((None, start, end))  # fetched in the reader's thread when needed
            else:
                return
            self._next_start = end + 1

    def close(self) -> None:
        while self._ahead:
            future, _, _ = self._ahead.popleft()
            if future is not None:
                future.cancel() or future.exception()
                self._budget.give_back()
        super().close()


class BodyCutError(BackendUnavailableError):
    """The connection broke while a body was read (botocore retries requests, not bodies)."""


def read_body(response: dict, what: str) -> bytes:
    """The whole body of a GET answer; :class:`BodyCutError` if the connection breaks."""
    import botocore.exceptions as bce
    import urllib3.exceptions

    try:
        return response["Body"].read()
    except (bce.BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
        raise BodyCutError(f"{what}: the connection broke while reading ({exc})") from None


def with_body_retries(read: Callable[[], T]) -> T:
    """``read()``, tried again when the body's connection breaks (each try is a new request)."""
    for attempt in range(BODY_ATTEMPTS):
        try:
            return read()
        except BodyCutError as exc:
            if attempt == BODY_ATTEMPTS - 1:
                raise
            logger.warning("%s; reading that part again", exc)
    raise AssertionError("unreachable")


def copy_ranges(size: int) -> list[tuple[int, int]]:
    """Inclusive byte ranges of a multipart copy of ``size`` bytes (one empty range for 0 bytes)."""
    step = max(COPY_PART, -(-size // MAX_PARTS))
    return [(start, min(start + step, size) - 1) for start in range(0, size, step)] or [(0, -1)]


def changed_while_read(exc: BaseException) -> bool:
    """Whether a ranged GET failed because the object no longer has the first answer's ETag."""
    return error_code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404")


def object_changed(where: str, key: str) -> BackendError:
    return BackendError(f"{where}: {key} was replaced while it was being read")
