"""Small writes of an SFTP archive sent in groups (``archive/backends/sftp_batch.py``), against
the test sshd: what a batch holds back, when it appears, and that a failed group fails loudly.

Each runs against both ports of the test server: one where the account may run ``sync -f``
(files synced together, :mod:`archive.backends.sftp_sync`), one where ``ForceCommand
internal-sftp`` refuses every command (each file fsync'd on its own)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import archive
from archive import layout
from archive.backends.sftp_batch import GROUP_FILES, MAX_BATCHED_FILE
from archive.backends.sftp_sync import REMOTE_SYNC_ENV
from archive.errors import BackendError, StorageFullError, UnsafeObjectError
from archive.transfer import run_jobs
from tests.conftest import make_tree
from tests.sshd import SSHServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["synced together", "each fsync'd"])
def arc(request: pytest.FixtureRequest, tmp_path: Path, sshd: SSHServer, ssh_key_home: Path):
    url = sshd.url(tmp_path / "store", sftp_only=request.param == "each fsync'd")
    with archive.get_interface(url, create=True) as arc:
        yield arc


def commands_run(sshd: SSHServer) -> int:
    """How many commands (not SFTP sessions) the test server has started so far."""
    return sshd.log().count("Starting session: command")


def test_a_small_write_waits_for_its_group_and_a_large_one_does_not(arc, tmp_path: Path) -> None:
    with arc.batched_writes():
        arc.write_key("blobs/sha256/aa/small", [b"sm", b"all"])
        arc.write_key("blobs/sha256/aa/large", [b"x" * MAX_BATCHED_FILE, b"y"])
        assert not arc.has_key("blobs/sha256/aa/small")  # returned before it exists
        assert arc.stat_key("blobs/sha256/aa/large").size == MAX_BATCHED_FILE + 1  # streamed at once
        arc.flush_writes()
        assert arc.read_key("blobs/sha256/aa/small", 10) == b"small"
        arc.write_key("blobs/sha256/bb/later", [b""])
    assert arc.read_key("blobs/sha256/bb/later", 10) == b""  # the block's end sends the rest
    assert arc.list_keys(layout.TMP_DIR) == []


def test_a_full_group_is_sent_by_the_thread_that_filled_it(arc, request: pytest.FixtureRequest) -> None:
    keys = [f"blobs/sha256/{i % 5:02x}/{i}" for i in range(GROUP_FILES * 3 + 7)]
    with arc.batched_writes():
        run_jobs([lambda key=key: arc.write_key(key, [key.encode()]) for key in keys], 4)
        visible = sum(arc.has_key(key) for key in keys)
        stored = len(arc.list_keys(layout.TMP_DIR))
        if "together" in request.node.callspec.params["arc"]:
            assert (visible, stored) == (0, GROUP_FILES * 3)  # stored whole groups, named after the sync
        else:
            assert (visible, stored) == (GROUP_FILES * 3, 0)  # whole groups only; the rest waits for the end
    assert all(arc.read_key(key, 100) == key.encode() for key in keys)
    assert arc.list_keys(layout.TMP_DIR) == []


@pytest.mark.parametrize("transport", ["ssh", "paramiko"])
def test_one_sync_on_the_server_makes_a_whole_batch_durable(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, transport: str) -> None:
    """Where the account may run commands, a batch of many groups costs one ``sync -f`` run
    when it ends, plus one the first time (which finds out that the server can), over either
    transport."""
    monkeypatch.setenv("ARCHIVE_SFTP_TRANSPORT", transport)
    keys = [f"blobs/sha256/{i % 7:02x}/{i}" for i in range(GROUP_FILES * 5)]
    with archive.get_interface(sshd.url(tmp_path / "store"), create=True) as arc:
        for round_ in (1, 2):
            before = commands_run(sshd)
            with arc.batched_writes():
                run_jobs([lambda key=key: arc.write_key(key, [f"{round_}{key}".encode()]) for key in keys], 4)
            assert commands_run(sshd) - before == (2 if round_ == 1 else 1)
            assert all(arc.read_key(key, 100) == f"{round_}{key}".encode() for key in keys)
        assert arc.list_keys(layout.TMP_DIR) == []


def test_a_batch_of_large_files_only_runs_no_command(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path) -> None:
    """Whether the server can sync is found out from the first small file of a batch: a push of
    large files only, which never uses it, starts no shell on the server."""
    with archive.get_interface(sshd.url(tmp_path / "store"), create=True) as arc:
        before = commands_run(sshd)
        with arc.batched_writes():
            run_jobs([lambda i=i: arc.write_key(f"blobs/sha256/aa/{i}", [bytes([i]) * (MAX_BATCHED_FILE + 1)])
                      for i in range(4)], 4)
        assert commands_run(sshd) - before == 0
        with arc.batched_writes():
            arc.write_key("blobs/sha256/bb/small", [b"small"])
        assert commands_run(sshd) - before == 2  # found out, then the batch's one sync
        assert arc.read_key("blobs/sha256/bb/small", 10) == b"small"
        assert all(arc.stat_key(f"blobs/sha256/aa/{i}").size == MAX_BATCHED_FILE + 1 for i in range(4))


def test_no_command_runs_where_the_user_says_so_or_the_server_refuses(sshd: SSHServer, ssh_key_home: Path,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [f"blobs/sha256/aa/{i}" for i in range(GROUP_FILES + 1)]
    before = commands_run(sshd)
    with archive.get_interface(sshd.url(tmp_path / "refused", sftp_only=True), create=True) as arc:
        with arc.batched_writes():  # tried once, refused by ForceCommand: each file fsync'd
            run_jobs([lambda key=key: arc.write_key(key, [key.encode()]) for key in keys], 4)
        assert all(arc.read_key(key, 100) == key.encode() for key in keys)
    monkeypatch.setenv(REMOTE_SYNC_ENV, "0")
    with archive.get_interface(sshd.url(tmp_path / "unwelcome"), create=True) as arc:
        with arc.batched_writes():
            run_jobs([lambda key=key: arc.write_key(key, [key.encode()]) for key in keys], 4)
        assert all(arc.read_key(key, 100) == key.encode() for key in keys)
    assert commands_run(sshd) - before == 0


def test_a_sync_that_fails_fails_the_batch_and_names_nothing(sshd: SSHServer, ssh_key_home: Path,
                                                            tmp_path: Path) -> None:
    """The server's sync exits with an error (an I/O error writing back, say) after the first
    run said it can: the batch fails in one line and none of its files appears under its name."""
    keys = [f"blobs/sha256/bb/{i}" for i in range(GROUP_FILES * 2)]
    with archive.get_interface(sshd.url(tmp_path / "store"), create=True) as arc:
        arc.write_key(f"{layout.TMP_DIR}/x", [b""])  # a connection first: the transport is known
        assert arc._remote_sync.usable()
        arc._remote_sync.command = lambda word, folder: "echo 'sync: error syncing: Input/output error' >&2; exit 1"
        with pytest.raises(BackendError, match="could not make 128 new objects durable") as info:
            with arc.batched_writes():
                run_jobs([lambda key=key: arc.write_key(key, [key.encode()]) for key in keys], 4)
        assert "\n" not in str(info.value)
        assert not any(arc.has_key(key) for key in keys)


def test_a_block_that_fails_sends_nothing_it_held(arc) -> None:
    with pytest.raises(RuntimeError):
        with arc.batched_writes():
            arc.write_key("blobs/sha256/dd/one", [b"one"])
            raise RuntimeError("the publish failed")
    assert not arc.has_key("blobs/sha256/dd/one")
    assert arc.list_keys(layout.TMP_DIR) == []


def test_a_group_that_fails_fails_the_batch_and_leaves_nothing(arc, tmp_path: Path) -> None:
    """A link where a folder of the group's keys should be: the group is refused (none of its
    keys appears, its temporary files are removed) and every later write of the batch, and its
    end, fail too, so a publish never goes on to name those blobs."""
    store = tmp_path / "store"
    (tmp_path / "elsewhere").mkdir()
    (store / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / "sha256" / "ee").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BackendError, match="new objects could not be stored"):
        with arc.batched_writes():
            arc.write_key("blobs/sha256/cc/fine", [b"fine"])
            arc.write_key("blobs/sha256/ee/linked", [b"linked"])
            with pytest.raises(UnsafeObjectError):
                arc.flush_writes()
            arc.write_key("blobs/sha256/cc/after", [b"after"])
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert not arc.has_key("blobs/sha256/cc/fine") and not arc.has_key("blobs/sha256/cc/after")
    assert list((store / layout.TMP_DIR).iterdir()) == []


def test_push_and_pull_of_many_small_files_through_the_cli(sshd: SSHServer, ssh_key_home: Path,
                                                          tmp_path: Path) -> None:
    """The real command: a few groups' worth of small files (and empty ones, and duplicates)
    arrive whole, and a full verify reads every blob back."""
    files = {f"d{i % 9}/f{i}.bin": os.urandom(i * 37 % 5000) for i in range(GROUP_FILES * 4 + 3)}
    files.update({"same/a.txt": b"same", "same/b.txt": b"same", "empty": b""})
    src = make_tree(tmp_path / "src", files)
    url = sshd.url(tmp_path / "store")
    env = {**os.environ, "PYTHONPATH": str(REPO), "ARCHIVE_CACHE_DIR": str(tmp_path / "cache")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "archive", "--no-progress", *args],
                              capture_output=True, text=True, env=env, timeout=300)

    assert cli("init", url).returncode == 0
    result = cli("-a", url, "push", str(src), "many", "1.0.0")
    assert result.returncode == 0, result.stderr
    assert cli("-a", url, "verify", "--full").returncode == 0
    result = cli("-a", url, "pull", "many", "1.0.0", "--to", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert all((tmp_path / "out" / path).read_bytes() == data for path, data in files.items())
    assert list((tmp_path / "store" / layout.TMP_DIR).iterdir()) == []


# ------------------------------------------------------------------ killed at random moments
def killed_at_random(sshd: SSHServer, tmp_path: Path, runs: int, files: int = 600) -> dict[str, int]:
    """Push ``files`` small files over SFTP ``runs`` times, each into a new archive, killing the
    CLI (SIGKILL: no cleanup) at a random moment; after each, the archive verifies in full, the
    release is absent or whole, and a rerun completes."""
    rng = random.Random(int(os.environ.get("ARCHIVE_KILL_SEED", "15")))
    source = make_tree(tmp_path / "src", {f"d{i // 100}/f{i}.bin": b"" if i % 10 == 0 else
                                          rng.randbytes(rng.choice([1, 100, 4096])) for i in range(files)})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    push = [sys.executable, "-m", "archive", "--no-progress", "push", str(source), "many", "1.0.0"]
    started = time.perf_counter()
    timing = sshd.url(tmp_path / "timing")
    archive.get_interface(timing, create=True).close()
    assert subprocess.run([*push[:3], "-a", timing, *push[3:]], env=env, capture_output=True).returncode == 0
    duration = time.perf_counter() - started
    tally = {"killed": 0, "finished": 0, "visible": 0}
    for run in range(runs):
        url = sshd.url(tmp_path / f"store{run}")
        archive.get_interface(url, create=True).close()
        cache = {"ARCHIVE_CACHE_DIR": str(tmp_path / f"cache{run}")}
        proc = subprocess.Popen([*push[:3], "-a", url, *push[3:]], env={**env, **cache},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, 1.3 * duration))  # some runs finish: the kill also lands after the pointer
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        tally["killed" if proc.returncode == -signal.SIGKILL else "finished"] += 1
        with archive.get_interface(url) as arc:
            report = arc.verify(full=True)
            assert report.ok, report.errors
            visible = arc.versions("many")
            assert visible in ([], ["1.0.0"])
            tally["visible"] += bool(visible)
        rerun = subprocess.run([*push[:3], "-a", url, *push[3:]], env={**env, **cache}, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr  # the same command (its metadata too) completes
        with archive.get_interface(url) as arc:
            out = arc.download("many", "1.0.0", tmp_path / f"out{run}", progress=False)
        assert all((out / p.relative_to(source)).read_bytes() == p.read_bytes()
                   for p in source.rglob("*") if p.is_file())
        shutil.rmtree(tmp_path / f"store{run}")
        shutil.rmtree(out)
    print(f"\nSFTP small-files kill test: push {duration * 1000:.0f} ms, {tally}")
    return tally


def test_a_publish_of_small_files_killed_at_random_is_sound(sshd: SSHServer, ssh_key_home: Path,
                                                            tmp_path: Path) -> None:
    tally = killed_at_random(sshd, tmp_path, int(os.environ.get("ARCHIVE_KILL_RUNS", "3")))
    assert tally["killed"] + tally["finished"] >= 3


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 100 pushes, each killed and checked: about 10 minutes on a busy machine
def test_a_publish_of_small_files_killed_at_random_100_times(sshd: SSHServer, ssh_key_home: Path,
                                                             tmp_path: Path) -> None:
    runs = int(os.environ.get("ARCHIVE_KILL_RUNS", "100"))
    tally = killed_at_random(sshd, tmp_path, runs)
    assert tally["killed"] >= runs // 4, tally  # enough kills land mid-publish for the test to mean something


def test_chunks_from_a_reused_buffer_are_kept_as_they_were(arc) -> None:
    """A producer may yield views of one buffer it refills: what waits in a group, and what was
    read ahead before a larger file is streamed, must be the bytes as they were yielded."""
    def refilled(parts: list[bytes]):
        buffer = bytearray(max(len(p) for p in parts))
        for part in parts:
            buffer[:len(part)] = part
            yield memoryview(buffer)[:len(part)]

    small = [b"a" * 1000, b"b" * 1000]
    large = [bytes([i]) * 100_000 for i in range(4)]
    with arc.batched_writes():
        arc.write_key("blobs/sha256/aa/small", refilled(small))
        arc.write_key("blobs/sha256/aa/large", refilled(large))
    assert arc.read_key("blobs/sha256/aa/small", 10_000) == b"".join(small)
    assert arc.read_key("blobs/sha256/aa/large", 1_000_000) == b"".join(large)


def test_a_group_that_fills_the_disk_is_one_line_and_leaves_nothing(sshd: SSHServer, ssh_key_home: Path,
                                                                     small_tmpfs: Path, tmp_path: Path) -> None:
    """Small files worth more than the server's 1 MiB disk: a write of a group fails, every
    reply of the group is still read (the session serves the next request), the temporary
    files are removed and the publish fails in one line."""
    store = small_tmpfs / "store"
    src = make_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(30_000) for i in range(GROUP_FILES)})
    with archive.get_interface(sshd.url(store), create=True) as arc:
        with pytest.raises(StorageFullError) as info:
            arc.publish(src, "demo", "1.0.0", jobs=2, progress=False)
        assert str(info.value).startswith(f"no space left on {sshd.host}") and "\n" not in str(info.value)
        assert arc.versions("demo") == []
        assert arc.list_keys(layout.TMP_DIR) == []  # the same connections still answer, in step
        arc.write_bytes("releases/x/note", b"fits")
        assert arc.read_key("releases/x/note", 10) == b"fits"


def test_a_server_that_answers_0_without_syncing_is_not_trusted(sshd: SSHServer, ssh_key_home: Path,
                                                                tmp_path: Path) -> None:
    """A server may run something else in the command's place and exit with 0 (a forced
    command, a menu): only a run that says the word it was given counts, so each file is then
    fsync'd on its own and appears with its group."""
    keys = [f"blobs/sha256/cc/{i}" for i in range(GROUP_FILES)]
    with archive.get_interface(sshd.url(tmp_path / "store"), create=True) as arc:
        arc.write_key(f"{layout.TMP_DIR}/x", [b""])
        arc._remote_sync.command = lambda word, folder: "exit 0"
        with arc.batched_writes():
            run_jobs([lambda key=key: arc.write_key(key, [key.encode()]) for key in keys], 4)
            assert all(arc.has_key(key) for key in keys)  # stored and named with the full group
        assert not arc._remote_sync.usable()
