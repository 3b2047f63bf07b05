"""SSH logins through paramiko: the transport for passwords, and for machines without ``ssh``.

An :class:`SSHConnector` opens authenticated transports to one :class:`~archive.credentials.SSHTarget`:
keys first (agent, ``IdentityFile``, the default key files), then passwords (:mod:`archive.passwords`);
the host key is checked against the known_hosts files before anything is sent
(:func:`archive.credentials.check_host_key`), and every step of connecting waits at most the
target's connect timeout. paramiko is imported here only when a login needs it: the system
``ssh`` transport (:mod:`archive.backends.sftp_pipe`) never loads it.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .credentials import DEFAULT_KEY_NAMES, SSHTarget, check_host_key, fingerprint, load_known_hosts, ssh_dir
from .errors import AuthenticationError, BackendUnavailableError
from .passwords import prompt_password, store_password, stored_password

if TYPE_CHECKING:
    import paramiko

logger = logging.getLogger(__name__)
# paramiko logs a failed handshake with a traceback from its own thread; we raise a one-line error
# for it. With no handler, logging's last resort printed that traceback on stderr. Anything set up
# by the application (root handlers) still gets paramiko's records.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


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
