"""Credentials: OpenSSH config, known hosts, keys and agent, and passwords in the system keyring.

Shared by the backends that log in somewhere. SSH connections follow what the user already set
up for ``ssh``: ``~/.ssh/config`` (HostName, User, Port, IdentityFile, ProxyCommand,
UserKnownHostsFile), the ssh-agent, the default key files, and host keys from the system and
user known_hosts files. An unknown or changed host key is refused, never added silently, with a
one-line error that shows the fingerprint and how to trust the host. Host and user names that
OpenSSH would refuse (they reach ``ProxyCommand`` lines run by a shell) are refused before any
connection; how long connecting may take is :mod:`archive.timeouts`'.

Passwords come from, in order: the caller (a URL), the system keyring (service and account
given by the backend, e.g. ``archive-sftp`` / ``user@host``), and a prompt, but only when stdin
is a terminal. A prompted password is stored back in the keyring once it has worked. Passwords
are never logged and never part of a message.
"""

from __future__ import annotations

import getpass
import logging
import re
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .errors import AuthenticationError, BackendUnavailableError, HostKeyError, InvalidInputError
from .timeouts import DEFAULT_CONNECT_TIMEOUT, connect_timeout

if TYPE_CHECKING:  # paramiko is imported where it is used: the ssh transport never needs it
    import paramiko

logger = logging.getLogger(__name__)
# paramiko logs a failed handshake with a traceback from its own thread; we raise a one-line error
# for it. With no handler, logging's last resort printed that traceback on stderr. Anything set up
# by the application (root handlers) still gets paramiko's records.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
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


# ------------------------------------------------------------------ keyring and prompt
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


# ------------------------------------------------------------------ SSH connections
class SSHConnector:
    """Opens authenticated SSH transports to one target, remembering the password that worked.

    Keys are tried first (agent, IdentityFile, default key files), then passwords: the one
    given here, the keyring's, and a prompt on a terminal. Each new connection of a pool reuses
    what worked, so a user is asked at most once.
    """

    def __init__(self, target: SSHTarget, password: str | None = None, *, keyring_service: str = "archive-ssh",
                 window_size: int | None = None) -> None:
        self.target = target
        self.keyring_service = keyring_service
        self.window_size = window_size
        self._password = password
        self._password_works = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SSHConnector({self.target.account}:{self.target.port})"

    def connect(self) -> paramiko.Transport:
        """A new transport, host key checked and authenticated.

        Raises
        ------
        BackendUnavailableError
            The host cannot be reached or the SSH handshake broke off.
        AuthenticationError
            Unknown host key, or no key or password was accepted.
        """
        transport = open_transport(self.target, self.window_size)
        try:
            self._authenticate(transport)
        except BaseException:
            transport.close()
            raise
        return transport

    def _authenticate(self, transport: paramiko.Transport) -> None:
        if not self._password_works and self._try_keys(transport):
            return
        with self._lock:  # one prompt at a time, and later connections reuse its answer
            for password, source in self._passwords():
                if self._try_auth(transport, lambda p=password: transport.auth_password(self.target.username, p)):
                    self._remember(password, source)
                    return
        raise AuthenticationError(f"{self.target.account}: authentication failed (no key or password was accepted)")

    def _try_keys(self, transport: paramiko.Transport) -> bool:
        """Try agent and key-file keys; the agent stays open while a key of its signs."""
        import paramiko

        agent = paramiko.Agent()
        try:
            for key in _private_keys(self.target, agent):
                if self._try_auth(transport, lambda k=key: transport.auth_publickey(self.target.username, k)):
                    logger.debug("%s: logged in with key %s", self.target.account, fingerprint(key))
                    return True
        finally:
            agent.close()
        return False

    def _try_auth(self, transport: paramiko.Transport, attempt) -> bool:
        """Run one auth attempt; False if refused. A dropped connection is raised as unavailable."""
        import paramiko

        try:
            attempt()
        except paramiko.BadAuthenticationType as exc:
            logger.debug("server refuses this method; it allows %s", exc.allowed_types)
            return False
        except paramiko.AuthenticationException as exc:
            if not transport.is_active():  # paramiko reports a connection lost mid-login as refused
                raise BackendUnavailableError(f"cannot reach {self.target.hostname}: connection lost while logging"
                                              " in") from exc
            return False
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise BackendUnavailableError(f"cannot reach {self.target.hostname}: {_reason(exc)}") from exc
        return transport.is_authenticated()

    def _passwords(self) -> Iterator[tuple[str, str]]:
        """Candidate passwords and where each came from; read lazily so no prompt is wasted."""
        if self._password:
            yield self._password, "given"
        account = self.target.account
        saved = stored_password(self.keyring_service, account)
        if saved and saved != self._password:
            yield saved, "keyring"
        typed = prompt_password(f"password for {account}: ")
        if typed:
            yield typed, "prompt"

    def _remember(self, password: str, source: str) -> None:
        self._password, self._password_works = password, True
        logger.debug("%s: logged in with a password (%s)", self.target.account, source)
        if source == "prompt":
            store_password(self.keyring_service, self.target.account, password)


def open_transport(target: SSHTarget, window_size: int | None = None) -> paramiko.Transport:
    """A paramiko transport to ``target`` whose host key known_hosts lists; not yet logged in.

    Raises
    ------
    BackendUnavailableError
        The host cannot be reached or the SSH handshake broke off.
    HostKeyError
        The host key is unknown or changed.
    """
    import paramiko

    known = load_known_hosts(target)
    sock = _open_socket(target)
    kwargs = {"default_window_size": window_size} if window_size else {}
    transport = paramiko.Transport(sock, **kwargs)
    timeout = target.connect_timeout
    transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = timeout
    try:
        _prefer_known_key_types(transport, known.lookup(target.host_key_name))
        transport.start_client(timeout=timeout)
        check_host_key(target, known, transport.get_remote_server_key())
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        raise BackendUnavailableError(f"cannot reach {target.hostname}: {_reason(exc)}") from exc
    except BaseException:
        transport.close()
        raise
    return transport


def probe_host_key(target: SSHTarget) -> None:
    """Raise the :class:`HostKeyError` (with fingerprint) that ``target``'s host key deserves.

    Used after OpenSSH refused a host key, to tell the user which key it was: OpenSSH's own
    message for an unknown key does not show it. Returns quietly when the key is known after
    all; a host that cannot be reached directly raises :class:`BackendUnavailableError`.
    """
    open_transport(target).close()


def _open_socket(target: SSHTarget) -> socket.socket | paramiko.ProxyCommand:
    import paramiko

    if target.proxy_command:
        logger.debug("connecting to %s through ProxyCommand", target.alias)
        return paramiko.ProxyCommand(target.proxy_command)
    try:
        sock = socket.create_connection((target.hostname, target.port), timeout=target.connect_timeout)
    except OSError as exc:
        raise BackendUnavailableError(f"cannot reach {target.hostname}:{target.port}: {_reason(exc)}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    return sock


def _private_keys(target: SSHTarget, agent: paramiko.Agent) -> Iterator[paramiko.PKey]:
    """Agent keys, then IdentityFile keys, then the default key files, without duplicates."""
    import paramiko

    seen: set[str] = set()
    try:
        candidates = list(agent.get_keys())
    except paramiko.SSHException as exc:
        logger.debug("ssh-agent not usable: %s", exc)
        candidates = []
    paths = [*target.identity_files, *(str(ssh_dir() / n) for n in DEFAULT_KEY_NAMES)]
    for path in dict.fromkeys(paths):
        key = _load_key(path)
        if key is not None:
            candidates.append(key)
    for key in candidates:
        if key.fingerprint not in seen:
            seen.add(key.fingerprint)
            yield key


def _load_key(path: str) -> paramiko.PKey | None:
    """A private key file, or None if it is missing, unreadable or needs a passphrase."""
    import paramiko

    if not Path(path).expanduser().is_file():
        return None
    try:
        return paramiko.PKey.from_path(Path(path).expanduser())
    except paramiko.PasswordRequiredException:
        logger.debug("key %s needs a passphrase; add it to ssh-agent to use it", path)
    except (paramiko.SSHException, OSError, ValueError) as exc:
        logger.debug("cannot load key %s: %s", path, exc)
    return None


def _prefer_known_key_types(transport: paramiko.Transport, known: paramiko.hostkeys.HostKeyEntry | None) -> None:
    """Ask the server for a host key type that known_hosts has, as ssh does."""
    if not known:
        return
    options = transport.get_security_options()
    wanted = [t for t in known.keys() if t in options.key_types]
    if "ssh-rsa" in known.keys():
        wanted = [t for t in ("rsa-sha2-512", "rsa-sha2-256") if t in options.key_types] + wanted
    options.key_types = wanted + [t for t in options.key_types if t not in wanted]


def _reason(exc: BaseException) -> str:
    """A short, one-line reason for a network failure."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())
