"""The SFTP backend against a real OpenSSH sshd: the shared contract, logins, host keys, CLI."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import keyring
import pytest

import archive
import archive.backends.sftp as sftp_module
import archive.sync_behind as sync_behind
from archive import layout
from archive.backends.sftp import KEYRING_SERVICE, SFTPArchive
from archive.backends.sftp_batch import MAX_BATCHED_FILE
from archive.backends.sftp_conn import BULK_BYTES, TRANSPORT_ENV
from archive.errors import (AuthenticationError, BackendError, BackendUnavailableError, InvalidInputError,
                            KeyNotFoundError)
from tests.backends.conformance import BackendContract
from tests.conftest import make_tree
from tests.sshd import LocalUser, SSHServer, free_port

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


@pytest.fixture(params=["ssh", "paramiko"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each transport in turn: the system ssh client as a child process, and paramiko's own."""
    monkeypatch.setenv(TRANSPORT_ENV, request.param)
    return request.param


class TestSFTPContract(BackendContract):
    @pytest.fixture
    def arc(self, tmp_path: Path, sshd: SSHServer, ssh_key_home: Path, transport: str):
        with archive.get_interface(sshd.url(tmp_path / "store"), create=True) as arc:
            assert arc.transport == transport
            yield arc


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """The server folder the archive of a test lives in (same machine, so tests can look)."""
    return tmp_path / "store"


# ------------------------------------------------------------------ logins
def test_key_and_host_from_ssh_config(sshd: SSHServer, ssh_home: Path, store: Path) -> None:
    key = ssh_home / "lab_key"
    shutil.copy(sshd.client_key, key)
    (ssh_home / ".ssh" / "config").write_text(
        f"Host lab\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n  IdentityFile {key}\n")
    with archive.get_interface(f"sftp://lab{store}", create=True) as arc:
        assert arc.transport == "ssh"
        arc.write_bytes("releases/x/1.0.0", b"ptr")
    assert (store / "releases" / "x" / "1.0.0").read_bytes() == b"ptr"


def test_agent_login(sshd: SSHServer, ssh_agent: str, store: Path) -> None:
    with archive.get_interface(sshd.url(store), create=True) as arc:
        assert arc.has_key(layout.MARKER_KEY)
    assert f"Accepted publickey for {sshd.user}" in sshd.log()


def test_no_key_no_agent_no_password_is_refused(sshd: SSHServer, ssh_home: Path, store: Path) -> None:
    with pytest.raises(AuthenticationError) as info:
        archive.get_interface(sshd.url(store), create=True)
    assert "authentication failed" in str(info.value) and "\n" not in str(info.value)
    assert not store.exists()


def test_password_from_keyring(sshd: SSHServer, ssh_home: Path, password_user: LocalUser,
                               caplog: pytest.LogCaptureFixture) -> None:
    keyring.set_password(KEYRING_SERVICE, f"{password_user.name}@{sshd.host}", password_user.password)
    caplog.set_level(logging.DEBUG)
    with archive.get_interface(sshd.url("/~/store", user=password_user.name), create=True) as arc:
        assert arc.transport == "paramiko"  # ssh found no key: paramiko logs in with the password
        arc.publish(make_tree(ssh_home / "src", {"a": b"alpha"}), "demo", "1.0.0", progress=False)
        assert arc.resolve("demo").version == "1.0.0"
    marker = password_user.home / "store" / layout.MARKER_KEY
    assert marker.stat().st_uid == _uid(password_user.name)
    assert f"Accepted password for {password_user.name}" in sshd.log()
    assert password_user.password not in caplog.text


def test_password_in_url_is_used_and_redacted(sshd: SSHServer, ssh_home: Path, password_user: LocalUser,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = sshd.url("/~/store", user=password_user.name, password=password_user.password)
    with archive.get_interface(url, create=True) as arc:
        assert password_user.password not in arc.location + repr(arc)
        assert f"{password_user.name}:***@" in arc.location
    assert password_user.password not in caplog.text
    # a password that worked from a URL is not written to the keyring; a prompted one would be
    assert keyring.get_password(KEYRING_SERVICE, f"{password_user.name}@{sshd.host}") is None


def test_wrong_password_is_an_authentication_error(sshd: SSHServer, ssh_home: Path, password_user: LocalUser,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-" + password_user.password
    with pytest.raises(AuthenticationError) as info:
        archive.get_interface(sshd.url("/~/store", user=password_user.name, password=wrong), create=True)
    message = str(info.value)
    assert message == f"{password_user.name}@{sshd.host}: authentication failed (no key or password was accepted)"
    assert wrong not in caplog.text and password_user.password not in caplog.text


def test_permission_denied_is_a_one_line_backend_error(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path,
                                                       password_user: LocalUser) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # owned by root: the throwaway user may not write here
    with pytest.raises(BackendError, match="permission denied") as info:
        archive.get_interface(sshd.url(private / "store", user=password_user.name), create=True)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ host keys
def test_unknown_host_key_is_refused_with_its_fingerprint(sshd: SSHServer, ssh_key_home: Path, store: Path,
                                                          transport: str) -> None:
    (ssh_key_home / ".ssh" / "known_hosts").write_text("")
    with pytest.raises(AuthenticationError) as info:
        archive.get_interface(sshd.url(store), create=True)
    message = str(info.value)
    assert "\n" not in message and "not known" in message
    assert _fingerprint(sshd.folder / "host_key.pub") in message
    assert f"ssh-keyscan -p {sshd.port} {sshd.host} >> ~/.ssh/known_hosts" in message
    assert not store.exists()


def test_changed_host_key_is_refused(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path, store: Path,
                                     transport: str) -> None:
    from tests.sshd import keygen

    other = keygen(tmp_path / "other_host_key").with_suffix(".pub").read_text().split()
    (ssh_key_home / ".ssh" / "known_hosts").write_text(f"[{sshd.host}]:{sshd.port} {other[0]} {other[1]}\n")
    with pytest.raises(AuthenticationError, match="CHANGED") as info:
        archive.get_interface(sshd.url(store), create=True)
    assert _fingerprint(sshd.folder / "host_key.pub") in str(info.value)


# ------------------------------------------------------------------ connections and paths
def test_unreachable_server_is_unavailable(ssh_key_home: Path, store: Path, transport: str) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(BackendUnavailableError, match=f"cannot reach 127.0.0.1:{port}"):
        archive.get_interface(f"sftp://127.0.0.1:{port}{store}")


def test_dropped_connection_is_replaced(sshd: SSHServer, ssh_key_home: Path, store: Path, transport: str) -> None:
    with archive.get_interface(sshd.url(store), create=True) as arc:
        arc.write_bytes("releases/a/1.0.0", b"1")
        _drop_connections(arc)
        assert arc.read_key("releases/a/1.0.0", 10) == b"1"


def test_connection_cut_while_idle_is_not_lent_again(sshd: SSHServer, ssh_key_home: Path, store: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """paramiko's thread notices a cut socket only when it next runs (in about half the tries
    here it had not yet); the pool must not lend the connection in between."""
    monkeypatch.setenv(TRANSPORT_ENV, "paramiko")
    others = _paramiko_transports()  # none is expected, but none may be taken for this archive's
    with archive.get_interface(sshd.url(store), create=True) as arc:
        arc.write_bytes("releases/a/1.0.0", b"1")
        cut: list[Any] = list(others)
        for _ in range(8):
            (transport,) = [t for t in _paramiko_transports() if t not in cut]
            transport.sock.shutdown(socket.SHUT_RDWR)
            cut.append(transport)
            assert arc.read_key("releases/a/1.0.0", 10) == b"1"


def test_connection_lost_mid_read_is_unavailable(sshd: SSHServer, ssh_key_home: Path, store: Path,
                                                  transport: str) -> None:
    with archive.get_interface(sshd.url(store), create=True) as arc:
        arc.write_key("blobs/sha256/aa/big", [os.urandom(1 << 20)] * 24)
        with pytest.raises(BackendUnavailableError, match="cannot reach"):
            with arc.open_key("blobs/sha256/aa/big") as stream:
                stream.read(1 << 20)
                _drop_connections(arc)
                while stream.read(1 << 20):
                    pass
        assert arc.stat_key("blobs/sha256/aa/big").size == 24 << 20  # a new connection serves


def test_large_blob_round_trip_in_chunks(sshd: SSHServer, ssh_key_home: Path, store: Path) -> None:
    data = os.urandom(3 << 20) + b"tail"
    with archive.get_interface(sshd.url(store), create=True) as arc:
        arc.write_key("blobs/sha256/bb/large", [data[i:i + 100_000] for i in range(0, len(data), 100_000)])
        with arc.open_key("blobs/sha256/bb/large") as stream:
            got = b"".join(iter(lambda: stream.read(65_536), b""))
    assert got == data
    assert (store / "blobs" / "sha256" / "bb" / "large").read_bytes() == data


def _watch_syncs(monkeypatch: pytest.MonkeyPatch, before: Callable[[str], None] = lambda path: None) -> list[str]:
    """The temporary files a large write syncs apart from its upload (see ``SFTPArchive.write_key``),
    calling ``before(path)`` first (the server is this machine: the path is a local one)."""
    synced: list[str] = []
    real = sftp_module.sync_file

    def watched(sftp: Any, path: str) -> None:
        synced.append(path)
        before(path)
        real(sftp, path)

    monkeypatch.setattr(sftp_module, "sync_file", watched)
    return synced


def test_a_large_write_is_synced_apart_before_its_rename(sshd: SSHServer, ssh_key_home: Path, store: Path,
                                                         transport: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over BULK_BYTES, the session that streamed a file closes it unsynced and goes on; the file
    is made durable through a handle of its own, whole and not yet in place, then renamed. A
    smaller file is synced as it is written."""
    data = os.urandom(BULK_BYTES + 1)
    seen: list[tuple[int, bool]] = []
    synced = _watch_syncs(monkeypatch, lambda path: seen.append((Path(path).stat().st_size, target.exists())))
    target = store / "blobs" / "sha256" / "cc" / "large"
    with archive.get_interface(sshd.url(store), create=True) as arc:
        arc.write_key("blobs/sha256/cc/small", [bytes(BULK_BYTES)])
        arc.write_key("blobs/sha256/cc/large", [data[:1000], data[1000:]])
    assert len(synced) == 1 and Path(synced[0]).parent == store / layout.TMP_DIR
    assert seen == [(len(data), False)]
    assert target.read_bytes() == data
    assert list((store / layout.TMP_DIR).iterdir()) == []


@pytest.mark.parametrize("early_fails", [False, True])
def test_a_long_write_is_synced_behind_as_it_streams(sshd: SSHServer, ssh_key_home: Path, store: Path,
                                                     transport: str, early_fails: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every SYNC_BEHIND_BYTES acknowledged, another session fsyncs the file while it still
    streams, so the server's disk is not left all of it for the end; the final fsync still comes
    once the file is whole, before its rename. An early fsync that fails does not fail the write."""
    monkeypatch.setattr(sync_behind, "SYNC_BEHIND_BYTES", MIB)
    data = os.urandom(12 * MIB)  # replies are read once 4 MiB are in flight (WRITE_WINDOW)
    target = store / "blobs" / "sha256" / "ee" / "long"
    seen: list[tuple[int, bool]] = []
    early = threading.Event()

    def before(path: str) -> None:
        size = Path(path).stat().st_size
        seen.append((size, target.exists()))
        if size < len(data):
            early.set()
            if early_fails:
                raise OSError("refused on purpose")

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), MIB // 4):
            if start == 8 * MIB:  # 4 MiB acknowledged by now: the stream waits for an fsync behind it
                assert early.wait(30), "no fsync while the file streamed"
            yield data[start:start + MIB // 4]

    _watch_syncs(monkeypatch, before)
    with archive.get_interface(sshd.url(store), create=True) as arc:
        arc.write_key("blobs/sha256/ee/long", chunks())
    assert any(size < len(data) for size, _ in seen[:-1])
    assert seen[-1] == (len(data), False)  # the final fsync: the whole file, not yet in place
    assert target.read_bytes() == data
    assert list((store / layout.TMP_DIR).iterdir()) == []


@pytest.mark.parametrize("taken_over", [True, False])
def test_a_large_write_whose_temporary_file_vanished_before_its_sync(sshd: SSHServer, ssh_key_home: Path,
                                                                     store: Path, taken_over: bool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the upload and the sync another writer may take the file over (an idle partial
    upload): fine if it put the whole blob in place, an error naming the key otherwise, and
    nothing half-written is ever in place."""
    data = os.urandom(BULK_BYTES + 1)
    target = store / "blobs" / "sha256" / "dd" / "large"

    def take_over(path: str) -> None:
        os.remove(path)
        if taken_over:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    _watch_syncs(monkeypatch, take_over)
    with archive.get_interface(sshd.url(store), create=True) as arc:
        if taken_over:
            arc.write_key("blobs/sha256/dd/large", [data])
        else:
            with pytest.raises(BackendError, match="blobs/sha256/dd/large: the temporary file vanished"):
                arc.write_key("blobs/sha256/dd/large", [data])
    assert target.read_bytes() == data if taken_over else not target.exists()
    assert list((store / layout.TMP_DIR).iterdir()) == []


def test_home_relative_path(sshd: SSHServer, ssh_key_home: Path, password_user: LocalUser) -> None:
    with archive.get_interface(sshd.url("/~/rel/store", user=password_user.name), create=True) as arc:
        assert arc.location.endswith("/~/rel/store")
    assert (password_user.home / "rel" / "store" / layout.MARKER_KEY).is_file()


@pytest.mark.parametrize("url, root", [
    ("sftp://h/srv/archive", "/srv/archive"),
    ("sftp://u@h:2222/srv/archive/", "/srv/archive"),
    ("sftp://h/~/archive", "archive"),
    ("sftp://h/~", "."),
    ("sftp://h/with%20space", "/with space"),
])
def test_url_path_rule(url: str, root: str) -> None:
    assert SFTPArchive(url).root == root


@pytest.mark.parametrize("url", ["sftp://h", "sftp://h/", "sftp:///path", "sftp://h:99999/x",
                                 "sftp://-oProxyCommand=x/path", "sftp://-lroot@h/path"])
def test_bad_urls_are_invalid_input(url: str) -> None:
    with pytest.raises(InvalidInputError):
        SFTPArchive(url)


def test_missing_key_and_listing(sshd: SSHServer, ssh_key_home: Path, store: Path) -> None:
    with archive.get_interface(sshd.url(store), create=True) as arc:
        with pytest.raises(KeyNotFoundError):
            arc.read_key("releases/none/1.0.0", 10)
        (store / "releases" / ".hidden").mkdir(parents=True)
        assert arc.list_keys("releases") == []


# ------------------------------------------------------------------ the command line
def test_cli_end_to_end(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path, store: Path) -> None:
    url = sshd.url(store)
    src = make_tree(tmp_path / "src", {"data/a.bin": os.urandom(300_000), "readme": b"hi\n"})
    assert _cli("init", url).returncode == 0
    pushed = _cli("--archive", url, "push", str(src), "calib", "1.0.0", "-m", "first")
    assert pushed.returncode == 0, pushed.stderr
    assert _cli("--archive", url, "ls").stdout.split() == ["calib"]
    pulled = _cli("--archive", url, "pull", "calib", "^1", "--to", str(tmp_path / "out"))
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "out" / "data" / "a.bin").read_bytes() == (src / "data" / "a.bin").read_bytes()


def test_the_ssh_transport_never_imports_paramiko(sshd: SSHServer, ssh_key_home: Path, store: Path) -> None:
    """paramiko (and cryptography) take about 90 ms to import: a push or pull over the system
    ssh, with no ~/.ssh/config to parse, needs neither."""
    archive.get_interface(sshd.url(store), create=True).close()
    code = ("import sys, archive; from archive.cli import main\n"
            "with archive.get_interface(sys.argv[1]) as arc: arc.list_keys('releases'); arc.read_key('archive.json', 4096)\n"
            "print(arc.transport, sorted(m for m in sys.modules if m.split('.')[0] in ('paramiko', 'cryptography')))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code, sshd.url(store)], env=env, text=True, capture_output=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ssh", "[]"]


def test_cli_reports_unreachable_host_in_one_line(ssh_key_home: Path, store: Path) -> None:
    result = _cli("--archive", f"sftp://127.0.0.1:{free_port()}{store}", "ls")
    assert result.returncode == 1
    assert result.stderr.startswith("archive: error: cannot reach 127.0.0.1:")
    assert result.stderr.count("\n") == 1


def test_cli_never_shows_a_url_password(sshd: SSHServer, ssh_key_home: Path, store: Path) -> None:
    result = _cli("-vv", "--archive", sshd.url(store, password="s3cret-pw"), "ls")
    assert result.returncode == 1  # no archive there yet
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert ":***@" in result.stderr


# ------------------------------------------------------------------ helpers
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "archive", "--no-progress", *args], env=env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=60, cwd=REPO)


def _fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _wait_until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds:g} s for {what}"
        time.sleep(0.01)


def _drop_connections(arc: SFTPArchive) -> None:
    """Cut the connections under the archive, as a network failure would.

    paramiko's TCP sockets are shut down: the pool must see that at once, though paramiko's
    thread may not have noticed yet. An ssh child is killed, and is waited for: the signal
    takes effect when the kernel next runs it, and until then the session is not yet cut.
    """
    import gc
    import signal

    from archive.backends.sftp_pipe import SSHPipe

    dropped = 0
    for pipe in [obj for obj in gc.get_objects() if isinstance(obj, SSHPipe) and obj.is_active()]:
        os.kill(pipe.pid, signal.SIGKILL)
        _wait_until(lambda: not pipe.is_active(), f"ssh {pipe.pid} to die")
        dropped += 1
    for transport in _paramiko_transports():
        try:
            transport.sock.shutdown(socket.SHUT_RDWR)
            dropped += 1
        except OSError:  # a transport of an earlier test whose socket is gone already
            continue
    assert dropped


def _paramiko_transports() -> list[Any]:
    """The paramiko transports alive in this process."""
    import gc

    import paramiko

    return [obj for obj in gc.get_objects() if type(obj) is paramiko.Transport and obj.is_active()]  # no weak proxies


def test_listing_a_large_folder(sshd: SSHServer, ssh_key_home: Path, store: Path, transport: str) -> None:
    """A folder of more names than one READDIR reply holds (OpenSSH sends about 100): every
    name comes back once, with one request kept ahead of the one being read."""
    with archive.get_interface(sshd.url(store), create=True) as arc:
        folder = store / "releases" / "many"
        folder.mkdir(parents=True)
        names = {f"{i}.0.0" for i in range(1234)}
        for name in names:
            (folder / name).write_bytes(b"x")
        assert sorted(arc.list_keys("releases/many")) == sorted(names)
        assert arc.read_key("releases/many/7.0.0", 10) == b"x"  # the session is still in step


def test_connections_follow_the_size_of_transfers(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path) -> None:
    """Large files stream over two connections (more would only add handshakes and compete for
    the same cores), and are synced on at most one more; many small files get one connection
    per thread, to wait on the server side by side (files too large to wait in a group, see
    test_sftp_batch.py). Counted by the SFTP sessions the sshd started (the ``sync`` commands
    of test_sftp_batch.py are not counted)."""
    large, small = tmp_path / "large", tmp_path / "small"
    make_tree(large, {f"f{i}.bin": os.urandom(8) + bytes(MIB) for i in range(12)})
    make_tree(small, {f"d{i % 4}/f{i}.txt": os.urandom(MAX_BATCHED_FILE + 1000) for i in range(40)})

    def sessions() -> int:
        return sshd.log().count("Starting session: subsystem 'sftp'")

    before = sessions()
    with archive.get_interface(sshd.url(tmp_path / "store"), create=True) as arc:
        arc.publish(large, "large", "1.0.0", jobs=8)
        # the master's own (unused) session, two streaming, one more for their syncs; the first
        # of the three read the marker
        assert sessions() - before <= 4
        arc.publish(small, "small", "1.0.0", jobs=8)
        assert sessions() - before > 4
    assert (tmp_path / "store").is_dir()
