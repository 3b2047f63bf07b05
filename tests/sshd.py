"""Real SSH parts for tests: an OpenSSH ``sshd`` on 127.0.0.1, an ``ssh-agent``, a file keyring.

The server runs ``sshd -D -e -f CONFIG`` from a temporary folder with its own host key and
authorized_keys, on a free port of 127.0.0.1, and only the process started here is stopped.
Clients never see the machine's real ``~/.ssh``: :func:`ssh_home` points ``$HOME`` at a
temporary folder holding a known_hosts file for the test server (and, when asked, a key).
Fixtures are imported by ``tests/backends/conftest.py`` and the test modules that need them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.needs import unavailable

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class SSHServer:
    """A running test sshd and what a client needs to reach it."""

    host: str
    port: int
    user: str
    folder: Path
    client_key: Path
    host_key_line: str  # the known_hosts line that trusts this server
    sftp_only_port: int = 0  # a second port of the same server where an account may run no command

    def known_hosts(self) -> str:
        """The known_hosts lines that trust this server on both its ports."""
        key = self.host_key_line.split(" ", 1)[1]
        return f"{self.host_key_line}\n[{self.host}]:{self.sftp_only_port} {key}\n"

    def url(self, path: Path | str, user: str | None = None, password: str | None = None,
            sftp_only: bool = False) -> str:
        login = user or self.user
        if password is not None:
            login += f":{password}"
        return f"sftp://{login}@{self.host}:{self.sftp_only_port if sftp_only else self.port}{path}"

    def log(self) -> str:
        """What sshd has written to its log so far (for assertions and failure messages)."""
        return (self.folder / "sshd.log").read_text(errors="replace")


@dataclass(frozen=True)
class LocalUser:
    """A throwaway account with a password, for password logins."""

    name: str
    password: str
    home: Path


def keygen(path: Path, comment: str = "archive-test") -> Path:
    """A new ed25519 key pair without passphrase at ``path`` (and ``path.pub``)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_config(folder: Path, port: int, sftp_only_port: int) -> Path:
    """sshd's configuration: everything allowed on ``port``; on ``sftp_only_port`` only SFTP
    (``ForceCommand internal-sftp``, as a host that hands out SFTP-only accounts has it)."""
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", f"Port {sftp_only_port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
        f"PidFile {folder / 'sshd.pid'}", f"AuthorizedKeysFile {folder / 'authorized_keys'} %h/.ssh/authorized_keys",
        "StrictModes no", "UsePAM no", "PermitRootLogin yes", "PasswordAuthentication yes",
        "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "MaxStartups 64:30:128",
        "MaxSessions 64", "Subsystem sftp internal-sftp", "LogLevel VERBOSE", "UseDNS no",
        f"Match LocalPort {sftp_only_port}", "    ForceCommand internal-sftp", "",
    ]))
    return config


def _wait_ready(proc: subprocess.Popen, port: int) -> bool:
    """True once sshd answers with its banner; False if it exited (say, the port was taken)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen) -> None:
    """Stop exactly the process started here."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def start_sshd(folder: Path) -> tuple[subprocess.Popen, SSHServer]:
    """Start sshd from ``folder`` (keys made there) on a free port; used by tests and bench."""
    keygen(folder / "host_key", "test-host")
    client_key = keygen(folder / "client_key")
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    for _ in range(5):
        port, sftp_only_port = free_port(), free_port()
        with open(folder / "sshd.log", "ab") as log:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(_write_config(folder, port, sftp_only_port))],
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        if port != sftp_only_port and _wait_ready(proc, port) and _wait_ready(proc, sftp_only_port):
            break
        stop_process(proc)
    else:
        raise RuntimeError(f"sshd did not start: {(folder / 'sshd.log').read_text()[-2000:]}")
    host_pub = (folder / "host_key.pub").read_text().split()
    return proc, SSHServer("127.0.0.1", port, _current_user(), folder, client_key,
                           f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}", sftp_only_port)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """An OpenSSH server on 127.0.0.1 that accepts the test key for the current user."""
    if not Path(SSHD).exists():
        unavailable("sshd is not installed (scripts/install-test-deps.sh installs openssh-server)")
    proc, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop_process(proc)


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture(scope="session")
def password_user(sshd: SSHServer) -> Iterator[LocalUser]:
    """A throwaway local account with a random password that also accepts the test key.

    Needs root (useradd); the account is deleted afterwards.
    """
    if os.geteuid() != 0 or not shutil.which("useradd"):
        unavailable("creating a throwaway user for password login needs root and useradd")
    name = f"arct{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    home = Path(tempfile.mkdtemp(prefix="archive-sftp-user-"))
    home.chmod(0o755)
    subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", name], check=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
        (home / ".ssh").mkdir()
        shutil.copy(sshd.folder / "authorized_keys", home / ".ssh" / "authorized_keys")
        for path in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
            shutil.chown(path, name, name)
        yield LocalUser(name, password, home)
    finally:
        subprocess.run(["userdel", name], check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def keyring_file(tmp_path: Path) -> Iterator[Path]:
    """A real file-backed keyring (keyrings.alt) in ``tmp_path``, installed as the keyring."""
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    previous = keyring.get_keyring()
    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring" / "keyring_pass.cfg")
    keyring.set_keyring(backend)
    try:
        yield Path(backend.file_path)
    finally:
        keyring.set_keyring(previous)


@pytest.fixture
def ssh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sshd: SSHServer, keyring_file: Path) -> Path:
    """A fresh ``$HOME`` whose ``.ssh/known_hosts`` trusts the test server (both its ports); no
    keys, no agent."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


@pytest.fixture
def ssh_key_home(ssh_home: Path, sshd: SSHServer) -> Path:
    """:func:`ssh_home` with the accepted key as the default key file ``~/.ssh/id_ed25519``."""
    shutil.copy(sshd.client_key, ssh_home / ".ssh" / "id_ed25519")
    (ssh_home / ".ssh" / "id_ed25519").chmod(0o600)
    return ssh_home


@pytest.fixture
def ssh_agent(monkeypatch: pytest.MonkeyPatch, sshd: SSHServer, ssh_home: Path) -> Iterator[str]:
    """A real ``ssh-agent`` holding the accepted key, with ``$SSH_AUTH_SOCK`` pointing at it."""
    folder = Path(tempfile.mkdtemp(prefix="agent-"))  # short: socket paths are limited to ~100 bytes
    sock = str(folder / "agent.sock")
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not Path(sock).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        subprocess.run(["ssh-add", "-q", str(sshd.client_key)], env={**os.environ, "SSH_AUTH_SOCK": sock},
                       check=True, stdin=subprocess.DEVNULL, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        yield sock
    finally:
        stop_process(proc)
        shutil.rmtree(folder, ignore_errors=True)
