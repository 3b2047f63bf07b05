"""``get_interface``: from a location string to the backend that serves it.

A location is a path or ``file://`` URL today; ``sftp://``, ``http(s)://``, ``webdav(s)://``,
``ftp(s)://`` and ``s3://`` are mapped to their backends as those arrive. No location means the default archive:
``$ARCHIVE_URL`` if set, else a folder in the user data dir, created on first use. Any other
location must already hold an archive (``archive init`` creates one), so that a typo never
scatters blobs into a random folder.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from pathlib import Path
from urllib.parse import quote, unquote

from .errors import ArchiveError, InvalidInputError
from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
#: Backends are found by URL scheme in this entry-point group: a package adds one by declaring
#: ``[project.entry-points."archive.backends"] myscheme = "mypackage.module:MyArchive"``.
ENTRY_POINT_GROUP = "archive.backends"
# The built-in ones are declared there too (pyproject.toml); this table finds them without
# reading every installed package's metadata (start-up time), and in a source checkout.
_BACKENDS = {"": "archive.backends.filesystem:FileSystemArchive",
             "file": "archive.backends.filesystem:FileSystemArchive",
             "sftp": "archive.backends.sftp:SFTPArchive",
             "http": "archive.backends.http:HTTPArchive", "https": "archive.backends.http:HTTPArchive",
             "s3": "archive.backends.s3:S3Archive",
             "webdav": "archive.backends.webdav:WebDAVArchive", "webdavs": "archive.backends.webdav:WebDAVArchive",
             "ftp": "archive.backends.ftp:FTPArchive", "ftps": "archive.backends.ftp:FTPArchive"}
_HOST_AFTER_AT = re.compile(r"@(?:\[[0-9A-Fa-f:.]*\]|[^/?#@\[\]:]*)(?::[^/?#@]*)?(?=[/?#]|$)")


def default_location() -> str:
    """``$ARCHIVE_URL``, else ``<user data dir>/archive``."""
    location = os.environ.get("ARCHIVE_URL")
    if location:
        return location
    import platformdirs

    return str(Path(platformdirs.user_data_dir("archive", appauthor=False)) / "archive")


def get_interface(location: str | os.PathLike[str] | None = None, user: str | None = None,
                  password: str | None = None, *, create: bool = False,
                  resolve_relative_paths_to: str | os.PathLike[str] | None = None) -> ArchiveInterface:
    """Open the archive at ``location``.

    The arguments after ``location`` are those of rmellipse's ``get_interface(host, user,
    password)``, so its scripts keep working: ``user`` and ``password`` log in where a
    location takes a login (an ``sftp://`` password login); a folder ignores them. A password
    given here is used for this interface only: never stored, logged or shown (to keep one,
    put it in the system keyring, service ``archive-sftp``, account ``user@host``).

    Parameters
    ----------
    location
        A folder path or a URL (``file://``, ``sftp://``, ``http(s)://``); None for the default archive.
    user, password
        A login for the location, as if written in its URL (``sftp://user:password@host/...``).
    resolve_relative_paths_to
        The folder a relative path is taken from (rmellipse's argument) instead of the current one.
    create
        Create an empty archive there if there is none (``archive init``). The built-in
        default archive (no location and no ``$ARCHIVE_URL``) is always created on first use.

    Raises
    ------
    InvalidInputError
        The location is malformed or of an unknown kind.
    NotAnArchiveError
        Nothing there is an archive, and ``create`` is false.
    """
    if location is None:
        create = create or not os.environ.get("ARCHIVE_URL")
        location = default_location()
    arc = make_backend(with_login(os.fspath(location), user, password, resolve_relative_paths_to))
    if create:
        arc.initialize()
    else:
        arc.check_archive()
    from .cache import default_cache
    from .pins import SeenRecords

    arc.seen = SeenRecords(default_cache().root / "seen")
    return arc


def with_login(location: str, user: str | None = None, password: str | None = None,
               base: str | os.PathLike[str] | None = None) -> str:
    """``location`` with ``user`` and ``password`` written into its URL (percent-encoded), and a
    relative path taken from ``base``; a plain path takes no login, so it is returned as it is.

    Raises
    ------
    InvalidInputError
        The URL names another user, or a password as well.
    """
    if "://" not in location:
        return location if base is None or os.path.isabs(location) else os.path.join(base, location)
    if user is None and password is None:
        return location
    prefix, userinfo, rest = split_userinfo(location)
    if userinfo is None:
        scheme, _, rest = location.partition("://")
        prefix = f"{scheme}://"
    if userinfo is not None and (":" in userinfo or (user is not None and unquote(userinfo) != user)):
        raise InvalidInputError(f"{redact(location)!r} names a login already; give it in the location or as"
                                " arguments, not both")
    login = quote(user or unquote(userinfo or ""), safe="")  # none: the ssh config's User
    login += "" if password is None else ":" + quote(password, safe="")
    return f"{prefix}{login}@{rest}"


def make_backend(location: str) -> ArchiveInterface:
    """The backend object for ``location``, not yet checked for an archive."""
    if not location:
        raise InvalidInputError("empty archive location")
    scheme = "" if "://" not in location else location.split("://", 1)[0].lower()
    backend = backend_class(scheme)
    if backend is None:
        known = sorted((set(_BACKENDS) | {ep.name for ep in _entry_points()}) - {""})
        raise InvalidInputError(f"unsupported archive location {redact(location)!r}:"
                                f" use a folder path or a {', '.join(s + '://' for s in known)} URL")
    try:
        return backend.from_location(location)
    except ArchiveError as exc:
        raise _without_password(exc, location) from None


def _without_password(exc: ArchiveError, location: str) -> ArchiveError:
    """``exc`` itself, or the same error with the location's password replaced by ``***``.

    The boundary for every backend: one that quotes the location it was given (say, to refuse
    it) cannot show its password. The original error is not chained, so no traceback shows it.
    """
    secret = password_of(location)
    if not secret:
        return exc
    message = str(exc)
    for form in {secret, unquote(secret)}:
        message = message.replace(form, "***")
    if message == str(exc):
        return exc
    try:
        return type(exc)(message)
    except TypeError:  # an error class that wants more arguments
        return InvalidInputError(message)


def split_userinfo(location: str) -> tuple[str, str | None, str]:
    """``scheme://``, the ``user[:password]`` part (None if there is none) and the rest.

    A password is often typed as it is, not percent-encoded, and may then hold ``@``, ``/``,
    ``?`` or ``#``: ``sftp://u:p@ss@host/x``, ``sftp://u:pa/ss@host/x`` or
    ``sftp://u:p#w@host:99x/x``, where a URL parser sees a host ``u`` and a port ``pa``. So
    the user part is found here, before any parsing that could fail and quote the location:
    there is a password when a ``:`` comes before the first ``@``, and it runs to the last
    ``@`` that is followed by a host (and ``:port``, then ``/``, ``?``, ``#`` or the end), or
    else to the last ``@``. When in doubt more is hidden, never less: a path with an ``@``
    (``sftp://u:p@h/a@b``, ``sftp://h:22/a@b``) is shown from that ``@`` on (``sftp://u:***@b``).
    """
    scheme, sep, rest = location.partition("://")
    if not sep or not scheme or "/" in scheme or "@" not in rest:
        return location, None, ""
    first_at = rest.index("@")
    if ":" not in rest[:first_at]:  # no password: the user name ends at the first "@", if any
        if any(c in rest[:first_at] for c in "/?#"):
            return scheme + sep, None, rest
        return scheme + sep, rest[:first_at], rest[first_at + 1:]
    ats = [m.start() for m in _HOST_AFTER_AT.finditer(rest)] or [rest.rindex("@")]
    return scheme + sep, rest[:ats[-1]], rest[ats[-1] + 1:]


def backend_class(scheme: str) -> "type[ArchiveInterface] | None":
    """The backend class registered for ``scheme`` (``""`` for a plain path), or None."""
    spec = _BACKENDS.get(scheme)
    if spec is None:
        found = [ep for ep in _entry_points() if ep.name == scheme]
        if not found:
            return None
        spec = found[0].value
    module, _, name = spec.partition(":")
    try:
        backend = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InvalidInputError(f"the backend registered for {scheme}:// ({spec}) cannot be loaded: {exc}") from None
    if not (isinstance(backend, type) and issubclass(backend, ArchiveInterface)):
        raise InvalidInputError(f"the backend registered for {scheme}:// ({spec}) is not an ArchiveInterface")
    return backend


def _entry_points() -> list:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def redact(location: str) -> str:
    """``location`` with any password in it replaced by ``***``, safe to show and log.

    Any scheme; see :func:`split_userinfo` for how a password typed unencoded is found.
    """
    prefix, userinfo, rest = split_userinfo(location)
    if userinfo is None:
        scheme, _, rest = location.partition("://")
        prefix = f"{scheme}://"
    if userinfo is None or ":" not in userinfo:
        return location
    return f"{prefix}{userinfo.split(':', 1)[0]}:***@{rest}"


def password_of(location: str) -> str | None:
    """The password ``location`` holds as written (not decoded), or None."""
    _, userinfo, _ = split_userinfo(location)
    if userinfo is None or ":" not in userinfo:
        return None
    return userinfo.split(":", 1)[1] or None
