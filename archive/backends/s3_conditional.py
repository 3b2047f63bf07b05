"""Create-only writes on S3: ``If-None-Match: *``, and a probe of whether the server enforces it.

A release exists once its pointer does, and two publishers of one version must not both
win: the pointer is written with ``If-None-Match: *``, which AWS S3 (since August 2024) and
many compatible servers answer with 412 when the key exists (409 while another create-only
write of it is in flight: tried again, see :meth:`ConditionalWrites.create`). A
server that ignores the header would let the second writer replace the first one's release
in silence, so before the first create-only write of a process to a bucket, the backend
*probes*: it writes one object under the archive's ``tmp/`` twice, both create-only, and
deletes it. If the second write was not refused, create-only writes are refused in one
line, unless the user opted in (``?unsafe_no_conditional_writes=1`` or
``$ARCHIVE_S3_UNSAFE_NO_CONDITIONAL_WRITES=1``): then the key is looked up before the write,
which two writers at the same moment can both pass.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Callable

from .. import layout
from ..errors import BackendError, KeyExistsError, KeyNotFoundError
from .s3_client import EXISTS_CODES, UNSAFE_ENV, error_code

if TYPE_CHECKING:
    from .s3 import S3Archive

logger = logging.getLogger(__name__)
_probed: dict[tuple[str, str], bool] = {}  # (endpoint, bucket) -> enforced; one probe per process
_lock = threading.Lock()
CONFLICT_ATTEMPTS = 4
CONFLICT_DELAY = 0.1  # seconds before trying a conflicting create-only write again, doubled each time
_UNSUPPORTED_CODES = {"NotImplemented", "501", "InvalidArgument", "InvalidRequest", "400"}


class ConditionalWrites:
    """Whether, and how, one archive's create-only writes are made."""

    def __init__(self, arc: "S3Archive", unsafe: bool) -> None:
        self._arc = arc
        self._unsafe = unsafe
        self._server = (arc.client.meta.endpoint_url, arc.bucket)

    def check(self) -> None:
        """Probe the server once; raise :class:`BackendError` if it ignores ``If-None-Match``
        and the user did not opt in."""
        if self.enforced() or self._unsafe:
            return
        raise BackendError(f"{self._arc.location}: this S3 server does not enforce If-None-Match, so two"
                           " publishers could both create one release; add ?unsafe_no_conditional_writes=1"
                           f" (or set {UNSAFE_ENV}=1) to write anyway")

    def enforced(self) -> bool:
        """Whether the server refuses a create-only write to an existing key (probed once)."""
        with _lock:
            if self._server not in _probed:
                _probed[self._server] = self._probe()
                if not _probed[self._server] and self._unsafe:
                    logger.warning("%s: the S3 server does not enforce If-None-Match; create-only writes"
                                   " are checked first, which racing writers can both pass", self._arc.location)
            return _probed[self._server]

    def put_condition(self, key: str) -> dict[str, str]:
        """The request parameters of a create-only write of ``key``.

        ``IfNoneMatch`` where the server enforces it; else (the user opted in) a HEAD first,
        which raises :class:`KeyExistsError` if the key is taken.
        """
        if self.enforced():
            return {"IfNoneMatch": "*"}
        try:
            self._arc.head(key)
        except KeyNotFoundError:
            return {}
        raise KeyExistsError(key)

    def create(self, key: str, write: Callable[[], object]) -> None:
        """Run ``write`` (a PUT or the completion of an upload of ``key``), errors mapped.

        A 409 ``ConditionalRequestConflict`` means another create-only write of the key was in
        flight: the write is tried again (AWS's advice), as the other one may yet fail; a 412
        then is :class:`KeyExistsError`. Conflicts to the last try are taken as a lost race.
        """
        import botocore.exceptions

        for attempt in range(CONFLICT_ATTEMPTS):
            with self._arc.errors(key):
                try:
                    write()
                    return
                except botocore.exceptions.ClientError as exc:
                    if error_code(exc) != "ConditionalRequestConflict":
                        raise
            time.sleep(CONFLICT_DELAY * 2 ** attempt)
        raise KeyExistsError(key)

    def _probe(self) -> bool:
        """Write one key under ``tmp/`` twice, create-only; enforced if the second is refused."""
        import botocore.exceptions

        key = f"{layout.TMP_DIR}/{uuid.uuid4().hex}.probe"
        written = False
        try:
            with self._arc.errors():
                for attempt in (1, 2):
                    try:
                        self._arc.client.put_object(Bucket=self._arc.bucket, Key=self._arc.object_key(key),
                                                     Body=b"probe", IfNoneMatch="*")
                        written = True
                    except botocore.exceptions.ClientError as exc:
                        code = error_code(exc)
                        if attempt == 2 and code in EXISTS_CODES | {"ConditionalRequestConflict"}:
                            return True
                        if code in _UNSUPPORTED_CODES:
                            return False  # the server rejects the header: it cannot enforce it
                        raise
            return False
        finally:
            if written:
                self._arc.remove_quietly(key)
