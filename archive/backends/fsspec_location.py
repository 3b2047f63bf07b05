"""Locations and credentials of the backends on :mod:`~archive.backends.fsspec_base`.

``scheme://[user[:password]@]host[:port]/path[?parameters]`` is split here once for WebDAV and
FTP, with every message quoting the location with its password replaced by ``***``
(:func:`archive.locations.redact`, which also finds a password typed unencoded); a password not
in the URL is looked up in ``~/.netrc``, then in the system keyring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

from ..errors import InvalidInputError

logger = logging.getLogger(__name__)
@dataclass(frozen=True)
class Location:
    """The parts of a ``scheme://[user[:password]@]host[:port]/path[?query]`` location."""

    scheme: str
    host: str
    port: int | None
    user: str | None
    password: str | None
    path: str
    query: dict[str, list[str]]
    shown: str


def parse_location(location: str, schemes: Iterable[str], parameters: Iterable[str] = ()) -> Location:
    """Split ``location``; every message shows it with its password replaced by ``***``."""
    from urllib.parse import parse_qs, unquote, urlsplit

    from ..locations import redact, split_userinfo

    shown = redact(location)
    prefix, userinfo, rest = split_userinfo(location)
    parts = urlsplit(prefix + rest)
    try:
        port = parts.port
    except ValueError:
        raise InvalidInputError(f"{shown}: the port is not a number") from None
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise InvalidInputError(f"{shown}: not a {'/'.join(sorted(schemes))}://[user@]host[:port]/path location")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(parameters))
    if unknown:
        known = ", ".join(sorted(parameters)) or "none"
        raise InvalidInputError(f"{shown}: unknown parameter {unknown[0]!r} (known: {known})")
    user = password = None
    if userinfo is not None:
        user, _, secret = userinfo.partition(":")
        user, password = unquote(user) or None, unquote(secret) if ":" in userinfo else None
    return Location(parts.scheme.lower(), parts.hostname, port, user, password, unquote(parts.path), query,
                    shown)


def find_credentials(where: Location, keyring_service: str) -> tuple[str | None, str | None]:
    """User and password: from the location, else ``~/.netrc`` (``machine HOST``), else the
    system keyring (service ``keyring_service``, account ``user@host``, when a user is given)."""
    if where.password is not None:
        return where.user, where.password
    import netrc
    from pathlib import Path

    try:
        found = netrc.netrc(str(Path.home() / ".netrc")).authenticators(where.host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError) as exc:
        logger.debug("no usable ~/.netrc: %s", type(exc).__name__)
        found = None
    if found and (where.user is None or found[0] == where.user):
        return found[0], found[2]
    if where.user is not None:
        from ..passwords import stored_password

        return where.user, stored_password(keyring_service, f"{where.user}@{where.host}")
    return None, None
