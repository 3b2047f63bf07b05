"""One SSH connection per archive (ssh's connection sharing): one login, no ssh left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

import archive
from archive.backends.sftp_conn import TRANSPORT_ENV
from archive.backends.sftp_mux import SHARE_ENV
from tests.conftest import make_tree
from tests.sshd import SSHServer

MIB = 1024 * 1024


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary folder of this test only, short enough to hold a control socket: every ssh
    started for the test names it in its ``ControlPath``, so the test can find them all."""
    folder = Path(tempfile.mkdtemp(prefix="mux-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read $TMPDIR again
    monkeypatch.setenv(TRANSPORT_ENV, "ssh")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def logins(sshd: SSHServer, since: int) -> int:
    """Logins the server accepted after ``since`` characters of its log."""
    return sshd.log()[since:].count("Accepted publickey")


def ssh_processes(folder: Path) -> list[int]:
    """Pids of the live ssh processes whose command line names ``folder``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                args = cmdline.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as stat:
                state = stat.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and os.path.basename(args[0]) == b"ssh" and any(str(folder).encode() in a for a in args):
            found.append(int(entry))
    return found


def test_the_sessions_of_an_archive_share_one_login(sshd: SSHServer, ssh_key_home: Path, short_tmp: Path,
                                                    tmp_path: Path) -> None:
    """A publish whose threads stream files on four sessions logs in once, and closing the
    archive ends every ssh it started and removes the control socket's folder."""
    src = make_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(MIB + i) for i in range(8)})
    start = len(sshd.log())
    with archive.get_interface(sshd.url(tmp_path / "store"), create=True) as arc:
        arc.publish(src, "demo", "1.0.0", jobs=4, progress=False)
        assert len(ssh_processes(short_tmp)) >= 2  # the master and at least one session over it
    assert logins(sshd, start) == 1
    assert ssh_processes(short_tmp) == []
    assert list(short_tmp.iterdir()) == []
    with archive.get_interface(sshd.url(tmp_path / "store")) as arc:
        assert arc.verify("demo", full=True).ok


def test_sharing_can_be_turned_off(sshd: SSHServer, ssh_key_home: Path, short_tmp: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SHARE_ENV, "0")
    src = make_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(MIB + i) for i in range(8)})
    start = len(sshd.log())
    with archive.get_interface(sshd.url(tmp_path / "store"), create=True) as arc:
        arc.publish(src, "demo", "1.0.0", jobs=4, progress=False)
    assert logins(sshd, start) >= 2  # one per session
    assert list(short_tmp.iterdir()) == []


def test_a_killed_archive_leaves_no_ssh_behind(sshd: SSHServer, ssh_key_home: Path, short_tmp: Path,
                                               tmp_path: Path) -> None:
    """kill -9 of a push in flight: its sessions see their pipes end, the master its session,
    and all exit; nothing keeps a connection to the server open."""
    src = make_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(4 * MIB) for i in range(32)})
    location = sshd.url(tmp_path / "store")
    with archive.get_interface(location, create=True):
        pass
    push = subprocess.Popen([sys.executable, "-m", "archive", "-a", location, "push", str(src), "demo", "1.0.0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while len(ssh_processes(short_tmp)) < 2 and push.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert push.poll() is None, "the push ended before it could be killed mid-transfer"
        push.send_signal(signal.SIGKILL)
    finally:
        push.wait(timeout=30)
    deadline = time.monotonic() + 20
    while ssh_processes(short_tmp) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ssh_processes(short_tmp) == []
