"""Credentials: ssh config, known hosts, keyring and prompt, against real files and a real sshd."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from archive.credentials import SSHTarget, check_host_key, load_known_hosts, resolve_target
from archive.passwords import prompt_password, store_password, stored_password
from archive.ssh_login import SSHConnector
from archive.errors import AuthenticationError
from tests.sshd import (LocalUser, SSHServer, keyring_file, password_user, ssh_home, ssh_key_home,  # noqa: F401
                        sshd)

REPO = Path(__file__).resolve().parents[1]


def test_ssh_config_is_applied(ssh_home: Path) -> None:
    (ssh_home / ".ssh" / "config").write_text(
        "Host lab\n  HostName 10.1.2.3\n  User alice\n  Port 2200\n  IdentityFile ~/.ssh/lab_key\n"
        "  ProxyCommand ssh -W %h:%p gateway\n  UserKnownHostsFile ~/.ssh/lab_hosts\n")
    target = resolve_target("lab")
    assert (target.hostname, target.username, target.port) == ("10.1.2.3", "alice", 2200)
    assert target.identity_files == (str(ssh_home / ".ssh" / "lab_key"),)
    assert target.proxy_command == "ssh -W 10.1.2.3:2200 gateway"
    assert target.known_hosts_files == (str(ssh_home / ".ssh" / "lab_hosts"),)
    assert resolve_target("lab", "bob", 22).account == "bob@10.1.2.3"


def test_without_config_the_url_is_taken_as_is(ssh_home: Path) -> None:
    target = resolve_target("server.example", "carol")
    assert (target.hostname, target.port, target.proxy_command) == ("server.example", 22, None)
    assert target.host_key_name == "server.example"


def test_known_host_passes_and_hashed_entries_work(sshd: SSHServer, ssh_home: Path) -> None:
    subprocess.run(["ssh-keygen", "-H", "-f", str(ssh_home / ".ssh" / "known_hosts")], check=True,
                   capture_output=True)
    assert "|1|" in (ssh_home / ".ssh" / "known_hosts").read_text()  # hashed, as Debian's ssh writes it
    target = resolve_target(sshd.host, port=sshd.port)
    key = paramiko.PKey.from_path(sshd.folder / "host_key")
    check_host_key(target, load_known_hosts(target), key)


def test_unknown_host_key_message(ssh_home: Path, tmp_path: Path) -> None:
    from tests.sshd import keygen

    key = paramiko.PKey.from_path(keygen(tmp_path / "k"))
    target = SSHTarget("h", "h.example", 22, "u")
    with pytest.raises(AuthenticationError) as info:
        check_host_key(target, paramiko.HostKeys(), key)
    assert str(info.value) == (
        f"host key of h.example is not known (ssh-ed25519 {key.fingerprint}); if that is the right key,"
        " trust it with: ssh-keyscan h.example >> ~/.ssh/known_hosts (or connect once with ssh)")


def test_keyring_round_trip(keyring_file: Path) -> None:
    assert stored_password("archive-test", "u@h") is None
    store_password("archive-test", "u@h", "pw-123")
    assert stored_password("archive-test", "u@h") == "pw-123"
    assert _file_keyring(keyring_file).get_password("archive-test", "u@h") == "pw-123"  # it is on disk


def test_no_prompt_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        assert prompt_password("password: ") is None


def test_proxy_command_is_used(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path) -> None:
    relay = tmp_path / "relay.py"
    relay.write_text(_RELAY)
    (ssh_key_home / ".ssh" / "config").write_text(
        f"Host via-proxy\n  HostName {sshd.host}\n  Port {sshd.port}\n"
        f"  ProxyCommand {sys.executable} {relay} %h %p {tmp_path / 'relay.log'}\n")
    transport = SSHConnector(resolve_target("via-proxy")).connect()
    try:
        assert transport.is_authenticated()
    finally:
        transport.close()
    assert "relayed" in (tmp_path / "relay.log").read_text()


def test_prompted_password_is_stored_after_it_worked(sshd: SSHServer, ssh_home: Path,
                                                     password_user: LocalUser, tmp_path: Path) -> None:
    """A real terminal: the password typed at the prompt logs in and lands in the keyring."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_DATA_HOME": str(tmp_path / "xdg"),
           "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring"}
    code = (f"import archive; archive.get_interface({sshd.url('/~/store', user=password_user.name)!r}, "
            "create=True).close(); print('LOGGED-IN')")
    output = _run_on_terminal([sys.executable, "-c", code], env, answer=password_user.password)
    assert f"password for {password_user.name}@{sshd.host}: " in output and "LOGGED-IN" in output
    assert password_user.password not in output  # getpass does not echo
    stored = _file_keyring(tmp_path / "xdg" / "python_keyring" / "keyring_pass.cfg")
    assert stored.get_password("archive-sftp", f"{password_user.name}@{sshd.host}") == password_user.password
    assert (password_user.home / "store" / "archive.json").is_file()


def _file_keyring(path: Path):
    """A second, independent reader of a keyrings.alt file: proves what reached the disk."""
    from keyrings.alt.file import PlaintextKeyring

    reader = PlaintextKeyring()
    reader.file_path = str(path)
    return reader


def _run_on_terminal(argv: list[str], env: dict[str, str], answer: str, timeout: float = 30) -> str:
    """Run ``argv`` with a pseudo-terminal as stdin/stdout; type ``answer`` at the prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes the program
        os.execvpe(argv[0], argv, env)
    output, answered, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                output += data
            if not answered and b"password for" in output:
                os.write(fd, answer.encode() + b"\n")
                answered = True
    finally:
        os.close(fd)
        os.waitpid(pid, 0)
    return output.decode(errors="replace")


_RELAY = '''
import socket, sys, threading
host, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.create_connection((host, port))
open(log, "w").write("relayed\\n")
def pump():
    while data := sock.recv(65536):
        sys.stdout.buffer.write(data); sys.stdout.buffer.flush()
threading.Thread(target=pump, daemon=True).start()
while data := sys.stdin.buffer.read1(65536):
    sock.sendall(data)
'''


# ------------------------------------------------------------------ names that would run commands
def _run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=60)


@pytest.mark.parametrize("transport", ["ssh", "paramiko"])
@pytest.mark.parametrize("url", ["sftp://$(touch marker)x/srv", "sftp://a`touch marker`b/srv",
                                 "sftp://h;touch marker/srv", "sftp://%24(touch%20marker)@localhost/srv",
                                 "sftp://-oProxyCommand=touch marker/srv"])
def test_names_that_would_run_a_command_are_refused(ssh_home: Path, tmp_path: Path, transport: str,
                                                    url: str) -> None:
    """A ProxyCommand that runs through a shell gets the host (%h) and user (%r) as typed: the
    names are refused in one line before any connection, on both transports."""
    (ssh_home / ".ssh" / "config").write_text("Host *\n  ProxyCommand sh -c 'echo %r %h >/dev/null; exit 1'\n")
    result = _run_cli("-a", url, "ls", cwd=tmp_path, env={"ARCHIVE_SFTP_TRANSPORT": transport})
    assert not (tmp_path / "marker").exists()
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("archive: error: invalid "), result.stderr


@pytest.mark.parametrize("host, user", [("-x", None), ("a b", None), ("a\tb", None), ("a\x1bb", None),
                                        ("h", "-l"), ("h", "a -b"), ("h", "a\\"), ("h", "a|b")])
def test_check_names_follows_openssh(host: str, user: str | None) -> None:
    from archive.credentials import check_names
    from archive.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        check_names(host, user)


@pytest.mark.parametrize("host, user", [("lab", None), ("10.1.2.3", "alice"), ("::1", "a.b-c_d"),
                                        ("xn--bcher-kva.example", "DOMAIN\\user"), ("h", "first last")])
def test_check_names_accepts_ordinary_names(host: str, user: str | None) -> None:
    from archive.credentials import check_names

    check_names(host, user)


def test_no_password_in_verbose_output_or_tracebacks(sshd: SSHServer, ssh_home: Path, password_user: LocalUser,
                                                     tmp_path: Path) -> None:
    """At -vv (debug logs, tracebacks), logging in with a password from the URL, a wrong one and a
    refused location never print it; '/', '?' and '#' in it work percent-encoded."""
    from urllib.parse import quote

    secret = password_user.password
    good = sshd.url("/~/store", user=password_user.name, password=quote(secret, safe=""))
    wrong = "wr/ong" + secret[::-1]
    locations = [good, good, sshd.url("/~/store", user=password_user.name, password=quote(wrong, safe="")),
                 sshd.url("/~/store", user=password_user.name, password=wrong),  # '/' unencoded: refused
                 good.replace(f":{sshd.port}", ":99x")]
    env = {"ARCHIVE_SFTP_TRANSPORT": "paramiko"}
    runs = [_run_cli("-vv", "init", locations[0], cwd=tmp_path, env=env)]
    runs += [_run_cli("-vv", "-a", location, "ls", cwd=tmp_path, env=env) for location in locations[1:]]
    assert [r.returncode for r in runs] == [0, 0, 1, 1, 1], runs
    assert "authentication failed" in runs[2].stderr and "percent-encode" in runs[3].stderr
    for result in runs:
        output = result.stdout + result.stderr
        assert secret not in output and secret[::-1] not in output and quote(secret, safe="") not in output
    assert "Traceback" in runs[2].stderr  # -v shows it: the chain was printed, without the password
