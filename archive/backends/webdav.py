"""``WebDAVArchive``: an archive in a folder of a WebDAV server (``webdav://``, ``webdavs://``).

``webdav://[user[:password]@]host[:port]/path`` speaks HTTP, ``webdavs://`` HTTPS (verified; a
private CA is given by ``?ca_bundle=FILE`` or ``$SSL_CERT_FILE``). The path is the archive's
folder below the server's root URL. Credentials come from the URL (never shown), else from
``~/.netrc``, else from the system keyring (service ``archive-webdav``, account ``user@host``).

The primitives are :class:`~archive.backends.fsspec_base.FsspecArchive`'s, over webdav4's fsspec
filesystem (one ``httpx`` client, shared by all threads): a path is described by one
``PROPFIND`` (Depth 0), read by one streaming ``GET``, written by one streaming ``PUT`` (chunked)
to a temporary name, then ``MOVE``-d into place (the server keeps the mtime). A create-only
write takes the shared lock and sends ``Overwrite: F`` too, so that a server which honours it
(RFC 4918: 412 if the target exists) also stops writers that do not use the lock.
"""

from __future__ import annotations

import io
import logging
import time
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterable, Iterator

from ..errors import (ArchiveError, AuthenticationError, BackendError, BackendUnavailableError, InvalidInputError,
                      StorageFullError)
from ..hashing import CHUNK_SIZE
from ..timeouts import connect_timeout, io_timeout
from .fsspec_base import MKDIR_TRIES, Entry, FsspecArchive
from .fsspec_location import find_credentials, parse_location

try:
    import httpx
    from webdav4 import client as dav
    from webdav4.fsspec import WebdavFileSystem, translate_exceptions
    from webdav4.stream import IterStream
except ImportError as exc:  # pragma: no cover - the optional extra is missing
    raise ImportError(f"webdav:// needs {exc.name}: pip install 'archive[webdav]'") from None

logger = logging.getLogger(__name__)
KEYRING_SERVICE = "archive-webdav"
REPLACE_TRIES = 8  # a replacing MOVE that collides with another one is tried this often
_HTTP = {"webdav": "http", "webdavs": "https"}


class WebDAVArchive(FsspecArchive):
    """An archive on a WebDAV server; see the module docstring for the location."""

    max_workers = 8
    shares_connection = True

    def __init__(self, location: str, base_url: str, root: str, auth: tuple[str, str] | None,
                 verify: Any = True) -> None:
        super().__init__(location, root)
        #: The server's root URL, without credentials: safe to show.
        self.base_url = base_url
        self._auth, self._verify = auth, verify

    @classmethod
    def from_location(cls, location: str) -> "WebDAVArchive":
        """``webdav(s)://[user[:password]@]host[:port]/path[?ca_bundle=FILE]``."""
        where = parse_location(location, _HTTP, ("ca_bundle",))
        if where.path.strip("/") == "":
            raise InvalidInputError(f"{where.shown} names no folder: add /path/of/the/archive")
        netloc = f"[{where.host}]" if ":" in where.host else where.host
        base_url = f"{_HTTP[where.scheme]}://{netloc}{f':{where.port}' if where.port else ''}/"
        user, password = find_credentials(where, KEYRING_SERVICE)
        auth = (user, password or "") if user is not None else None
        verify = where.query.get("ca_bundle", [True])[-1] or True
        return cls(where.shown, base_url, where.path.strip("/"), auth, verify)

    def connect(self) -> WebdavFileSystem:
        timeout = httpx.Timeout(io_timeout(), connect=connect_timeout())
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        return WebdavFileSystem(self.base_url, auth=self._auth, verify=self._verify, timeout=timeout,
                                limits=limits, retry=False, skip_instance_cache=True)

    def disconnect(self, fs: WebdavFileSystem, graceful: bool) -> None:
        fs.client.http.close()

    def describe(self, fs: WebdavFileSystem, path: str) -> Entry:
        with translate_exceptions():
            result = fs.client.propfind(path, headers={"Depth": "0"})
        responses = list(result.responses.values())
        if not responses:
            raise FileNotFoundError(path)
        props = responses[0].properties
        if props.resource_type == "directory":
            return Entry("folder")
        mtime = props.modified.timestamp() if props.modified else 0.0
        return Entry("file", props.content_length or 0, mtime)

    @contextmanager
    def reader(self, fs: WebdavFileSystem, path: str) -> Iterator[BinaryIO]:
        with translate_exceptions(), IterStream(fs.client, fs.client.join_url(path), CHUNK_SIZE) as raw:
            yield io.BufferedReader(raw, CHUNK_SIZE)  # type: ignore[arg-type]

    def upload(self, fs: WebdavFileSystem, path: str, chunks: Iterable[bytes]) -> None:
        """One streaming ``PUT``. If the chunks fail, the body is ended cleanly and the error
        raised once the server has answered: a request cut instead would leave the server
        writing a partial file after the caller removed the temporary name."""
        failed: list[Exception] = []

        def body() -> Iterator[bytes]:
            try:
                for chunk in chunks:
                    yield bytes(chunk)
            except Exception as exc:  # raised below, after the server answered
                failed.append(exc)

        with translate_exceptions():
            fs.client.request("PUT", path, content=body())
        if failed:
            raise failed[0]

    def make_folder(self, fs: WebdavFileSystem, path: str) -> None:
        """``MKCOL``. A server error while another writer makes the same folder (wsgidav
        answers 500 when its ``mkdir`` loses that race) is taken as "it exists" if it does, and
        tried again if the folder is gone when looked at (a lock just released)."""
        for attempt in range(MKDIR_TRIES):
            try:
                fs.client.mkdir(path)
                return
            except dav.ResourceAlreadyExists:
                raise FileExistsError(path) from None
            except dav.ResourceConflict:
                raise FileNotFoundError(path) from None
            except dav.HTTPError as exc:
                if exc.response.status_code < 500 or attempt == MKDIR_TRIES - 1:
                    raise
                if self._exists(fs, path):
                    raise FileExistsError(path) from None

    def rename(self, fs: WebdavFileSystem, source: str, target: str, *, replace: bool) -> None:
        """One ``MOVE``; a replacing one that collides with another is tried again.

        A server may replace by deleting the target, then moving (wsgidav does): two writers
        replacing one target at once then make one of them fail (HTTP 500, 404 or 412 while
        the source is still there). Tried again after a short pause, it replaces in turn."""
        for attempt in range(REPLACE_TRIES):
            try:
                fs.client.move(source, target, overwrite=replace)
                return
            except dav.ResourceAlreadyExists:
                if not replace:
                    raise FileExistsError(target) from None
                collided: Exception = FileExistsError(target)
            except (dav.ResourceNotFound, dav.ResourceConflict):
                raise FileNotFoundError(source) from None
            except dav.HTTPError as exc:
                if not replace or exc.response.status_code < 500:
                    raise
                collided = exc
            logger.debug("MOVE %s collided with another writer (%s); again", target, collided)
            time.sleep(0.02 * 2 ** attempt)
        raise collided

    def failure(self, exc: BaseException, what: str) -> ArchiveError | None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return AuthenticationError(f"{self.location}: access refused (HTTP {status}); give credentials in"
                                       " the URL, ~/.netrc or the keyring")
        if isinstance(exc, dav.InsufficientStorage) or status == 507:
            return StorageFullError(f"no space left on {self.location} for {what}")
        if isinstance(exc, httpx.TransportError):
            return _transport_error(self.location, exc)
        if isinstance(exc, dav.ClientError):
            return BackendError(f"{self.location}: {what}: {' '.join(str(exc).split())[:300]}")
        return None


def _transport_error(location: str, exc: httpx.TransportError) -> ArchiveError:
    """A connection that failed: TLS refused, or the server unreachable, in one line."""
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    if "CERTIFICATE" in reason.upper() or "SSL" in reason.upper():
        return BackendError(f"{location}: TLS failed ({reason}); for a private CA add ?ca_bundle=FILE"
                            " to the location")
    return BackendUnavailableError(f"{location}: cannot reach the server ({reason})")
