"""The cipher order the system ssh is given: AES-GCM first where it is faster, the set never changed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import archive
from archive.backends import sftp_ciphers
from archive.backends.sftp_ciphers import AES_FIRST_ENV, AES_GCM, cipher_options, reordered
from archive.errors import InvalidInputError
from tests.sshd import SSHServer
from tests.test_place_workers import children_of

SSH = shutil.which("ssh") or "ssh"


def _default_ciphers() -> list[str]:
    out = subprocess.run([SSH, "-G", "-F", os.devnull, "--", "lab.example"], capture_output=True, text=True,
                         check=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("ciphers ")).split(",")


@pytest.fixture
def with_aes(monkeypatch: pytest.MonkeyPatch) -> None:
    """This processor taken to have AES instructions, whatever the CI machine's has."""
    monkeypatch.setattr(sftp_ciphers, "has_aes_instructions", lambda: True)


def test_aes_gcm_goes_first_and_the_set_stays_ssh_s(tmp_path: Path, with_aes: None) -> None:
    config = tmp_path / "config"
    config.write_text("Host lab.example\n    Port 2222\n")
    options = cipher_options(SSH, ["-F", str(config)], "lab.example")
    default = _default_ciphers()
    assert options[0] == "-o" and options[1].startswith("Ciphers=")
    offered = options[1].removeprefix("Ciphers=").split(",")
    assert sorted(offered) == sorted(default)
    gcm = [name for name in default if name in AES_GCM]
    assert gcm and offered[:len(gcm)] == gcm
    assert [name for name in offered if name not in AES_GCM] == [name for name in default if name not in AES_GCM]


def test_a_configured_cipher_list_is_left_as_it_is(tmp_path: Path, with_aes: None) -> None:
    config = tmp_path / "config"
    config.write_text("Host *\n    Ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com\n")
    assert cipher_options(SSH, ["-F", str(config)], "lab.example") == []


def test_no_reordering_without_aes_instructions_or_when_asked_not_to(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sftp_ciphers, "has_aes_instructions", lambda: False)
    assert cipher_options(SSH, ["-F", os.devnull], "lab.example") == []
    monkeypatch.setattr(sftp_ciphers, "has_aes_instructions", lambda: True)
    monkeypatch.setenv(AES_FIRST_ENV, "0")
    assert cipher_options(SSH, ["-F", os.devnull], "lab.example") == []
    monkeypatch.setenv(AES_FIRST_ENV, "yes")
    with pytest.raises(InvalidInputError, match=f"\\${AES_FIRST_ENV} must be 0 or 1"):
        cipher_options(SSH, ["-F", os.devnull], "lab.example")


def test_an_ssh_that_cannot_say_leaves_the_order(tmp_path: Path, with_aes: None) -> None:
    broken = tmp_path / "ssh"
    broken.write_text("#!/bin/sh\nexit 255\n")
    broken.chmod(0o755)
    assert cipher_options(str(broken), [], "lab.example") == []


def test_reordered_keeps_every_name_once() -> None:
    names = ["chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com"]
    assert reordered(names) == ["aes256-gcm@openssh.com", "aes128-gcm@openssh.com",
                                "chacha20-poly1305@openssh.com", "aes128-ctr"]
    assert reordered(["aes128-ctr"]) == ["aes128-ctr"]


def test_the_processor_flags_are_read() -> None:
    flags = [line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.split(":", 1)[0].strip() in ("flags", "Features")]
    assert sftp_ciphers.has_aes_instructions() == ("aes" in flags[0] if flags else False)


def test_the_shared_connection_offers_aes_gcm_first(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path,
                                                    with_aes: None) -> None:
    """The master ssh (the one that negotiates for every session) is started with the order."""
    with archive.get_interface(sshd.url(tmp_path / "store"), create=True) as arc:
        arc.list_keys("")
        offered = [arg for argv in _ssh_children() for arg in argv if arg.startswith("Ciphers=")]
    assert offered and all(arg.removeprefix("Ciphers=").split(",")[0] in AES_GCM for arg in offered)


def _ssh_children() -> list[list[str]]:
    """The argv of every ssh process this process started and that still runs."""
    found = []
    for pid in children_of(os.getpid()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == "ssh":
            found.append(argv)
    return found
