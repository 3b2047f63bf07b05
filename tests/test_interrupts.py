"""Ctrl-C (SIGINT) in the middle of an SFTP transfer, through the real CLI and the test sshd.

An interrupt must end the command within a few seconds on both transports, print
``archive: interrupted`` and exit 130, whatever the connection was doing: nothing may wait for a
reply on a stream that was stopped mid-packet. SIGTERM takes the same path (the CLI turns it into
a KeyboardInterrupt in the main thread); only SIGINT is sent here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

import archive
from archive import layout
from archive.backends.sftp_conn import TRANSPORT_ENV
from tests.conftest import make_tree
from tests.relay import Relay
from tests.sshd import SSHServer, keyring_file, ssh_home, ssh_key_home, sshd  # noqa: F401

MIB = 1024 * 1024
EXIT_WITHIN = 8.0  # seconds from the signal to the exit; a hang fails the test, never blocks it
START_WITHIN = 60.0


@pytest.fixture(params=["ssh", "paramiko"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TRANSPORT_ENV, request.param)
    return request.param


@pytest.fixture
def relay(sshd: SSHServer, ssh_key_home: Path) -> Iterator[Relay]:
    """A slow relay to the test sshd, whose port known_hosts trusts with the server's key."""
    slow = Relay(sshd.port, rate=4 * MIB)  # a transfer outlasts EXIT_WITHIN
    with open(ssh_key_home / ".ssh" / "known_hosts", "a") as known:
        known.write(f"[127.0.0.1]:{slow.port} {sshd.host_key_line.split(' ', 1)[1]}\n")
    try:
        yield slow
    finally:
        slow.close()


def through(relay: Relay, sshd: SSHServer, store: Path) -> str:
    return f"sftp://{sshd.user}@127.0.0.1:{relay.port}{store}"


def big_folder(root: Path, files: int = 6, size: int = 32 * MIB) -> Path:
    for i in range(files):
        make_tree(root, {f"f{i}.bin": os.urandom(size)})
    return root


@pytest.fixture
def store(tmp_path: Path, sshd: SSHServer, ssh_key_home: Path) -> Path:
    archive.get_interface(sshd.url(tmp_path / "store"), create=True).close()
    return tmp_path / "store"


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "archive", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen) -> None:
    """Poll until ``condition()`` holds; fail if the command ended or nothing happened in time."""
    deadline = time.monotonic() + START_WITHIN
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the command ended before the signal ({proc.returncode}): {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail("the transfer did not start")
        time.sleep(0.005)


def interrupt(proc: subprocess.Popen) -> tuple[float, str]:
    """Send SIGINT; return how long the command took to exit, and its stderr."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=EXIT_WITHIN * 3)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1); time.sleep(1)
        proc.kill()
        print(proc.communicate()[1])
        pytest.fail(f"the command did not end within {EXIT_WITHIN * 3:.0f} s of SIGINT")
    return time.monotonic() - sent, err


def assert_interrupted(elapsed: float, err: str, returncode: int) -> None:
    assert returncode == 130, err
    assert err.strip().splitlines()[-1] == "archive: interrupted", err
    assert "Traceback" not in err, err
    assert elapsed < EXIT_WITHIN, f"took {elapsed:.1f} s to stop"


def uploading(store: Path) -> bool:
    """True once a temporary file in the archive holds some bytes: data is flowing."""
    tmp = store / layout.TMP_DIR
    try:
        return any(p.stat().st_size > MIB // 2 for p in tmp.iterdir())
    except OSError:  # not there yet, or renamed meanwhile
        return False


@pytest.mark.parametrize("jobs", ["1", "4"])
def test_sigint_during_an_sftp_push_exits_130_promptly(sshd: SSHServer, store: Path, relay: Relay,
                                                        tmp_path: Path, transport: str, jobs: str) -> None:
    """With -j 4, files in progress are stopped too, not finished (the pool used to wait for them)."""
    src = big_folder(tmp_path / "src")
    proc = start("-a", through(relay, sshd, store), "-j", jobs, "push", str(src), "big", "1.0.0")
    wait_for(lambda: uploading(store), proc)
    elapsed, err = interrupt(proc)
    assert_interrupted(elapsed, err, proc.returncode)
    with archive.get_interface(sshd.url(store)) as arc:  # nothing published, the archive intact
        assert arc.versions("big") == []
        assert arc.verify(full=True).ok


@pytest.mark.parametrize("jobs", ["1", "4"])
def test_sigint_during_an_sftp_pull_exits_130_promptly(sshd: SSHServer, store: Path, relay: Relay,
                                                        tmp_path: Path, transport: str, jobs: str) -> None:
    src = big_folder(tmp_path / "src")
    with archive.get_interface(sshd.url(store)) as arc:
        arc.publish(src, "big", "1.0.0", progress=False)
    out = tmp_path / "out"

    def downloading() -> bool:
        try:
            return any(p.is_file() and p.stat().st_size > MIB // 2 for p in out.rglob("*"))
        except OSError:
            return False

    proc = start("-a", through(relay, sshd, store), "-j", jobs, "pull", "big", "--to", str(out), "--no-cache")
    wait_for(downloading, proc)
    elapsed, err = interrupt(proc)
    assert_interrupted(elapsed, err, proc.returncode)
