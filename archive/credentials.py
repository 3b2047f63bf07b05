"""Who and where an SSH login goes: OpenSSH's config, host name rules, and known host keys.

Shared by both SSH transports (the system ``ssh``, :mod:`archive.backends.sftp_pipe`, and
paramiko, :mod:`archive.ssh_login`). A target follows what the user already set up for
``ssh``: ``~/.ssh/config`` (HostName, User, Port, IdentityFile, ProxyCommand,
UserKnownHostsFile) and host keys from the system and user known_hosts files. An unknown or
changed host key is refused, never added silently, with a one-line error that shows the
fingerprint and how to trust the host. Host and user names that OpenSSH would refuse (they
reach ``ProxyCommand`` lines run by a shell) are refused before any connection; how long
connecting may take is :mod:`archive.timeouts`'. Passwords are :mod:`archive.passwords`'.
"""

from __future__ import annotations

import getpass
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import HostKeyError, InvalidInputError
from .timeouts import DEFAULT_CONNECT_TIMEOUT, connect_timeout

if TYPE_CHECKING:  # paramiko is imported where it is used: the ssh transport never needs it
    import paramiko

logger = logging.getLogger(__name__)
SSH_PORT = 22
DEFAULT_KEY_NAMES = ("id_ed25519", "id_ecdsa", "id_rsa")
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
_HOST_FORBIDDEN = "'`\"$\\;&<>|(){}"  # as OpenSSH's valid_hostname()
_USER_FORBIDDEN = "'`\";&<>|(){}"  # as OpenSSH's valid_ruser()


@dataclass(frozen=True)
class SSHTarget:
    """Where and as whom to log in, after ``~/.ssh/config`` was applied."""

    alias: str
    hostname: str
    port: int
    username: str
    identity_files: tuple[str, ...] = ()
    proxy_command: str | None = None
    known_hosts_files: tuple[str, ...] = ()
    proxy_jump: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    @property
    def host_key_name(self) -> str:
        """The name known_hosts files use: ``host``, or ``[host]:port`` off port 22."""
        return self.hostname if self.port == SSH_PORT else f"[{self.hostname}]:{self.port}"

    @property
    def account(self) -> str:
        """``user@host``: the keyring account and the name used in messages."""
        return f"{self.username}@{self.hostname}"


def ssh_dir() -> Path:
    """The user's ``~/.ssh`` folder (follows ``$HOME``, so tests can point it elsewhere)."""
    return Path.home() / ".ssh"


def check_names(host: str, username: str | None = None) -> None:
    """Refuse a host or user name that OpenSSH refuses on its command line.

    Both are put into ``ProxyCommand`` (``%h``, ``%r``) and ``Match exec`` lines of
    ``~/.ssh/config``, which run through a shell: ``sftp://$(cmd)x/...`` would run ``cmd``. The
    rules are OpenSSH's (``valid_hostname`` and ``valid_ruser`` in ssh.c): no leading ``-``, no
    shell metacharacters, and for a host no blank or control characters.

    Raises
    ------
    InvalidInputError
        One line naming the offending name.
    """
    if not host or host.startswith("-") or any(c in _HOST_FORBIDDEN or c.isspace() or not c.isprintable()
                                                for c in host):
        raise InvalidInputError(f"invalid host name {host!r}: no leading '-', blanks, control characters or any"
                                f" of {_HOST_FORBIDDEN}")
    if username is None:
        return
    if (not username or username.startswith("-") or username.endswith("\\") or re.search(r"\s-", username)
            or any(c in _USER_FORBIDDEN or not c.isprintable() for c in username)):
        raise InvalidInputError(f"invalid user name {username!r}: no leading '-', control characters or any"
                                f" of {_USER_FORBIDDEN}")


def resolve_target(host: str, username: str | None = None, port: int | None = None) -> SSHTarget:
    """Apply ``~/.ssh/config`` to ``host``; explicit ``username`` and ``port`` win over it.

    Parameters
    ----------
    host
        The host as the user wrote it: a name, an address, or a ``Host`` alias of the config.
    username, port
        From the URL, if it named them.

    Raises
    ------
    InvalidInputError
        A host or user name that could run commands through the config (:func:`check_names`).
    """
    check_names(host, username)
    entry = _config_entry(host)
    proxy = entry.get("proxycommand")
    jump = entry.get("proxyjump")
    known = entry.get("userknownhostsfile")
    known_files = tuple(known.split()) if known else (str(ssh_dir() / "known_hosts"), str(ssh_dir() / "known_hosts2"))
    return SSHTarget(
        alias=host,
        hostname=entry.get("hostname", host),
        port=port or int(entry.get("port", SSH_PORT)),
        username=username or entry.get("user") or getpass.getuser(),
        identity_files=tuple(entry.get("identityfile", ())),
        proxy_command=None if not proxy or proxy.lower() == "none" else proxy,
        known_hosts_files=tuple(str(Path(f).expanduser()) for f in known_files),
        proxy_jump=None if not jump or jump.lower() == "none" else jump,
        connect_timeout=connect_timeout(entry.get("connecttimeout")),
    )


def _config_entry(host: str) -> dict:
    """What ``~/.ssh/config`` says of ``host`` (paramiko's parser, imported only when there is a
    config file: without one, the ssh transport needs no paramiko at all, about 90 ms less to start)."""
    path = ssh_dir() / "config"
    if not path.is_file():
        return {"hostname": host}
    import paramiko

    return paramiko.SSHConfig.from_path(str(path)).lookup(host)


def load_known_hosts(target: SSHTarget) -> paramiko.HostKeys:
    """The system known_hosts file and the user's, merged (missing files are skipped)."""
    import paramiko

    keys = paramiko.HostKeys()
    for path in (SYSTEM_KNOWN_HOSTS, *target.known_hosts_files):
        if Path(path).is_file():
            try:
                keys.load(path)
            except (OSError, paramiko.SSHException) as exc:
                logger.warning("cannot read known hosts file %s: %s", path, exc)
    return keys


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:<base64>``, as ``ssh-keygen -l`` and ssh's own prompts show it."""
    return key.fingerprint


def check_host_key(target: SSHTarget, known: paramiko.HostKeys, key: paramiko.PKey) -> None:
    """Refuse a host key that known_hosts does not list for this host.

    Raises
    ------
    HostKeyError
        The key is unknown or differs from the known one; the message shows the fingerprint
        and the command that trusts the host.
    """
    entry = known.lookup(target.host_key_name) or {}
    stored = entry.get(key.get_name())
    if stored is not None and stored == key:
        return
    port = "" if target.port == SSH_PORT else f"-p {target.port} "
    trust = f"ssh-keyscan {port}{target.hostname} >> ~/.ssh/known_hosts"
    shown = f"{key.get_name()} {fingerprint(key)}"
    if entry:
        raise HostKeyError(
            f"host key of {target.host_key_name} has CHANGED (now {shown}); this may be an attack:"
            f" if the change is expected, run ssh-keygen -R '{target.host_key_name}' then {trust}")
    raise HostKeyError(
        f"host key of {target.host_key_name} is not known ({shown}); if that is the right key,"
        f" trust it with: {trust} (or connect once with ssh)")
