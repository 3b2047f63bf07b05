"""An archive in an S3 bucket (AWS or any S3-compatible server): ``s3://BUCKET/PREFIX``.

``s3://bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=eu-west-1&addressing=path&profile=p``
(every parameter optional; ``AWS_ENDPOINT_URL`` and ``AWS_PROFILE`` work too). Credentials come
only from the standard AWS chain (see :mod:`archive.backends.s3_client`); docs/s3.md has the
whole story. The primitives map to S3 like this:

* ``stat_key``: HEAD. The mtime is the write time kept in user metadata
  (``x-amz-meta-archive-mtime``, set on every write, since S3 has no rename and a copy resets
  ``LastModified``), else ``LastModified`` for objects written by other tools.
* ``open_key``: ranged GETs of 8 MiB, the next ones fetched in parallel (:mod:`.s3_io`).
* ``read_key`` (a whole small object: a blob of a pull, a record, a pointer): one GET.
  Every GET is made by :mod:`.s3_lean`, with about half the CPU of one through botocore's
  client, until the server redirects one (then through the client, which follows redirects).
* ``write_key``: one PUT for up to 8 MiB; above, a parallel multipart upload that streams the
  chunks with bounded memory. An object appears whole on completion or not at all. A key
  known only at the end (a blob named by its hash) that did not fit one part is uploaded under
  ``tmp/`` and copied server-side to its key. ``exclusive`` sends ``If-None-Match: *``: a 412
  is :class:`KeyExistsError` (a 409, another create-only write in flight, is tried again).
  Whether the server enforces it is probed once per process and bucket, before the first
  exclusive write: a server that does not is refused unless the user opts in (``?unsafe_no_conditional_writes=1`` or
  ``$ARCHIVE_S3_UNSAFE_NO_CONDITIONAL_WRITES=1``), as a race could then lose a release.
* ``list_keys``: paginated ListObjectsV2 with ``Delimiter=/``: objects and common prefixes.
* ``delete_key``: HEAD (S3 deletes a missing key without complaint), then DELETE.
* ``move_key``: not atomic on S3: HEAD, server-side copy keeping the mtime, HEAD again, DELETE.
  The source stays until the copy is complete, and is left alone if a writer replaced it
  meanwhile (see docs/s3.md on why gc stays safe).

S3 holds no links, FIFOs or folders: a key is an object or nothing, so the storage checks of
the other backends have nothing to find here; keys are still checked (:func:`check_key`).
"""

from __future__ import annotations

import io
import logging
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterable, Iterator

from .. import layout
from ..errors import BackendError, KeyNotFoundError
from ..hashing import CHUNK_SIZE
from ..interface import ArchiveInterface, KeyInfo, key_of
from ..keys import check_key, usable_name
from ..locations import redact
from . import s3_io
from .s3_lean import LeanGets, Redirected
from .s3_client import S3Settings, error_code, make_client, parse_location, s3_errors
from .s3_conditional import ConditionalWrites

logger = logging.getLogger(__name__)
MTIME_FIELD = "archive-mtime"  # user metadata: sent and stored as x-amz-meta-archive-mtime
PART_THREADS = 16
LIST_PAGE = 1000  # keys per listing request (S3's maximum)


class S3Archive(ArchiveInterface):
    """An archive below ``s3://bucket/prefix`` (see the module docstring)."""

    max_workers = 16
    atomic_moves = False  # move_key is a copy then a delete (see move_key)

    def __init__(self, location: str, settings: S3Settings) -> None:
        super().__init__(redact(location))
        self.settings = settings
        self.bucket = settings.bucket
        #: The boto3 S3 client every request goes through (thread-safe).
        self.client = make_client(settings, self.location)
        self._pool = ThreadPoolExecutor(PART_THREADS, thread_name_prefix="archive-s3")
        self._budget = s3_io.PartBudget(s3_io.BUDGET)
        self._conditional = ConditionalWrites(self, settings.unsafe_no_conditional_writes)
        self._lean: LeanGets | None = LeanGets.of_client(self.client, self.bucket)

    @classmethod
    def from_location(cls, location: str) -> "S3Archive":
        """``s3://BUCKET[/PREFIX][?endpoint=URL&region=R&addressing=path|virtual|auto&profile=P]``."""
        return cls(location, parse_location(location))

    def object_key(self, key: str) -> str:
        """The S3 object key of archive key ``key`` (checked: no ``..``, ``.`` or empty part)."""
        check_key(key)
        return f"{self.settings.prefix}/{key}" if self.settings.prefix else key

    @contextmanager
    def errors(self, key: str | None = None) -> Iterator[None]:
        """Map botocore's errors inside to the archive's (see :func:`s3_errors`)."""
        with s3_errors(self.location, key, self.bucket):
            yield

    # ---------------------------------------------------------------- reading
    def stat_key(self, key: str) -> KeyInfo:
        """A HEAD: ``ContentLength`` and the write time kept in user metadata."""
        return _info(self.head(key))

    def head(self, key: str) -> dict:
        """The HEAD answer of ``key``; :class:`KeyNotFoundError` if none."""
        with self.errors(key):
            return self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))

    def read_key(self, key: str, max_bytes: int) -> bytes:
        """One GET of the whole object (:mod:`.s3_lean`); through the client once the server
        redirected a request (botocore follows S3's redirects to another region)."""
        lean = self._lean
        if lean is not None:
            name = self.object_key(key)
            try:
                with self.errors(key):
                    return lean.read(name, key, max_bytes)
            except Redirected as exc:
                self._leave_lean(exc)
        return super().read_key(key, max_bytes)

    def _leave_lean(self, why: Redirected) -> None:
        self._lean = None
        logger.info("%s: the server redirected a GET (%s); reading through botocore from now on", self.location, why)

    def _get(self, key: str, byte_range: str | None, etag: str | None = None) -> tuple[bytes, str, str | None]:
        """One GET of ``key`` (with ``Range`` and ``If-Match`` when given): the body, its
        ``Content-Range`` and the object's ETag; a lean GET unless the server redirected one.
        botocore's ``ClientError`` passes (the caller maps it)."""
        name = self.object_key(key)
        lean = self._lean
        if lean is not None:
            headers = {"Range": byte_range} if byte_range else {}
            if etag:
                headers["If-Match"] = etag
            try:
                answer = lean.get(name, key, headers)
                return answer.body, answer.headers.get("Content-Range", ""), answer.headers.get("ETag")
            except Redirected as exc:
                self._leave_lean(exc)
        extra = {"Range": byte_range} if byte_range else {}
        if etag:
            extra["IfMatch"] = etag
        answer = self.client.get_object(Bucket=self.bucket, Key=name, **extra)
        return s3_io.read_body(answer, f"{self.location}/{key}"), answer.get("ContentRange", ""), answer.get("ETag")

    @contextmanager
    def open_key(self, key: str) -> Iterator[BinaryIO]:
        """Ranged GETs of 8 MiB, those after the first fetched ahead in parallel."""
        first, total, etag = self._first_range(key)
        reader = s3_io.RangedReader(lambda start, end, tag: self._range(key, start, end, tag), first, total,
                                    etag, self._pool, self._budget)
        try:
            yield io.BufferedReader(reader, CHUNK_SIZE)  # type: ignore[misc]
        finally:
            reader.close()

    def _first_range(self, key: str) -> tuple[bytes, int, str | None]:
        """The first part of ``key``, the object's size and its ETag (an empty object: no range)."""
        import botocore.exceptions

        def read() -> tuple[bytes, int, str | None]:
            with self.errors(key):
                try:
                    data, content_range, etag = self._get(key, f"bytes=0-{s3_io.PART_SIZE - 1}")
                except botocore.exceptions.ClientError as exc:
                    if error_code(exc) != "InvalidRange":
                        raise
                    data, content_range, etag = self._get(key, None)  # an empty object
            total = content_range.rpartition("/")[2]
            return data, int(total) if total.isdigit() else len(data), etag

        return s3_io.with_body_retries(read)

    def _range(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        """Bytes ``start..end`` of ``key``, only while it still has ``etag``."""
        import botocore.exceptions

        def read() -> bytes:
            with self.errors(key):
                try:
                    data = self._get(key, f"bytes={start}-{end}", etag)[0]
                except botocore.exceptions.ClientError as exc:
                    if s3_io.changed_while_read(exc):
                        raise s3_io.object_changed(self.location, key) from None
                    raise
            if len(data) != end - start + 1:
                raise s3_io.object_changed(self.location, key)
            return data

        return s3_io.with_body_retries(read)

    # ---------------------------------------------------------------- writing
    def write_key(self, key: "str | Callable[[], str]", chunks: Iterable[bytes], *,
                  exclusive: bool = False) -> None:
        """One PUT up to 8 MiB, else a multipart upload (see the module docstring)."""
        if isinstance(key, str):
            check_key(key)
        if exclusive:
            self._conditional.check()
        iterator = iter(chunks)
        head, more = _take(iterator, s3_io.PART_SIZE)
        if not more:
            final = key_of(key)
            self.put(final, head, exclusive=exclusive)
            return
        if isinstance(key, str):
            self._multipart(key, s3_io.parts_of(iterator, head), exclusive)
            return
        temporary = f"{layout.TMP_DIR}/{uuid.uuid4().hex}.part"
        try:
            self._multipart(temporary, s3_io.parts_of(iterator, head), False)
            final = key_of(key)
            self.copy(temporary, final, _mtime_now(), exclusive=exclusive)
        finally:
            self.remove_quietly(temporary)

    def put(self, key: str, data: bytes, *, exclusive: bool = False) -> None:
        """Store ``data`` at ``key`` in one PUT; ``exclusive``: only if nothing is there.

        The PUT carries the sha256 of ``data`` (:func:`.s3_io.payload_checksum`: free for a blob).
        """
        name = self.object_key(key)
        extra = self._conditional.put_condition(key) if exclusive else {}
        checksum = s3_io.payload_checksum(key, data)
        self._send(key, exclusive, lambda: self.client.put_object(
            Bucket=self.bucket, Key=name, Body=data, Metadata=_metadata(None), ChecksumSHA256=checksum, **extra))
        logger.debug("%s: put %s (%d bytes)", self.location, key, len(data))

    def _send(self, key: str, exclusive: bool, write: Callable[[], object]) -> None:
        """Make the request that creates ``key`` (a PUT, or completing an upload), errors mapped."""
        if exclusive:
            self._conditional.create(key, write)
            return
        with self.errors(key):
            write()

    def _multipart(self, key: str, parts: Iterator[bytes], exclusive: bool) -> None:
        """A multipart upload of ``parts`` to ``key``, aborted if anything fails."""
        name = self.object_key(key)
        extra = self._conditional.put_condition(key) if exclusive else {}
        with self.errors(key):
            upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=name, Metadata=_metadata(None))
        upload_id = upload["UploadId"]

        def send(number: int, data: bytes) -> dict:
            with self.errors(key):
                answer = self.client.upload_part(Bucket=self.bucket, Key=name, UploadId=upload_id,
                                                  PartNumber=number, Body=data)
            return {"PartNumber": number, "ETag": answer["ETag"]}

        try:
            done = s3_io.upload_parts(send, parts, self._pool, self._budget)
            self._send(key, exclusive, lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": done}, **extra))
        except BaseException:
            self._abort(name, upload_id)
            raise
        logger.debug("%s: multipart upload of %s in %d parts", self.location, key, len(done))

    def _abort(self, name: str, upload_id: str) -> None:
        try:
            with self.errors():
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
        except BackendError as exc:  # the upload stays invisible; a bucket lifecycle rule ends it
            logger.warning("cannot abort the multipart upload of %s: %s", name, exc)

    def copy(self, source: str, target: str, mtime: float, *, exclusive: bool = False,
             size: int | None = None) -> None:
        """Copy ``source`` to ``target`` on the server, with ``mtime`` as the target's write time."""
        if size is None:
            size = self.stat_key(source).size
        if size <= s3_io.COPY_LIMIT and not exclusive:
            with self.errors(source):
                self.client.copy_object(Bucket=self.bucket, Key=self.object_key(target),
                                         CopySource={"Bucket": self.bucket, "Key": self.object_key(source)},
                                         Metadata=_metadata(mtime), MetadataDirective="REPLACE")
            return
        self._multipart_copy(source, target, mtime, size, exclusive)

    def _multipart_copy(self, source: str, target: str, mtime: float, size: int, exclusive: bool) -> None:
        """UploadPartCopy of ranges of ``source`` in parallel; ``exclusive`` on completion."""
        name, origin = self.object_key(target), {"Bucket": self.bucket, "Key": self.object_key(source)}
        extra = self._conditional.put_condition(target) if exclusive else {}
        with self.errors(target):
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=name,
                                                             Metadata=_metadata(mtime))["UploadId"]

        def copy_part(number: int, start: int, end: int) -> dict:
            ranged = {"CopySourceRange": f"bytes={start}-{end}"} if end >= start else {}
            with self.errors(source):
                answer = self.client.upload_part_copy(Bucket=self.bucket, Key=name, UploadId=upload_id,
                                                       PartNumber=number, CopySource=origin, **ranged)
            return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

        futures = []
        try:
            futures = [self._pool.submit(copy_part, n, start, end)
                       for n, (start, end) in enumerate(s3_io.copy_ranges(size), 1)]
            done = [future.result() for future in futures]
            self._send(target, exclusive, lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": done}, **extra))
        except BaseException:
            for future in futures:  # let the parts in flight end before the upload is aborted
                future.cancel() or future.exception()
            self._abort(name, upload_id)
            raise

    # ---------------------------------------------------------------- listing, deleting, moving
    def list_keys(self, prefix: str) -> list[str]:
        """Objects and common prefixes directly below ``prefix``, all pages of them."""
        folder = self.object_key(prefix) if prefix else self.settings.prefix
        folder = folder + "/" if folder else ""
        names: set[str] = set()
        with self.errors():
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=folder, Delimiter="/", PaginationConfig={"PageSize": LIST_PAGE}):
                names.update(item["Key"][len(folder):] for item in page.get("Contents", ()))
                names.update(item["Prefix"][len(folder):].rstrip("/") for item in page.get("CommonPrefixes", ()))
        return sorted(name for name in names if name and "/" not in name and usable_name(name, prefix))

    def delete_key(self, key: str) -> None:
        """A HEAD (for :class:`KeyNotFoundError`; S3 deletes nothing without complaint), then DELETE."""
        self.head(key)
        with self.errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def move_key(self, source: str, target: str) -> None:
        """Copy (keeping the write time), then delete the source unless a writer replaced it meanwhile.

        Not atomic: for a moment both objects exist. A writer that stores ``source`` anew during
        the copy wins: its object stays where it is (the copy holds the earlier one), which is
        what a rename followed by that write would have left.
        """
        check_key(target)
        before = self.head(source)
        self.copy(source, target, _info(before).mtime, size=before["ContentLength"])
        try:
            after = self.head(source)
        except KeyNotFoundError:
            return  # removed meanwhile (another gc)
        if (after.get("ETag"), after.get("LastModified"), after.get("Metadata")) != \
                (before.get("ETag"), before.get("LastModified"), before.get("Metadata")):
            logger.info("%s: %s was written anew while it was moved; the new object stays", self.location, source)
            return
        with self.errors(source):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(source))

    def remove_quietly(self, key: str) -> None:
        """Delete a temporary object; a failure is logged (gc removes it later)."""
        try:
            with self.errors(key):
                self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except BackendError as exc:
            logger.warning("cannot remove the temporary object %s: %s", key, exc)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _take(chunks: Iterator[bytes], limit: int) -> tuple[bytes, bool]:
    """The first ``limit`` bytes or more of ``chunks`` (whole chunks), and whether any are left."""
    held: list[bytes] = []
    size = 0
    for chunk in chunks:
        held.append(chunk)
        size += len(chunk)
        if size >= limit:
            return b"".join(held), True
    return b"".join(held), False


def _mtime_now() -> float:
    return time.time()


def _metadata(mtime: float | None) -> dict[str, str]:
    """The user metadata of a write: its time (``now`` unless given), kept through copies."""
    return {MTIME_FIELD: repr(_mtime_now() if mtime is None else mtime)}


def _info(answer: dict) -> KeyInfo:
    """Size and write time from a HEAD answer (the metadata's time, else ``LastModified``)."""
    kept = (answer.get("Metadata") or {}).get(MTIME_FIELD)
    try:
        mtime = float(kept) if kept is not None else math.nan
    except ValueError:  # written by someone else: not a time
        mtime = math.nan
    if not math.isfinite(mtime):
        mtime = answer["LastModified"].timestamp()
    return KeyInfo(size=int(answer["ContentLength"]), mtime=mtime)
