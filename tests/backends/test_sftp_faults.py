"""SFTP under faults: connections cut after K bytes, resumed uploads, and a full remote disk.

Real parts only: a TCP relay on 127.0.0.1 (:class:`CuttingProxy`) between the client and the
test sshd cuts connections after a byte budget; the "remote" disk is a 1 MiB tmpfs mounted
under the test's folder (the sshd runs on this machine, as root).
"""

from __future__ import annotations

import hashlib
import logging
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

import archive
import archive.transfer
from archive import layout
from archive.backends.filesystem import FileSystemArchive
from archive.backends.sftp_batch import MAX_BATCHED_FILE
from archive.backends.sftp_conn import TRANSPORT_ENV
from archive.backends.sftp_mux import SHARE_ENV
from archive.backends.sftp_resume import FOREIGN_IDLE_SECONDS
from archive.errors import BackendUnavailableError, StorageFullError
from archive.hashing import CHUNK_SIZE, BlobId
from tests.conftest import make_tree
from tests.sshd import SSHServer

MIB = 1024 * 1024
FOREVER = 1 << 30


class CuttingProxy:
    """A TCP relay from 127.0.0.1:``port`` to the sshd that can cut connections after K bytes.

    :meth:`arm` sets a budget of bytes (both directions, counted from then on); the connection
    that relays the byte that exhausts it is cut (both sockets closed), ``times`` times, the
    budget starting afresh after each cut. With ``new_only`` only connections opened after
    arming count, so K bytes lands inside an SSH handshake. With ``freeze`` the connection is
    not cut but stalls: open, and nothing relayed either way any more (a server that hangs).
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._limit = self._left = self._times = self._generation = 0
        self._new_only = self._freeze = False
        self.upstream_bytes = 0  # client -> server, all connections, since arming
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        self._stopping = threading.Event()
        self._listener.settimeout(0.1)
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def arm(self, after: int, times: int = 1, new_only: bool = False, freeze: bool = False) -> None:
        with self._lock:
            self._limit = self._left = after
            self._times, self._new_only, self._freeze = times, new_only, freeze
            self._generation += 1
            self.upstream_bytes = self.cuts = 0

    def disarm(self) -> None:
        with self._lock:
            self._times = 0

    def close(self) -> None:
        self._stopping.set()
        for sock in list(self._sockets):
            _close(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        with self._listener:
            while not self._stopping.is_set():
                try:
                    client, _ = self._listener.accept()
                except socket.timeout:
                    continue
                client.settimeout(None)
                self._start_relay(client)

    def _start_relay(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self._upstream))
        self._sockets += [client, server]
        with self._lock:
            generation = self._generation
        thread = threading.Thread(target=self._relay, args=(client, server, generation), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _relay(self, client: socket.socket, server: socket.socket, generation: int) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, server)
            selector.register(server, selectors.EVENT_READ, client)
            try:
                while not self._stopping.is_set() and self._pump(selector, client, generation):
                    pass
            except OSError:  # reset by one side, or closed by close()
                pass
            finally:
                _close(client)
                _close(server)

    def _pump(self, selector: selectors.BaseSelector, client: socket.socket, generation: int) -> bool:
        """Relay what is ready; False once a side closed or the connection was cut."""
        for key, _ in selector.select(timeout=1):
            data = key.fileobj.recv(65536)
            if not data:
                return False
            allowed, cut = self._allow(len(data), generation, upstream=key.fileobj is client)
            key.data.sendall(data[:allowed])
            if cut and self._freeze:
                self._stopping.wait()  # both directions of this connection stall until close()
            if cut:
                return False
        return True

    def _allow(self, n: int, generation: int, upstream: bool) -> tuple[int, bool]:
        """How many of ``n`` bytes pass, and whether the connection is cut after them."""
        with self._lock:
            counted = self._times > 0 and (not self._new_only or generation == self._generation)
            allowed, cut = n, False
            if counted:
                allowed = min(n, self._left)
                self._left -= allowed
                cut = self._left == 0
                if cut:
                    self._times, self._left, self.cuts = self._times - 1, self._limit, self.cuts + 1
            if upstream:
                self.upstream_bytes += allowed
        return allowed, cut


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # not connected any more
        pass
    sock.close()
# ------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real retry loop, with short pauses: these tests are about outcomes, not backoff."""
    monkeypatch.setattr(archive.transfer, "RETRY_BASE_DELAY", 0.01)


@pytest.fixture(params=["ssh", "paramiko"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TRANSPORT_ENV, request.param)
    return request.param


@pytest.fixture
def proxy(sshd: SSHServer, ssh_key_home: Path) -> Iterator[CuttingProxy]:
    """A relay to the test sshd, whose port known_hosts trusts with the server's key."""
    relay = CuttingProxy(sshd.port)
    key = sshd.host_key_line.split(" ", 1)[1]
    with open(ssh_key_home / ".ssh" / "known_hosts", "a") as known:
        known.write(f"[127.0.0.1]:{relay.port} {key}\n")
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
def store(tmp_path: Path, sshd: SSHServer, ssh_key_home: Path) -> Path:
    """An initialized archive on the server (created directly, not through the proxy)."""
    archive.get_interface(sshd.url(tmp_path / "store"), create=True).close()
    return tmp_path / "store"


def through(proxy: CuttingProxy, sshd: SSHServer, store: Path) -> str:
    return f"sftp://{sshd.user}@127.0.0.1:{proxy.port}{store}"


def assert_nothing_half_written(store: Path, sshd: SSHServer, name: str, published: bool) -> None:
    """The archive verifies, shows the release only if published, and has no temporary files."""
    with archive.get_interface(sshd.url(store)) as arc:
        report = arc.verify(full=True)
        assert report.ok, report.errors
        assert arc.versions(name) == (["1.0.0"] if published else [])
    assert list((store / layout.TMP_DIR).iterdir()) == []


# ------------------------------------------------------------------ connections cut after K bytes
@pytest.mark.parametrize("k", [30, 1_500, 5_000, 40_000])
def test_cut_in_a_new_connection_is_retried(sshd: SSHServer, proxy: CuttingProxy, store: Path, tmp_path: Path,
                                            transport: str, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """K bytes into a handshake (banner, key exchange, login, SFTP start): the upload retries.
    The files are too large to wait in a group, so each thread streams its own on a new connection
    (ssh's connection sharing off: with it, the upload threads' sessions open no connection)."""
    monkeypatch.setenv(SHARE_ENV, "0")
    src = make_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(MAX_BATCHED_FILE + 20_000) for i in range(12)})
    with archive.get_interface(through(proxy, sshd, store)) as arc:
        proxy.arm(after=k, new_only=True)  # the connections the upload threads open
        arc.publish(src, "demo", "1.0.0", jobs=4, progress=False)
        assert proxy.cuts == 1
    assert_nothing_half_written(store, sshd, "demo", published=True)


@pytest.mark.parametrize("k", [20_000, 150_000, 600_000])
def test_cut_in_a_group_of_small_files_is_retried_whole(sshd: SSHServer, proxy: CuttingProxy, store: Path,
                                                       tmp_path: Path, transport: str, k: int) -> None:
    """A connection cut while it carries a group of small files (their opens, writes, fsyncs or
    renames): the group is sent again whole on a new connection, and nothing is left half done."""
    files = {f"d{i % 7}/f{i}.txt": os.urandom(1_000 + i) for i in range(300)}
    src = make_tree(tmp_path / "src", files)
    with archive.get_interface(through(proxy, sshd, store)) as arc:
        arc.list_keys("")  # the first connection is open and idle: the cut hits the groups
        proxy.arm(after=k)
        arc.publish(src, "demo", "1.0.0", jobs=4, progress=False)
        assert proxy.cuts == 1
    assert_nothing_half_written(store, sshd, "demo", published=True)
    with archive.get_interface(sshd.url(store)) as direct:
        out = direct.download("demo", "*", tmp_path / "out", progress=False)
    assert all((out / path).read_bytes() == data for path, data in files.items())


@pytest.mark.parametrize("k", [30, 3_000])
def test_cut_while_opening_the_archive_fails_in_one_line(sshd: SSHServer, proxy: CuttingProxy, store: Path,
                                                         transport: str, k: int) -> None:
    proxy.arm(after=k)
    with pytest.raises(BackendUnavailableError) as info:
        archive.get_interface(through(proxy, sshd, store))
    message = str(info.value)
    assert message.startswith("cannot reach 127.0.0.1") and "\n" not in message


def test_cut_mid_upload_resumes(sshd: SSHServer, proxy: CuttingProxy, store: Path, tmp_path: Path,
                                transport: str, caplog: pytest.LogCaptureFixture) -> None:
    size = 24 * MIB
    src = make_tree(tmp_path / "src", {"big.bin": os.urandom(size)})
    caplog.set_level(logging.INFO, logger="archive")
    with archive.get_interface(through(proxy, sshd, store)) as arc:
        proxy.arm(after=12 * MIB)
        arc.publish(src, "big", "1.0.0", jobs=1, progress=False)
    assert proxy.cuts == 1
    assert "resuming an upload" in caplog.text
    # without resuming, the ~12 MiB before the cut would be sent again: 36 MiB in all
    assert proxy.upstream_bytes < size + 4 * MIB
    assert_nothing_half_written(store, sshd, "big", published=True)


def test_cut_mid_download_is_retried(sshd: SSHServer, proxy: CuttingProxy, store: Path, tmp_path: Path,
                                     transport: str) -> None:
    data = os.urandom(12 * MIB)
    src = make_tree(tmp_path / "src", {"big.bin": data, "small.txt": b"hello"})
    with archive.get_interface(sshd.url(store)) as direct:
        direct.publish(src, "big", "1.0.0", progress=False)
    with archive.get_interface(through(proxy, sshd, store)) as arc:
        proxy.arm(after=6 * MIB)
        out = arc.download("big", "*", tmp_path / "out", jobs=1, progress=False)
    assert proxy.cuts == 1
    assert (out / "big.bin").read_bytes() == data and (out / "small.txt").read_bytes() == b"hello"


def test_every_connection_cut_fails_cleanly_then_a_retry_completes(sshd: SSHServer, proxy: CuttingProxy,
                                                                   store: Path, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"big.bin": os.urandom(16 * MIB), "a.txt": b"a"})
    with archive.get_interface(through(proxy, sshd, store)) as arc:
        proxy.arm(after=3 * MIB, times=FOREVER)
        with pytest.raises(BackendUnavailableError) as info:
            arc.publish(src, "demo", "1.0.0", jobs=1, progress=False)
        assert str(info.value).startswith("cannot reach 127.0.0.1") and "\n" not in str(info.value)
        assert proxy.cuts >= 4  # the first try and three retries
        proxy.disarm()
        assert arc.versions("demo") == []
        arc.publish(src, "demo", "1.0.0", jobs=1, progress=False)
    assert_nothing_half_written(store, sshd, "demo", published=True)


# ------------------------------------------------------------------ partial uploads of earlier processes
@pytest.mark.parametrize("state", ["idle", "idle-corrupt", "fresh"])
def test_partial_upload_of_an_earlier_process(sshd: SSHServer, proxy: CuttingProxy, store: Path, tmp_path: Path,
                                              state: str) -> None:
    """An idle partial file is taken over (its bytes checked); a fresh one may have a live writer."""
    size = 8 * MIB
    data = os.urandom(size)
    blob = BlobId.of_bytes(data)
    stored = bytearray(data[:6 * MIB])
    if state == "idle-corrupt":
        stored[3 * MIB + 5] ^= 0xFF
    # A new file is uploaded as it is hashed, so its partial upload is named by its first chunk.
    first_chunk = hashlib.sha256(data[:CHUNK_SIZE]).hexdigest()
    partial = store / layout.TMP_DIR / f"{first_chunk}.{uuid.uuid4().hex}.part"
    partial.parent.mkdir(exist_ok=True)
    partial.write_bytes(bytes(stored))
    if state != "fresh":
        old = partial.stat().st_mtime - FOREIGN_IDLE_SECONDS - 5
        os.utime(partial, (old, old))
    src = make_tree(tmp_path / "src", {"big.bin": data})
    with archive.get_interface(through(proxy, sshd, store)) as arc:
        proxy.arm(after=FOREVER, times=0)  # counts only
        arc.publish(src, "big", "1.0.0", progress=False)
    sent = {"idle": 2 * MIB, "idle-corrupt": 5 * MIB, "fresh": 8 * MIB}[state]  # from the first bad byte on
    assert sent <= proxy.upstream_bytes < sent + MIB
    assert partial.exists() == (state == "fresh")
    with archive.get_interface(sshd.url(store)) as arc:
        assert arc.verify(full=True).ok
    assert (store / layout.blob_key(blob)).read_bytes() == data


def test_partial_upload_of_a_known_file_is_found_by_its_blob(sshd: SSHServer, proxy: CuttingProxy, store: Path,
                                                             tmp_path: Path) -> None:
    """A file the stat cache knows is uploaded under a name with its blob id: resumed by it."""
    data = os.urandom(8 * MIB)
    blob = BlobId.of_bytes(data)
    src = make_tree(tmp_path / "src", {"big.bin": data})
    old = os.stat(src / "big.bin").st_mtime - 3600  # settled, so the stat cache keeps its hash
    os.utime(src / "big.bin", (old, old))
    other = FileSystemArchive(tmp_path / "other")
    other.initialize()
    other.publish(src, "big", "1.0.0", progress=False)  # the stat cache now knows the file
    partial = store / layout.TMP_DIR / f"{blob.hexdigest}.{uuid.uuid4().hex}.part"
    partial.parent.mkdir(exist_ok=True)
    partial.write_bytes(data[:6 * MIB])
    idle = partial.stat().st_mtime - FOREIGN_IDLE_SECONDS - 5
    os.utime(partial, (idle, idle))
    with archive.get_interface(through(proxy, sshd, store)) as arc:
        proxy.arm(after=FOREVER, times=0)  # counts only
        arc.publish(src, "big", "1.0.0", progress=False)
    assert 2 * MIB <= proxy.upstream_bytes < 3 * MIB
    assert not partial.exists()
    assert (store / layout.blob_key(blob)).read_bytes() == data


# ------------------------------------------------------------------ a full disk on the server
def test_full_remote_disk_is_one_line_and_leaves_nothing(sshd: SSHServer, ssh_key_home: Path, small_tmpfs: Path,
                                                         tmp_path: Path, transport: str) -> None:
    store = small_tmpfs / "store"  # the server's disk (the sshd runs here, as root)
    src = make_tree(tmp_path / "src", {"big.bin": os.urandom(3 * MIB), "small.txt": b"fits"})
    with archive.get_interface(sshd.url(store), create=True) as arc:
        with pytest.raises(StorageFullError) as info:
            arc.publish(src, "demo", "1.0.0", jobs=1, progress=False)
        message = str(info.value)
        assert message.startswith(f"no space left on {sshd.host}") and "\n" not in message
    assert_nothing_half_written(store, sshd, "demo", published=False)


# ------------------------------------------------------------------ servers that are not SSH, or stay silent
class FakeServer:
    """A TCP server on 127.0.0.1 that is no SSH server: it answers each connection with
    ``greeting`` and closes it, or (``greeting`` None) accepts and never says anything; with
    ``accept=False`` it never even accepts, and its backlog is filled so that a connect hangs."""

    def __init__(self, greeting: bytes | None, accept: bool = True) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=0 if not accept else 16)
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._greeting = greeting
        if accept:
            threading.Thread(target=self._serve, daemon=True).start()
        else:  # the accept queue (backlog + 1) fills up; later SYNs are dropped, connect waits
            for _ in range(4):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", self.port))
                self._held.append(sock)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            if self._greeting is None:
                self._held.append(conn)  # open and silent
                continue
            try:
                conn.sendall(self._greeting)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._listener.close()
        for sock in self._held:
            sock.close()


def run_cli(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=60)
    return result, time.monotonic() - started


GARBAGE = b"".join(b"HTTP/1.1 400 Bad Request %d\r\n" % i for i in range(40)) + b"\r\n<html>no</html>\r\n"


@pytest.mark.parametrize("greeting", [GARBAGE, b"SSH-2.0-fake\r\n" + os.urandom(2000)], ids=["http", "bad-ssh"])
def test_a_server_that_is_not_ssh_is_one_line(ssh_key_home: Path, tmp_path: Path, transport: str,
                                              greeting: bytes) -> None:
    """paramiko logged a traceback from its thread (logging's last resort printed it) before ours."""
    server = FakeServer(greeting)
    try:
        result, _ = run_cli("-a", f"sftp://127.0.0.1:{server.port}{tmp_path}/store", "ls",
                            env={TRANSPORT_ENV: transport, "ARCHIVE_CONNECT_TIMEOUT": "5"})
    finally:
        server.close()
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"archive: error: cannot reach 127.0.0.1"), result.stderr


@pytest.mark.parametrize("accept", [True, False], ids=["silent", "never-accepts"])
def test_connect_timeout_setting_bounds_a_silent_server(ssh_key_home: Path, tmp_path: Path, transport: str,
                                                        accept: bool) -> None:
    server = FakeServer(None, accept=accept)
    try:
        result, elapsed = run_cli("-a", f"sftp://127.0.0.1:{server.port}{tmp_path}/store", "ls",
                                  env={TRANSPORT_ENV: transport, "ARCHIVE_CONNECT_TIMEOUT": "1"})
    finally:
        server.close()
    assert result.returncode == 1 and result.stderr.startswith("archive: error: cannot reach"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert elapsed < 6, f"took {elapsed:.1f} s with a 1 s timeout"


def test_connect_timeout_of_ssh_config_is_honoured(ssh_key_home: Path, tmp_path: Path, transport: str) -> None:
    server = FakeServer(None, accept=False)
    (ssh_key_home / ".ssh" / "config").write_text("Host slow\n  HostName 127.0.0.1\n  ConnectTimeout 1\n")
    try:
        result, elapsed = run_cli("-a", f"sftp://slow:{server.port}{tmp_path}/store", "ls",
                                  env={TRANSPORT_ENV: transport})
    finally:
        server.close()
    assert result.returncode == 1 and result.stderr.startswith("archive: error: cannot reach"), result.stderr
    assert elapsed < 6, f"took {elapsed:.1f} s with ConnectTimeout 1"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_timeout_setting_is_one_line(sshd: SSHServer, store: Path, value: str) -> None:
    result, _ = run_cli("-a", sshd.url(store), "ls", env={"ARCHIVE_CONNECT_TIMEOUT": value})
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "ARCHIVE_CONNECT_TIMEOUT must be a positive number of seconds" in result.stderr


@pytest.fixture
def silent_sftp_home(sshd: SSHServer, ssh_home: Path, tmp_path: Path) -> Path:
    """A key the test sshd accepts with a forced command that reads and never answers: the SSH
    login works, the SFTP session never starts."""
    from tests.sshd import keygen

    key = keygen(tmp_path / "silent_key")
    line = f'command="cat >/dev/null",restrict {(tmp_path / "silent_key.pub").read_text().strip()}\n'
    with open(sshd.folder / "authorized_keys", "a") as authorized:
        authorized.write(line)
    target = ssh_home / ".ssh" / "id_ed25519"
    target.write_bytes(key.read_bytes())
    target.chmod(0o600)
    return ssh_home


def test_a_server_silent_at_sftp_start_is_given_up(sshd: SSHServer, silent_sftp_home: Path, tmp_path: Path,
                                                   transport: str) -> None:
    result, elapsed = run_cli("-a", sshd.url(tmp_path / "store"), "ls",
                              env={TRANSPORT_ENV: transport, "ARCHIVE_CONNECT_TIMEOUT": "1"})
    assert result.returncode == 1, result
    assert result.stderr.startswith("archive: error: cannot reach 127.0.0.1") and "no SFTP session" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert elapsed < 8, f"took {elapsed:.1f} s with a 1 s connect timeout"


@pytest.mark.parametrize("command", ["push", "pull"])
def test_a_transfer_that_stalls_is_given_up_and_retried(sshd: SSHServer, proxy: CuttingProxy, store: Path,
                                                        tmp_path: Path, transport: str, command: str) -> None:
    """A connection that stops moving mid-transfer (open, silent) is dropped after
    $ARCHIVE_IO_TIMEOUT and the transfer retried on a new one; it used to wait forever."""
    data = os.urandom(12 * MIB)
    src = make_tree(tmp_path / "src", {"big.bin": data})
    location = through(proxy, sshd, store)
    if command == "pull":
        with archive.get_interface(sshd.url(store)) as direct:
            direct.publish(src, "big", "1.0.0", progress=False)
        args = ("-j", "1", "pull", "big", "--to", str(tmp_path / "out"), "--no-cache")
    else:
        args = ("-j", "1", "push", str(src), "big", "1.0.0")
    proxy.arm(after=6 * MIB, freeze=True)
    try:
        result, elapsed = run_cli("-a", location, *args, env={"ARCHIVE_IO_TIMEOUT": "2"})
    except subprocess.TimeoutExpired:
        pytest.fail("the stalled transfer was never given up")
    assert result.returncode == 0, result.stderr
    assert proxy.cuts == 1
    assert elapsed < 30
    if command == "pull":
        assert (tmp_path / "out" / "big.bin").read_bytes() == data
    else:
        assert_nothing_half_written(store, sshd, "big", published=True)
