"""Passwords: the system keyring, and a prompt only when a person is at a terminal.

Backends that log in with a password (SFTP through paramiko, HTTP, WebDAV, FTP) ask for one in
this order: the caller (a URL), the system keyring (service and account given by the backend,
e.g. ``archive-sftp`` / ``user@host``), and a prompt, only when stdin is a terminal. A prompted
password is stored back in the keyring once it has worked. Passwords are never logged and never
part of a message; a keyring that fails is logged by the name of its error only.
"""

from __future__ import annotations

import getpass
import logging
import sys

logger = logging.getLogger(__name__)


def stored_password(service: str, account: str) -> str | None:
    """The password the system keyring holds for ``account``, or None (also if no keyring)."""
    import keyring
    from keyring.errors import KeyringError

    try:
        return keyring.get_password(service, account)
    except KeyringError as exc:
        logger.debug("keyring lookup for %s failed: %s", account, type(exc).__name__)
        return None


def store_password(service: str, account: str, password: str) -> None:
    """Remember a password that worked; a keyring that refuses is logged, not fatal."""
    import keyring
    from keyring.errors import KeyringError

    try:
        keyring.set_password(service, account, password)
        logger.info("stored the password for %s in the keyring", account)
    except KeyringError as exc:
        logger.warning("could not store the password for %s in the keyring: %s", account, type(exc).__name__)


def prompt_password(prompt: str) -> str | None:
    """Ask on the terminal; None when stdin is not a terminal (scripts, CI) so nothing hangs."""
    if not sys.stdin or not sys.stdin.isatty():
        return None
    return getpass.getpass(prompt)
