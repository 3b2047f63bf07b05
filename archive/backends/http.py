"""A read-only archive served by a plain static web server (``http://`` and ``https://``).

Any web server that serves the files of a folder archive (nginx, Apache, a CDN, an object
store's public URL) is an archive that can be read: ``ls``, ``show``, ``pull``, ``open`` and
``verify`` work; nothing can be written (:class:`~archive.errors.ReadOnlyArchiveError`). A web
server cannot list a folder in a form to rely on, so names and versions come from the index
files every publish writes (:mod:`archive.index`): ``listable`` is False.

The backend maps its primitives to HTTP: ``stat_key`` is a HEAD (size from ``Content-Length``,
mtime from ``Last-Modified``), ``open_key`` a streaming GET whose body, if the connection is
cut half-way, resumes with a ``Range`` request (:class:`ResumingBody`). One
``requests`` session serves all threads, its pool sized for :attr:`max_workers`, with bounded
urllib3 retries of these idempotent requests and the timeouts of :mod:`archive.timeouts`.

A server that refuses HEAD (405 or 501, as some object-store gateways and minimal servers do) is
asked for its first byte with a ranged GET instead: ``Content-Range`` tells the size. The refusal
is remembered, so it costs one extra request per archive opened.

TLS is verified; a private CA is given by ``$REQUESTS_CA_BUNDLE`` or ``?ca_bundle=FILE`` in the
location. Credentials, never shown nor logged, come from the first of: the URL
(``https://user:password@host/path``); ``~/.netrc``, which requests reads by itself; the system
keyring, asked only once the server answered 401: with a user in the URL
(``https://user@host/path``), the password of service ``archive-http``, account
``user@host[:port]``; without one, a bearer token of service ``archive-http-token``, account
``host[:port]``. Redirects are followed only to the same scheme, host and port, so credentials
never leave for another host.
"""

from __future__ import annotations

import email.utils
import io
import logging
import re
import threading
import time
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterable, Iterator
from urllib.parse import parse_qs, quote, unquote, urljoin, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.util.retry import Retry

from ..errors import (AuthenticationError, BackendError, BackendUnavailableError, InvalidInputError,
                      KeyNotFoundError, ReadOnlyArchiveError, UnsafeObjectError)
from ..hashing import CHUNK_SIZE
from ..interface import ArchiveInterface, KeyInfo
from ..keys import check_key
from ..locations import redact, split_userinfo
from ..timeouts import connect_timeout, io_timeout

logger = logging.getLogger(__name__)
MAX_REDIRECTS = 5
KEPT_CONNECTIONS = 32  # idle connections kept per host, so that -j above max_workers reuses them too
URL_RETRIES = 3  # urllib3 retries of one request (connect, read, 502/503/504)
MAX_RESUMES = 5  # Range requests that may continue one body
RESUME_DELAY = 0.2  # seconds before the first resume, doubled for each next one
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
KEYRING_SERVICE = "archive-http"  # basic auth: account user@host[:port]
KEYRING_TOKEN_SERVICE = "archive-http-token"  # bearer token: account host[:port]


class _MethodRefused(BackendError):
    """The server does not allow this method (HTTP 405 or 501)."""


class HTTPArchive(ArchiveInterface):
    """An archive read from ``http(s)://host[:port]/path/`` (see the module docstring)."""

    read_only = True
    listable = False

    def __init__(self, location: str, base_url: str, auth: tuple[str, str] | None = None,
                 ca_bundle: str | None = None, user: str | None = None) -> None:
        super().__init__(redact(location))
        #: The archive's root URL, ending in "/", without credentials or query: safe to show.
        self.base_url = base_url
        self._ca_bundle = ca_bundle
        self._session = _make_session(self.max_workers, auth)
        self._user = user  # named in the URL without a password: its password is in the keyring
        self._keyring_asked = auth is not None  # a password in the URL is never second-guessed
        self._auth_lock = threading.Lock()
        self._head_refused = False

    @classmethod
    def from_location(cls, location: str) -> "HTTPArchive":
        """``http(s)://[user[:password]@]host[:port]/path[?ca_bundle=FILE]``."""
        prefix, userinfo, rest = split_userinfo(location)
        parts = urlsplit(prefix + rest)  # the location without its user information
        try:
            parts.port
        except ValueError:
            raise InvalidInputError(f"{redact(location)}: the port is not a number") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise InvalidInputError(f"{redact(location)}: not an http(s)://host/path URL")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"ca_bundle"}
        if unknown:
            raise InvalidInputError(f"{redact(location)}: unknown parameter {sorted(unknown)[0]!r}"
                                    " (only ca_bundle)")
        ca_bundle = query.get("ca_bundle", [None])[-1] or None
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        base_url = urlunsplit((parts.scheme.lower(), parts.netloc, path, "", ""))
        auth, user = None, None
        if userinfo is not None and ":" in userinfo:
            user, password = userinfo.split(":", 1)
            auth = (unquote(user), unquote(password))
        elif userinfo:
            user = unquote(userinfo)
        return cls(location, base_url, auth, ca_bundle, user)

    # ---------------------------------------------------------------- reading
    def url_of(self, key: str) -> str:
        """The URL of ``key``: each part of it percent-quoted, below the root URL."""
        check_key(key)
        return self.base_url + "/".join(quote(part, safe="") for part in key.split("/"))

    def stat_key(self, key: str) -> KeyInfo:
        """A HEAD request: ``Content-Length`` is the size, ``Last-Modified`` the mtime.

        If the server refuses HEAD, a GET of the first byte: the size is after the ``/`` of
        ``Content-Range`` (or, from a server that ignores the range, ``Content-Length``).
        """
        url = self.url_of(key)
        if not self._head_refused:
            try:
                with self.request("HEAD", url, key) as response:
                    return _key_info(response, url, _size_of_whole)
            except _MethodRefused:
                logger.info("%s refuses HEAD; asking for the first byte with GET instead", self.location)
                self._head_refused = True
        with self.request("GET", url, key, {"Range": "bytes=0-0"}, stream=True) as response:
            return _key_info(response, url, _size_of_part)

    @contextmanager
    def open_key(self, key: str) -> Iterator[BinaryIO]:
        """A streaming GET, read as a file; a cut connection resumes with a Range request."""
        url = self.url_of(key)
        response = self.request("GET", url, key, stream=True)
        body = ResumingBody(response, url, lambda headers: self.request("GET", url, key, headers, stream=True))
        try:
            yield io.BufferedReader(body, CHUNK_SIZE)  # type: ignore[arg-type]
        finally:
            body.close()

    def request(self, method: str, url: str, key: str, headers: dict[str, str] | None = None,
                stream: bool = False) -> requests.Response:
        """Send one request, follow same-origin redirects, map failures to archive errors.

        Returns a response with status 200 or 206; every other outcome raises. A redirect to the
        same path with a ``/`` added is how web servers answer for a folder: refused as one.
        """
        origin = urlsplit(url)[:2]
        for _ in range(MAX_REDIRECTS + 1):
            response = self._send(method, url, headers, stream)
            if response.status_code == 401 and self._credentials_from_keyring():
                response.close()
                response = self._send(method, url, headers, stream)
            if not response.is_redirect:
                _check_status(response, url, key)
                return response
            target = urljoin(url, response.headers["Location"])
            response.close()
            if urlsplit(target).path == urlsplit(url).path + "/":  # how web servers answer for a folder
                raise UnsafeObjectError(key, "a folder")
            if urlsplit(target)[:2] != origin:
                raise BackendError(f"{url}: redirected to another host or scheme"
                                   f" ({_shown(target)}); not followed")
            url = target
        raise BackendError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _send(self, method: str, url: str, headers: dict[str, str] | None, stream: bool) -> requests.Response:
        try:
            return self._session.request(method, url, headers=headers, stream=stream, allow_redirects=False,
                                         timeout=(connect_timeout(), io_timeout()), verify=self._ca_bundle)
        except requests.exceptions.SSLError as exc:
            raise BackendError(f"{url}: TLS failed ({_reason(exc)}); for a private CA set"
                               " $REQUESTS_CA_BUNDLE or add ?ca_bundle=FILE to the location") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise BackendUnavailableError(f"{url}: cannot reach the server ({_reason(exc)})") from None
        except requests.exceptions.RequestException as exc:
            raise BackendError(f"{url}: {_reason(exc)}") from None

    def _credentials_from_keyring(self) -> bool:
        """After a 401, once per archive: use what the keyring holds for this server, if anything.

        Asked only when needed, as git asks its credential helper: a keyring may be slow or
        locked, and most web archives are public.
        """
        from ..passwords import stored_password  # not at import: it loads keyring

        with self._auth_lock:
            if self._keyring_asked:
                return False
            self._keyring_asked = True
            netloc = urlsplit(self.base_url).netloc
            if self._user is not None:
                password = stored_password(KEYRING_SERVICE, f"{self._user}@{netloc}")
                if password is None:
                    return False
                self._session.auth = (self._user, password)
            else:
                token = stored_password(KEYRING_TOKEN_SERVICE, netloc)
                if token is None:
                    return False
                self._session.auth = _Bearer(token)
            logger.debug("using the credentials the keyring holds for %s", netloc)
            return True

    # ---------------------------------------------------------------- no writing, no listing
    def check_writable(self) -> None:
        """A web server is read only: every write is refused in one line."""
        raise ReadOnlyArchiveError(f"{self.location} is read-only (a web server)")

    def write_key(self, key: "str | Callable[[], str]", chunks: Iterable[bytes], *,
                  exclusive: bool = False) -> None:
        self.check_writable()

    def delete_key(self, key: str) -> None:
        self.check_writable()

    def move_key(self, source: str, target: str) -> None:
        self.check_writable()

    def list_keys(self, prefix: str) -> list[str]:
        """A web server cannot list: shared code reads the index files instead (``listable``)."""
        raise BackendError(f"{self.location} cannot list {prefix!r} (a web server): names and versions"
                           " come from the index files")

    def close(self) -> None:
        self._session.close()


def _make_session(pool_size: int, auth: tuple[str, str] | None) -> requests.Session:
    """One session for every thread: a pool of connections kept alive, bounded retries.

    The pool keeps up to ``pool_size`` (or :data:`KEPT_CONNECTIONS`, if more) idle connections:
    a connection is only opened when a thread needs one, and one that finds the pool full would
    be closed after its request, costing a new connection for the next file.
    """
    session = requests.Session()
    retry = Retry(total=URL_RETRIES, connect=URL_RETRIES, read=URL_RETRIES, status=URL_RETRIES,
                  status_forcelist=(502, 503, 504), allowed_methods=frozenset({"HEAD", "GET"}),
                  backoff_factor=0.2, raise_on_status=False, redirect=False)
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(pool_size, KEPT_CONNECTIONS), max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["Accept-Encoding"] = "identity"  # byte ranges count the stored bytes
    if auth is not None:
        session.auth = auth  # else requests reads ~/.netrc
    return session


class _Bearer(AuthBase):
    """``Authorization: Bearer TOKEN`` on every request (the token is never shown: no repr)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_Bearer(...)"


def _size_of_whole(response: requests.Response) -> str | None:
    """The size of the object a HEAD (or an unranged GET) describes."""
    return response.headers.get("Content-Length")


def _size_of_part(response: requests.Response) -> str | None:
    """The size of the object a ranged GET took a part of: after the ``/`` of Content-Range."""
    if response.status_code == 200:  # the server ignored the range: the whole object
        return _size_of_whole(response)
    found = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    return found[3] if found else None


def _key_info(response: requests.Response, url: str, size_of: Callable[[requests.Response], str | None]) -> KeyInfo:
    """Size and mtime from the headers of ``response``, the size read by ``size_of``."""
    size = size_of(response)
    if size is None or not size.isdigit():
        raise BackendError(f"{url}: the server sent no size (Content-Length)")
    return KeyInfo(size=int(size), mtime=_http_time(response.headers.get("Last-Modified")))


def _check_status(response: requests.Response, url: str, key: str) -> None:
    """Map an HTTP status to the archive's errors (200 and 206 pass)."""
    status = response.status_code
    if status in (200, 206):
        return
    response.close()
    if status in (404, 410):
        raise KeyNotFoundError(key)
    if status in (401, 403):
        raise AuthenticationError(f"{url}: access refused (HTTP {status}); give credentials in ~/.netrc,"
                                  f" the keyring (service {KEYRING_SERVICE}) or the URL")
    if status in (405, 501):
        raise _MethodRefused(f"{url}: the server refuses {response.request.method} (HTTP {status})")
    if status >= 500 or status == 429:
        raise BackendUnavailableError(f"{url}: server error (HTTP {status} {response.reason})")
    raise BackendError(f"{url}: unexpected answer HTTP {status} {response.reason}")


def _http_time(text: str | None) -> float:
    """POSIX seconds of an HTTP date; 0 when the server sent none (or a malformed one)."""
    if not text:
        return 0.0
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _shown(url: str) -> str:
    """``url`` without any user information, safe to show."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error, on one line (they nest several deep)."""
    for _ in range(8):
        inner = getattr(exc, "reason", None)
        nested = [arg for arg in getattr(exc, "args", ()) if isinstance(arg, BaseException)]
        if isinstance(inner, BaseException):
            exc = inner
        elif nested:
            exc = nested[-1]
        else:
            break
    return " ".join((str(exc) or type(exc).__name__).split())[:300]


class ResumingBody(io.RawIOBase):
    """The body of a streaming GET as a raw binary stream that survives cut connections.

    When the connection breaks before the last byte (or a read times out), the rest is asked for
    with ``Range: bytes=N-`` (and ``If-Range``, so a changed object is never spliced): the answer
    must be 206 with a ``Content-Range`` starting at N, else the read fails in one line. At most
    :data:`MAX_RESUMES` resumes per body; then :class:`BackendUnavailableError` (shared code may
    retry the whole transfer).
    """

    def __init__(self, response: requests.Response, url: str,
                 again: Callable[[dict[str, str]], requests.Response]) -> None:
        super().__init__()
        self._response, self._url, self._again = response, url, again
        length = response.headers.get("Content-Length", "")
        self._size = int(length) if length.isdigit() else None
        self._validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        self._position = 0
        self.resumes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while True:
            try:
                data = self._response.raw.read(len(buffer))
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if self._size is not None and self._position >= self._size:
                    return 0
                self._resume(_reason(exc))
                continue
            if not data and self._size is not None and self._position < self._size:
                self._resume("the body ended early")
                continue
            buffer[:len(data)] = data
            self._position += len(data)
            return len(data)

    def _resume(self, reason: str) -> None:
        """Replace the broken response by one for the bytes from :attr:`_position` on."""
        self._response.close()
        if self.resumes >= MAX_RESUMES:
            raise BackendUnavailableError(f"{self._url}: transfer cut {self.resumes + 1} times ({reason})")
        self.resumes += 1
        logger.warning("%s: transfer cut at byte %d (%s); resuming", self._url, self._position, reason)
        time.sleep(RESUME_DELAY * 2 ** (self.resumes - 1))
        headers = {"Range": f"bytes={self._position}-"}
        if self._validator:
            headers["If-Range"] = self._validator
        response = self._again(headers)
        found = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if response.status_code != 206 or not found or int(found[1]) != self._position:
            response.close()
            raise BackendError(f"{self._url}: cut at byte {self._position} and cannot resume: the server"
                               f" ignored the byte range (HTTP {response.status_code}) or the object changed")
        self._response = response

    def close(self) -> None:
        self._response.close()
        super().close()
