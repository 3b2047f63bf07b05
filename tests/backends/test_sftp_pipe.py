"""The system ssh client as SFTP transport: how it is picked, started, told about $HOME, and stopped."""

from __future__ import annotations

import gc
import os
import pwd
import shutil
from pathlib import Path

import pytest

import archive
from archive.backends.sftp_conn import TRANSPORT_ENV
from archive.backends.sftp_pipe import SSHPipe, home_options, host_key_error, ssh_command, ssh_reason, startup_error
from archive.credentials import SSHTarget, resolve_target
from archive.errors import AuthenticationError, BackendUnavailableError, HostKeyError, InvalidInputError
from tests.needs import unavailable
from tests.sshd import SSHServer


def test_auto_picks_ssh_when_a_key_logs_in(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path) -> None:
    with archive.get_interface(sshd.url(tmp_path / "store"), create=True) as arc:
        assert arc.transport == "ssh"
        pipes = _live_pipes()
        assert pipes
    assert not any(pipe.is_active() for pipe in pipes)  # close() ended the ssh children


def test_without_an_ssh_binary_paramiko_serves(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with archive.get_interface(sshd.url(tmp_path / "store"), create=True) as arc:
        assert arc.transport == "paramiko"
    monkeypatch.setenv(TRANSPORT_ENV, "ssh")
    with pytest.raises(InvalidInputError, match="no ssh client"):
        archive.get_interface(sshd.url(tmp_path / "store"))


def test_a_password_in_the_url_goes_to_paramiko(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path) -> None:
    with archive.get_interface(sshd.url(tmp_path / "store", password="unused"), create=True) as arc:
        assert arc.transport == "paramiko"  # the key still logs in first; the password is never given to ssh


def test_forced_ssh_without_a_key_is_refused_in_one_line(sshd: SSHServer, ssh_home: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRANSPORT_ENV, "ssh")
    with pytest.raises(AuthenticationError) as info:
        archive.get_interface(sshd.url(tmp_path / "store"), create=True)
    assert str(info.value) == f"{sshd.user}@{sshd.host}: authentication failed (no key or password was accepted)"
    assert not (tmp_path / "store").exists()


def test_bad_transport_setting(monkeypatch: pytest.MonkeyPatch, ssh_home: Path, sshd: SSHServer) -> None:
    monkeypatch.setenv(TRANSPORT_ENV, "telnet")
    with pytest.raises(InvalidInputError, match=TRANSPORT_ENV):
        archive.get_interface(sshd.url("/srv/x"))


def test_proxy_jump_from_ssh_config(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path) -> None:
    """A feature only ssh has: the login goes through a jump host (here the same sshd, twice)."""
    files = (f"  IdentityFile {ssh_key_home / '.ssh' / 'id_ed25519'}\n"
             f"  UserKnownHostsFile {ssh_key_home / '.ssh' / 'known_hosts'}\n")
    (ssh_key_home / ".ssh" / "config").write_text(
        f"Host jump\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n{files}"
        f"Host behind\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n  ProxyJump jump\n{files}")
    accepted = sshd.log().count("Accepted publickey")
    with archive.get_interface(f"sftp://behind{tmp_path / 'store'}", create=True) as arc:
        assert arc.transport == "ssh"
    assert sshd.log().count("Accepted publickey") == accepted + 2  # the jump host, then the target through it
    assert (tmp_path / "store" / "archive.json").is_file()


# ------------------------------------------------------------------ the command line given to ssh
def test_home_options_point_ssh_at_home(ssh_home: Path) -> None:
    target = resolve_target("lab")
    options = home_options(target)
    assert options[:2] == ["-F", os.devnull]  # no config in $HOME: the account's own must not apply
    assert f"UserKnownHostsFile={ssh_home / '.ssh' / 'known_hosts'} {ssh_home / '.ssh' / 'known_hosts2'}" in options
    assert f"IdentityFile={ssh_home / '.ssh' / 'id_ed25519'}" in options
    (ssh_home / ".ssh" / "config").write_text("Host lab\n  UserKnownHostsFile ~/.ssh/lab_hosts\n")
    options = home_options(resolve_target("lab"))
    assert options[:2] == ["-F", str(ssh_home / ".ssh" / "config")]
    assert f"UserKnownHostsFile={ssh_home / '.ssh' / 'lab_hosts'}" in options


def test_the_account_home_leaves_ssh_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", pwd.getpwuid(os.getuid()).pw_dir)
    assert home_options(SSHTarget("h", "h", 22, "u")) == []


def test_host_comes_after_double_dash(ssh_home: Path) -> None:
    argv = ssh_command("ssh", resolve_target("lab"), "lab", "ann", 2222)
    assert argv[-4:] == ["-s", "--", "lab", "sftp"]
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "ann"
    assert "BatchMode=yes" in argv and "StrictHostKeyChecking=yes" in argv


# ------------------------------------------------------------------ ssh's words, as one line
@pytest.mark.parametrize("stderr, reason", [
    ("ssh: connect to host 127.0.0.1 port 9: Connection refused\r\n", "Connection refused"),
    ("kex_exchange_identification: read: Connection reset by peer\n", "Connection reset by peer"),
    ("client_loop: ssh_packet_write_poll: Connection to 10.0.0.1 port 22: Broken pipe\n",
     "Connection to 10.0.0.1 port 22: Broken pipe"),
    ("Warning: something\nConnection closed by 10.0.0.1 port 22\n", "Connection closed by 10.0.0.1 port 22"),
    ("", ""),
])
def test_ssh_reason(stderr: str, reason: str) -> None:
    assert ssh_reason(stderr) == reason


def test_startup_errors_are_classified() -> None:
    target = SSHTarget("lab", "10.0.0.1", 2222, "ann", proxy_jump="gateway")
    assert isinstance(startup_error("ann@10.0.0.1: Permission denied (publickey).\n", target), AuthenticationError)
    unreachable = startup_error("ssh: Could not resolve hostname lab: Name or service not known\n", target)
    assert isinstance(unreachable, BackendUnavailableError)
    assert str(unreachable) == "cannot reach 10.0.0.1:2222: Could not resolve hostname lab: Name or service not known"
    no_sftp = startup_error("subsystem request failed on channel 0\n", target)
    assert str(no_sftp) == "cannot reach 10.0.0.1: the server offers no SFTP service"


def test_host_key_refused_behind_a_jump_host_says_how_to_trust_it() -> None:
    target = SSHTarget("lab", "10.0.0.1", 2222, "ann", proxy_jump="gateway")
    error = host_key_error("No ED25519 host key is known for [10.0.0.1]:2222\nHost key verification failed.\n",
                           target)
    assert isinstance(error, HostKeyError)
    assert str(error) == ("host key of [10.0.0.1]:2222 is not trusted: check it and trust it by connecting once"
                          " with: ssh -p 2222 lab")


def _live_pipes() -> list[SSHPipe]:
    return [obj for obj in gc.get_objects() if isinstance(obj, SSHPipe) and obj.is_active()]


@pytest.fixture(autouse=True)
def _needs_ssh() -> None:
    if shutil.which("ssh") is None:
        unavailable("no ssh client (scripts/install-test-deps.sh installs openssh-client)")


# ------------------------------------------------------------------ our own SFTP framing
def test_text_before_sftp_is_refused_in_one_line(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A login script that prints text ahead of the SFTP stream (a classic on real servers):
    its first four bytes read as a packet length of about 1.4 GB, which is refused, not allocated."""
    wrapper = tmp_path / "bin" / "ssh"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\nprintf 'Welcome to lab!\\n'\nexec {shutil.which('ssh')} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(TRANSPORT_ENV, "ssh")
    with pytest.raises(BackendUnavailableError) as info:
        archive.get_interface(sshd.url(tmp_path / "store"), create=True)
    assert "not SFTP" in str(info.value) and "\n" not in str(info.value)
    assert not _live_pipes()  # the ssh child was ended
    assert not (tmp_path / "store").exists()
