"""``FTPArchive``: an archive in a folder of an FTP server (``ftp://``, ``ftps://``).

``ftp://[user[:password]@]host[:port]/path``; ``ftps://`` is explicit FTPS (``AUTH TLS``, then
``PROT P``: the control and the data connections are encrypted), with the server's certificate
verified against the system's CAs, ``$SSL_CERT_FILE`` or ``?ca_bundle=FILE``. As for ``sftp://``
the path is absolute on the server, and ``/~/path`` is relative to the login folder.
Credentials come from the URL (never shown), else ``~/.netrc``, else the system keyring
(service ``archive-ftp``, account ``user@host``), else an anonymous login.

The primitives are :class:`~archive.backends.fsspec_base.FsspecArchive`'s over fsspec's
``FTPFileSystem``, one control connection per thread in flight (FTP does one thing at a time):
a path is described by one ``MLST`` (RFC 3659), read by one ``RETR`` and written by one ``STOR``
of a temporary name, streamed over a single data connection each, then renamed into place with
``RNFR``/``RNTO``, which keeps the mtime. ``RNTO`` replaces an existing target on most servers
and no FTP command creates a name only if it is free, except ``MKD``: so create-only writes take
the shared lock folder (see :mod:`~archive.backends.fsspec_base` and docs/webdav-ftp.md for
what that does and does not protect against).
"""

from __future__ import annotations

import ftplib
import io
import logging
import socket
import ssl
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, BinaryIO, Iterable, Iterator

from ..errors import (ArchiveError, AuthenticationError, BackendError, BackendUnavailableError, InvalidInputError,
                      StorageFullError)
from ..hashing import CHUNK_SIZE
from ..timeouts import io_timeout
from .fsspec_base import MKDIR_TRIES, Entry, FsspecArchive
from .fsspec_location import find_credentials, parse_location

try:
    from fsspec.implementations.ftp import FTPFileSystem
except ImportError as exc:  # pragma: no cover - the optional extra is missing
    raise ImportError(f"ftp:// needs {exc.name}: pip install 'archive[ftp]'") from None

logger = logging.getLogger(__name__)
KEYRING_SERVICE = "archive-ftp"
_KINDS = {"file": "file", "dir": "folder", "cdir": "folder", "pdir": "folder"}


class VerifiedFTPFileSystem(FTPFileSystem):
    """fsspec's FTP filesystem, whose FTPS checks the server's certificate and host name
    (``ftplib``'s default context checks neither), and that caches no listing."""

    def __init__(self, *args: Any, ssl_context: ssl.SSLContext | None = None, **kwargs: Any) -> None:
        self._ssl_context = ssl_context
        super().__init__(*args, skip_instance_cache=True, use_listings_cache=False, **kwargs)

    def _connect(self) -> None:
        if not self.tls:
            super()._connect()
            return
        self.ftp = ftplib.FTP_TLS(context=self._ssl_context, timeout=self.timeout, encoding=self.encoding)
        self.ftp.connect(self.host, self.port)
        self.ftp.login(*self.cred)  # AUTH TLS first: the password never goes in the clear


class FTPArchive(FsspecArchive):
    """An archive on an FTP(S) server; see the module docstring for the location."""

    max_workers = 4

    def __init__(self, location: str, host: str, port: int, user: str | None, password: str | None,
                 root: str, tls: ssl.SSLContext | None) -> None:
        super().__init__(location, root)
        self._host, self._port, self._cred, self._tls = host, port, (user, password), tls
        if not root.startswith("/"):  # relative to the login folder: made absolute once
            with self.borrow() as fs, self.errors("the login folder"):
                home = fs.ftp.pwd().rstrip("/")
            self.root = f"{home}/{root}".rstrip("/") if root else home

    @classmethod
    def from_location(cls, location: str) -> "FTPArchive":
        """``ftp(s)://[user[:password]@]host[:port]/path[?ca_bundle=FILE]``."""
        where = parse_location(location, ("ftp", "ftps"), ("ca_bundle",))
        path = where.path
        if path in ("", "/"):
            raise InvalidInputError(f"{where.shown} names no folder: add /absolute/path or /~/path-in-home")
        root = "" if path in ("/~", "/~/") else path[3:] if path.startswith("/~/") else path
        user, password = find_credentials(where, KEYRING_SERVICE)
        tls = None
        if where.scheme == "ftps":
            tls = ssl.create_default_context(cafile=where.query.get("ca_bundle", [None])[-1] or None)
        return cls(where.shown, where.host, where.port or 21, user, password, root.rstrip("/"), tls)

    def connect(self) -> VerifiedFTPFileSystem:
        user, password = self._cred
        return VerifiedFTPFileSystem(self._host, port=self._port, username=user, password=password,
                                     timeout=io_timeout(), tls=self._tls is not None,
                                     ssl_context=self._tls)

    def disconnect(self, fs: VerifiedFTPFileSystem, graceful: bool) -> None:
        """``QUIT`` (or, for a connection that failed or was interrupted, just close it)."""
        try:
            if graceful:
                fs.ftp.quit()
        except (ftplib.Error, OSError, EOFError):
            pass
        fs.ftp.close()

    def describe(self, fs: VerifiedFTPFileSystem, path: str) -> Entry:
        """One ``MLST``: its facts say the kind, size and mtime (UTC) of ``path``."""
        try:
            reply = fs.ftp.sendcmd(f"MLST {path}")
        except ftplib.error_perm as exc:
            if str(exc).startswith("550"):
                raise FileNotFoundError(path) from None
            raise
        facts = _facts(reply)
        kind = facts.get("type", "").lower()
        if kind.startswith("os.unix=slink") or kind.startswith("os.unix=symlink"):
            return Entry("a symbolic link")
        if _KINDS.get(kind) != "file":
            return Entry("folder" if _KINDS.get(kind) == "folder" else f"not a file ({kind or 'unknown'})")
        return Entry("file", int(facts.get("size", "0") or 0), _mlst_time(facts.get("modify", "")))

    @contextmanager
    def reader(self, fs: VerifiedFTPFileSystem, path: str) -> Iterator[BinaryIO]:
        """One ``RETR`` on one data connection; a read that stops early costs the connection."""
        fs.ftp.voidcmd("TYPE I")
        raw = _DataStream(fs.ftp.transfercmd(f"RETR {path}"))
        try:
            yield io.BufferedReader(raw, CHUNK_SIZE)  # type: ignore[arg-type]
        finally:
            raw.close()
            if raw.at_end:
                fs.ftp.voidresp()
            else:
                self.discard(fs)

    def upload(self, fs: VerifiedFTPFileSystem, path: str, chunks: Iterable[bytes]) -> None:
        """One ``STOR`` on one data connection (a failure costs the control connection)."""
        fs.ftp.voidcmd("TYPE I")
        conn = fs.ftp.transfercmd(f"STOR {path}")
        try:
            for chunk in chunks:
                conn.sendall(chunk)
            if isinstance(conn, ssl.SSLSocket):
                conn.unwrap()
        finally:
            conn.close()
        fs.ftp.voidresp()

    def make_folder(self, fs: VerifiedFTPFileSystem, path: str) -> None:
        """``MKD``; its refusal (550) means "exists" only when something is there. A refusal
        for a folder that is gone when looked at (a lock just released) is tried again."""
        for attempt in range(MKDIR_TRIES):
            try:
                fs.ftp.mkd(path)
                return
            except ftplib.error_perm:
                if self._exists(fs, path):
                    raise FileExistsError(path) from None
                if attempt == MKDIR_TRIES - 1:
                    raise

    def rename(self, fs: VerifiedFTPFileSystem, source: str, target: str, *, replace: bool) -> None:
        """``RNFR``/``RNTO`` (replaces where the server does; ``replace`` cannot be asked for)."""
        try:
            fs.ftp.rename(source, target)
        except ftplib.error_perm as exc:
            if str(exc).startswith("550"):
                raise FileNotFoundError(source) from None
            raise

    def failure(self, exc: BaseException, what: str) -> ArchiveError | None:
        reply = " ".join(str(exc).split())[:300]
        if isinstance(exc, ftplib.error_perm) and reply.startswith("530"):
            return AuthenticationError(f"{self.location}: login refused ({reply}); give credentials in the URL,"
                                       " ~/.netrc or the keyring")
        if isinstance(exc, (ftplib.error_perm, ftplib.error_temp)) and reply[:3] in ("452", "552"):
            return StorageFullError(f"no space left on {self.location} for {what} ({reply})")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return BackendError(f"{self.location}: TLS failed ({reply}); for a private CA add ?ca_bundle=FILE"
                                " to the location")
        if isinstance(exc, ftplib.error_temp) and reply.startswith("421"):
            return BackendUnavailableError(f"{self.location}: the server closed the session ({reply})")
        if isinstance(exc, (ConnectionError, socket.timeout, EOFError, socket.gaierror)):
            return BackendUnavailableError(f"{self.location}: cannot reach the server ({reply or type(exc).__name__})")
        if isinstance(exc, (ftplib.Error, ssl.SSLError)):
            return BackendError(f"{self.location}: {what}: {reply}")
        return None


class _DataStream(io.RawIOBase):
    """The data connection of a ``RETR`` as a raw binary stream; notes when it reached the end."""

    def __init__(self, conn: socket.socket) -> None:
        super().__init__()
        self._conn = conn
        self.at_end = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        count = self._conn.recv_into(buffer)
        if count == 0:
            self.at_end = True
        return count

    def close(self) -> None:
        if not self.closed:
            try:
                if self.at_end and isinstance(self._conn, ssl.SSLSocket):
                    self._conn.unwrap()
            except (OSError, ssl.SSLError):
                pass
            self._conn.close()
        super().close()


def _facts(reply: str) -> dict[str, str]:
    """The facts of an ``MLST`` reply (``250-...``, `` type=file;size=3;modify=...; /path``)."""
    lines = reply.splitlines()
    line = lines[1] if len(lines) > 1 else ""
    facts_part = line.strip().split(" ", 1)[0]
    found: dict[str, str] = {}
    for fact in facts_part.split(";"):
        name, sep, value = fact.partition("=")
        if sep:
            found[name.strip().lower()] = value
    return found


def _mlst_time(text: str) -> float:
    """POSIX seconds of an MLST time (``YYYYMMDDHHMMSS[.sss]``, UTC); 0 when missing."""
    try:
        whole, _, fraction = text.partition(".")
        moment = datetime.strptime(whole, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return 0.0
    return moment.timestamp() + (float(f"0.{fraction}") if fraction.isdigit() else 0.0)
