"""The ``archive`` command, run as a real subprocess: outputs, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_tree, pull_has_begun, staged_beside
from tests.test_publish import snapshot


def run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=120)


@pytest.fixture
def store(tmp_path: Path) -> str:
    location = str(tmp_path / "store")
    assert run("init", location).returncode == 0
    return location


def test_round_trip_on_the_default_archive(sample_folder: Path, tmp_path: Path, isolated_user_dirs) -> None:
    push = run("push", str(sample_folder), "calib", "1.0.0", "-m", "first")
    assert push.returncode == 0, push.stderr
    assert push.stdout.startswith("published calib 1.0.0: 5 files")
    assert (isolated_user_dirs / "data" / "archive" / "archive" / "archive.json").is_file()
    pull = run("pull", "calib", "^1", "--to", str(tmp_path / "out"))
    assert pull.returncode == 0 and pull.stdout.strip() == str(tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(sample_folder)
    cached = run("pull", "calib")
    assert snapshot(Path(cached.stdout.strip())) == snapshot(sample_folder)


def test_ls_and_show(store: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": b"hello", "b/c.bin": b"\x00" * 2048})
    for version in ("1.0.0", "1.10.0", "1.2.0"):
        assert run("-a", store, "push", str(src), "calib", version, "--meta", "site=lab2").returncode == 0
    run("-a", store, "push", str(src), "other", "0.1.0")
    assert run("-a", store, "ls").stdout.split() == ["calib", "other"]
    assert [line.split()[0] for line in run("-a", store, "ls", "calib").stdout.splitlines()] == ["1.10.0", "1.2.0", "1.0.0"]
    shown = run("-a", store, "show", "calib", "<1.5").stdout
    assert shown.splitlines()[0] == "calib 1.2.0" and "site     lab2" in shown and "b/c.bin" in shown
    record = json.loads(run("-a", store, "show", "calib", "--json").stdout)
    assert record["version"] == "1.10.0" and record["files"]["a.txt"]["size"] == 5


def test_archive_url_selects_the_archive(store: str, sample_folder: Path) -> None:
    assert run("push", str(sample_folder), "calib", "1.0.0", env={"ARCHIVE_URL": store}).returncode == 0
    assert run("-a", store, "ls").stdout.split() == ["calib"]


def one_line_error(result: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert result.returncode == code, result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("archive: error: "), result.stderr
    assert text in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, text", [
    (["push", "{src}", "Bad Name", "1.0.0"], "invalid release name 'Bad Name'"),
    (["push", "{src}", "calib", "1.0"], "invalid version '1.0'"),
    (["push", "{tmp}/missing", "calib", "1.0.0"], "does not exist"),
    (["push", "{tmp}/empty", "calib", "1.0.0"], "has no files"),
    (["push", "{other}", "calib", "1.0.0"], "exists already with other content"),
    (["pull", "calib", "^9"], "no version of 'calib' matches '^9' (have 1.0.0)"),
    (["pull", "calib", ">>1"], "invalid version range '>>1'"),
    (["pull", "nope"], "no release named 'nope'"),
    (["show", "calib", "1.x.y"], "invalid version range"),
])
def test_bad_input_is_one_line_and_changes_nothing(store: str, tmp_path: Path, args, text) -> None:
    src = make_tree(tmp_path / "src", {"f": b"1"})
    other = make_tree(tmp_path / "other", {"f": b"2"})
    (tmp_path / "empty").mkdir()
    assert run("-a", store, "push", str(src), "calib", "1.0.0").returncode == 0
    before = snapshot(Path(store))
    args = [a.format(src=src, tmp=tmp_path, other=other) for a in args]
    one_line_error(run("-a", store, *args), 1, text)
    assert snapshot(Path(store)) == before


def test_locations_that_are_not_archives(tmp_path: Path, sample_folder: Path) -> None:
    (tmp_path / "plain").mkdir()
    one_line_error(run("-a", str(tmp_path / "plain"), "push", str(sample_folder), "calib", "1.0.0"), 1,
                   f"{tmp_path / 'plain'} is not an archive (create one with: archive init")
    assert list((tmp_path / "plain").iterdir()) == []
    one_line_error(run("-a", str(tmp_path / "missing"), "ls"), 1, "is not an archive")
    assert not (tmp_path / "missing").exists()
    one_line_error(run("-a", "nfs://host/x", "ls"), 1, "unsupported archive location")
    leaky = run("-a", "gopher://ann:hunter2@host/x", "ls")
    one_line_error(leaky, 1, "'gopher://ann:***@host/x': use a folder path or a file://, ftp://, ftps://, http://, https://,"
                   " s3://, sftp://, webdav://, webdavs:// URL")
    assert "hunter2" not in leaky.stderr


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    result = run("-v", "-a", str(tmp_path / "missing"), "ls")
    assert result.returncode == 1 and "Traceback" in result.stderr and "archive: error:" in result.stderr


def test_no_cache_pull(store: str, tmp_path: Path) -> None:
    """--no-cache needs --to; with it the files arrive and the cache holds no blob."""
    src = make_tree(tmp_path / "src", {"a.txt": b"alpha"})
    assert run("-a", store, "push", str(src), "calib", "1.0.0").returncode == 0
    usage = run("-a", store, "pull", "calib", "--no-cache")
    assert usage.returncode == 2 and usage.stderr.startswith("archive: error: --no-cache needs --to")
    one_line_error(run("-a", store, "pull", "calib", "--no-cache", "--to", str(tmp_path / "x"), "--link", "hard"), 1,
                   "a pull without the cache needs a destination folder and a link mode that makes independent")
    both = run("-a", store, "pull", "calib", "--no-cache", "--cache-large", "--to", str(tmp_path / "x"))
    assert both.returncode == 2 and "--no-cache and --cache-large contradict each other" in both.stderr
    assert not (tmp_path / "x").exists()
    pulled = run("-a", store, "pull", "calib", "--no-cache", "--to", str(tmp_path / "out"))
    assert pulled.returncode == 0 and (tmp_path / "out" / "a.txt").read_bytes() == b"alpha"
    assert not (Path(os.environ["ARCHIVE_CACHE_DIR"]) / "blobs").exists()


def test_usage_errors_exit_2(store: str) -> None:
    result = run("-a", store, "push")
    assert result.returncode == 2 and result.stderr.startswith("archive: error: ")
    assert run("frobnicate").returncode == 2
    bad_meta = run("-a", store, "push", ".", "calib", "1.0.0", "--meta", "novalue")
    assert bad_meta.returncode == 2 and "KEY=VALUE" in bad_meta.stderr


def test_help_and_version() -> None:
    assert run("--help").returncode == 0 and "push" in run("--help").stdout
    assert run("--version").stdout.startswith("archive, version")


def test_pull_refuses_to_overwrite_local_changes(store: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": b"release"})
    run("-a", store, "push", str(src), "calib", "1.0.0")
    out = make_tree(tmp_path / "out", {"a.txt": b"my edit"})
    one_line_error(run("-a", store, "pull", "calib", "--to", str(out)), 1, "a.txt")
    assert (out / "a.txt").read_bytes() == b"my edit"
    assert run("-a", store, "pull", "calib", "--to", str(out), "--force").returncode == 0
    assert (out / "a.txt").read_bytes() == b"release"


def test_sigint_exits_130(store: str, tmp_path: Path) -> None:
    """Ctrl-C during a pull: exit status 130, one line, no partial file in the destination."""
    import signal
    import time

    big = make_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(4 << 20) for i in range(40)})
    assert run("-a", store, "push", str(big), "big", "1.0.0").returncode == 0
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "archive", "-a", store, "-j", "1", "pull", "big", "--to", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not pull_has_begun(out) and proc.poll() is None:  # writing has begun
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.fail("the pull finished before the signal; make the data set bigger")
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "archive: interrupted"
    assert not out.exists() and staged_beside(out) == []  # a new folder, built aside: nothing left


def test_progress_bars_only_on_a_terminal(store: str, tmp_path: Path) -> None:
    """On a pseudo-terminal, push shows tqdm bars on stderr; through a pipe, nothing."""
    import fcntl
    import pty
    import struct
    import termios

    src = make_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(50_000) for i in range(4)})
    piped = run("-a", store, "push", str(src), "calib", "1.0.0")
    assert piped.returncode == 0 and piped.stderr == ""
    make_tree(src, {f"f{i}.bin": os.urandom(50_000) for i in range(4)})  # new content: uploaded again

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # rows, columns
    proc = subprocess.Popen([sys.executable, "-m", "archive", "-a", store, "push", str(src), "calib", "1.1.0"],
                            stdout=subprocess.PIPE, stderr=secondary, text=True)
    os.close(secondary)
    out, _ = proc.communicate(timeout=60)
    shown = drain(primary)
    assert proc.returncode == 0 and out.startswith("published calib 1.1.0")
    assert b"uploading" in shown and b"195k" in shown and b"0/4 files" in shown
    assert re.search(rb"uploaded 195\.3 KiB in [\d.]+ s", shown)


def drain(primary: int) -> bytes:
    """Everything left to read on a pseudo-terminal whose other side closed; then close it."""
    shown = b""
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: every writer is gone
            break
        if not data:
            break
        shown += data
    os.close(primary)
    return shown
