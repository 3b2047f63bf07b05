"""Timeouts of network operations: how long to wait for a server, as the user may set it.

Two waits are bounded, each by an environment variable of this tool (a number of seconds):

* ``$ARCHIVE_CONNECT_TIMEOUT``: each step of connecting (TCP, the server's greeting, key
  exchange, login, the start of SFTP). Unset, a host's ``ConnectTimeout`` in ``~/.ssh/config``
  applies, else :data:`DEFAULT_CONNECT_TIMEOUT`. An unreachable address fails after that long.
* ``$ARCHIVE_IO_TIMEOUT``: how long a request on an established connection may go unanswered
  before the connection is given up as stalled (a transfer then retries on a new one).

A value that is not a positive, finite number is refused in one line.
"""

from __future__ import annotations

import math
import os

from .errors import InvalidInputError

CONNECT_TIMEOUT_ENV = "ARCHIVE_CONNECT_TIMEOUT"
IO_TIMEOUT_ENV = "ARCHIVE_IO_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 15.0  # seconds each step of connecting may take
DEFAULT_IO_TIMEOUT = 120.0  # seconds a request may go unanswered (an fsync of a large file included)


def connect_timeout(configured: str | None = None) -> float:
    """Seconds each step of connecting may take: ``$ARCHIVE_CONNECT_TIMEOUT``, else the host's
    ``ConnectTimeout`` of ``~/.ssh/config`` (``configured``), else :data:`DEFAULT_CONNECT_TIMEOUT`."""
    if os.environ.get(CONNECT_TIMEOUT_ENV, "").strip():
        return seconds_setting(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT)
    if configured and configured.strip().lower() != "none":
        return _positive_seconds(configured, "ConnectTimeout in ~/.ssh/config")
    return DEFAULT_CONNECT_TIMEOUT


def io_timeout() -> float:
    """Seconds a request on an established session may go unanswered (``$ARCHIVE_IO_TIMEOUT``)."""
    return seconds_setting(IO_TIMEOUT_ENV, DEFAULT_IO_TIMEOUT)


def seconds_setting(name: str, default: float) -> float:
    """A number of seconds from environment variable ``name``; ``default`` when unset.

    Raises
    ------
    InvalidInputError
        Not a positive, finite number.
    """
    text = os.environ.get(name, "").strip()
    return _positive_seconds(text, f"${name}") if text else default


def _positive_seconds(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"{what} must be a positive number of seconds, not {text!r}")
    return value
