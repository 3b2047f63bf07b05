"""What the ``archive`` command prints, where, and with which exit status (issue #10).

Every test runs the real command in a subprocess (see :func:`tests.test_cli.run`).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import archive
import archive.errors
from tests.conftest import make_tree, pull_has_begun, staged_beside
from tests.test_cli import drain, one_line_error, run
from tests.test_publish import snapshot

ESC_TITLE = "\x1b]0;pwned\x07"      # sets the window title
CSI_8BIT = "\u009b2J"                # C1 CSI: clears the screen on 8-bit terminals
RLO = "\u202e"                       # right-to-left override: "txt.exe" reads "exe.txt"
#: What must never reach a terminal raw: C0 (but line ends), DEL, C1, bidi controls.
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
def store(tmp_path: Path) -> str:
    location = str(tmp_path / "store")
    assert run("init", location).returncode == 0
    return location


def raw_controls(text: str) -> list[str]:
    """The terminal-dangerous code points in ``text``, line ends aside."""
    return UNSAFE.findall(text)


# --- 1. escaping -------------------------------------------------------------------------------

def test_metadata_and_paths_are_escaped_in_show(store: str, tmp_path: Path) -> None:
    message = f"hi{ESC_TITLE}{CSI_8BIT}\x7f{RLO}"
    src = make_tree(tmp_path / "src", {"plain.txt": b"x"})
    pushed = run("-a", store, "push", str(src), "calib", "1.0.0", "-m", message, "--meta", f"k{RLO}=v\x1b[2J")
    assert pushed.returncode == 0
    shown = run("-a", store, "show", "calib")
    assert shown.returncode == 0 and raw_controls(shown.stdout) == []
    assert "hi\\x1b]0;pwned\\x07\\x9b2J\\x7f\\u202e" in shown.stdout and "v\\x1b[2J" in shown.stdout


def test_json_escapes_del_c1_and_bidi_and_stays_equal(store: str, tmp_path: Path) -> None:
    message = f"hi{ESC_TITLE}{CSI_8BIT}\x7f{RLO} ünïcode"
    src = make_tree(tmp_path / "src", {"plain.txt": b"x"})
    assert run("-a", store, "push", str(src), "calib", "1.0.0", "-m", message).returncode == 0
    shown = run("-a", store, "show", "calib", "--json")
    assert shown.returncode == 0 and raw_controls(shown.stdout) == []
    assert json.loads(shown.stdout)["metadata"]["message"] == message
    assert "ünïcode" in shown.stdout  # readable text stays readable


def test_file_names_never_reach_the_terminal_raw(store: str, tmp_path: Path) -> None:
    """A file name with a C1 control or a bidi override: published and shown escaped, or
    refused with an escaped one-line error; raw, never."""
    src = make_tree(tmp_path / "src", {f"evil{CSI_8BIT}{RLO}txt.exe": b"x"})
    pushed = run("-a", store, "push", str(src), "calib", "1.0.0")
    assert raw_controls(pushed.stdout + pushed.stderr) == []
    if pushed.returncode == 0:
        shown = run("-a", store, "show", "calib")
        assert raw_controls(shown.stdout) == [] and "evil\\x9b2J\\u202etxt.exe" in shown.stdout


def test_error_messages_escape_what_they_quote(tmp_path: Path) -> None:
    location = str(tmp_path / f"no{ESC_TITLE}where")
    result = run("-a", location, "ls")
    one_line_error(result, 1, "is not an archive")
    assert raw_controls(result.stderr) == [] and "no\\x1b]0;pwned\\x07where" in result.stderr
    usage = run(f"frob{ESC_TITLE}")
    assert usage.returncode == 2 and raw_controls(usage.stderr) == []


def test_gc_escapes_the_keys_it_removes(store: str) -> None:
    junk = Path(store) / "tmp" / f"junk{ESC_TITLE}.part"
    junk.parent.mkdir(exist_ok=True)
    junk.write_bytes(b"x")
    result = run("-a", store, "gc", "--grace", "0", "--dry-run")
    assert result.returncode == 0 and raw_controls(result.stdout) == [], result
    assert "junk\\x1b]0;pwned\\x07.part" in result.stdout


# --- 2. exceptions -----------------------------------------------------------------------------

def test_every_archive_error_is_public() -> None:
    """Each ArchiveError subclass of archive.errors is importable from archive and in __all__."""
    classes = [c for _, c in inspect.getmembers(archive.errors, inspect.isclass) if issubclass(c, archive.ArchiveError)]
    assert len(classes) > 15
    for cls in classes:
        assert getattr(archive, cls.__name__) is cls and cls.__name__ in archive.__all__
    assert {"DestinationConflictError", "StorageFullError"} <= set(archive.__all__)


# --- 3. output for people and for scripts --------------------------------------------------------

def test_bare_archive_prints_help_on_stdout() -> None:
    result = run()
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: archive") and "push" in result.stdout


def test_quiet_keeps_only_data_and_errors(store: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": b"alpha"})
    assert run("-q", "init", str(tmp_path / "other")).stdout == ""
    pushed = run("-q", "-a", store, "push", str(src), "calib", "1.0.0")
    assert pushed.returncode == 0 and pushed.stdout == "" and pushed.stderr == ""
    assert run("-q", "-a", store, "ls").stdout == "calib\n"
    assert run("-q", "-a", store, "show", "calib").stdout.startswith("calib 1.0.0")
    assert run("-q", "-a", store, "pull", "calib", "--to", str(tmp_path / "out")).stdout == f"{tmp_path / 'out'}\n"
    verified = run("-q", "-a", store, "verify")
    assert verified.returncode == 0 and verified.stdout == "" and verified.stderr == ""
    collected = run("-q", "-a", store, "gc", "--grace", "0")
    assert collected.returncode == 0 and collected.stdout == ""
    one_line_error(run("-q", "-a", store, "show", "nope"), 1, "no release named 'nope'")


def test_usage_errors_point_at_the_command_help(store: str) -> None:
    result = run("-a", store, "push", ".", "calib", "1.0.0", "--meta")
    assert result.returncode == 2 and result.stderr.splitlines() == [
        "archive: error: Option '--meta' requires an argument.", "Try 'archive push --help'."]


def test_ls_of_an_unknown_name_is_an_error(store: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": b"alpha"})
    assert run("-a", store, "push", str(src), "calib", "1.0.0").returncode == 0
    result = run("-a", store, "ls", "nope")
    one_line_error(result, 1, "no release named 'nope'")
    assert result.stdout == ""
    one_line_error(run("-a", store, "ls", ""), 1, "invalid release name ''")  # not the list of names


def test_verify_of_nothing_is_an_error(store: str, tmp_path: Path) -> None:
    """A misspelt name or a range that matches nothing used to verify 0 releases and pass."""
    src = make_tree(tmp_path / "src", {"a.txt": b"alpha"})
    assert run("-a", store, "push", str(src), "calib", "1.0.0").returncode == 0
    one_line_error(run("-a", store, "verify", "nope"), 1, "no release named 'nope'")
    one_line_error(run("-a", store, "verify", "calib", "^9"), 1, "no version of 'calib' matches '^9' (have 1.0.0)")
    one_line_error(run("-a", store, "verify", ""), 1, "invalid release name ''")
    assert run("-a", store, "verify", "calib", "^1").stdout.startswith("verified 1 releases")


def test_closed_pipe_ends_quietly(store: str, tmp_path: Path) -> None:
    """`archive show | head -1` with more output than a pipe holds: status 0, nothing on stderr."""
    src = make_tree(tmp_path / "src", {f"{'long-file-name-' * 4}{i:05}.txt": b"x" for i in range(4000)})
    assert run("-a", store, "push", str(src), "calib", "1.0.0").returncode == 0
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    for command, unbuffered in [("show calib", ""), ("show calib", "1"), ("show calib --json", "")]:
        shell = f"{sys.executable} -m archive -a {store} {command} | head -1"
        result = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True,
                                timeout=60, env={**environ, **({"PYTHONUNBUFFERED": "1"} if unbuffered else {})})
        assert result.returncode == 0 and result.stderr == "", result
        assert result.stdout.count("\n") == 1


def test_verify_problems_go_to_stderr(store: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": b"alpha"})
    assert run("-a", store, "push", str(src), "calib", "1.0.0").returncode == 0
    for blob in (Path(store) / "blobs").rglob("*"):
        if blob.is_file() and blob.stat().st_size == 5:
            blob.chmod(0o644)
            blob.write_bytes(b"ALPHA")
    result = run("-a", store, "verify", "--full")
    assert result.returncode == 1
    assert result.stdout.startswith("verified 1 releases") and result.stdout.count("\n") == 1
    assert result.stderr.startswith("archive: error: blob ") and "error:" not in result.stdout


# --- 5. progress -------------------------------------------------------------------------------

#: tqdm reads defaults from TQDM_* variables: draw every update, so the test sees each chunk.
EVERY_UPDATE = {"TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"}
BIG = 20 << 20


def bar_counts(stderr: str, label: str) -> list[str]:
    """The byte counts a bar labelled ``label`` showed while its one file was not done yet."""
    shown = re.findall(rf"{label}:.*?\| *([\d.]+[kMG]?)/20\.0M \[[^\]]*0/1 files\]", stderr)
    return sorted(set(shown) - {"0", "0.00"})


@pytest.mark.parametrize("phase, verb", [("uploading", "uploaded"), ("hashing", "hashed"), ("sized", "hashed"),
                                          ("downloading", "downloaded"), ("writing", "wrote"),
                                          ("verifying", "verified")])
def test_progress_counts_bytes_within_a_file(store: str, tmp_path: Path, phase: str, verb: str) -> None:
    """Each phase has its bar, which moves during a single 20 MiB file, and a final line with
    time and throughput (shown because of --progress, although stderr is a pipe)."""
    src = make_tree(tmp_path / "src", {"big.bin": os.urandom(BIG)})
    fresh = {**EVERY_UPDATE, "ARCHIVE_CACHE_DIR": str(tmp_path / "fresh-cache")}  # no stat cache: hash again
    commands = {
        "uploading": ["push", str(src), "calib", "1.0.0"],
        "hashing": ["push", str(src), "calib", "1.0.0"],  # again: compared by hash, uploads nothing
        "sized": ["push", str(src), "calib", "1.0.1"],  # sizes as in 1.0.0: hashed first, found stored
        "downloading": ["pull", "calib", "--to", str(tmp_path / "out"), "--link", "hard"],
        "writing": ["pull", "calib", "--to", str(tmp_path / "out"), "--link", "copy"],
        "verifying": ["verify", "--full"],
    }
    if phase != "uploading":
        assert run("-a", store, "push", str(src), "calib", "1.0.0").returncode == 0
    result = run("-a", store, "--progress", *commands[phase], env=fresh)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(bar_counts(result.stderr, "hashing" if phase == "sized" else phase)) >= 3, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1].split("\r")[-1]
    assert re.search(rf"(^|; ){verb} 20\.0 MiB in [\d.]+ s \([\d.]+ [KMG]iB/s\)(;|$)", last), last


def test_no_progress_no_final_line(store: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.bin": os.urandom(1 << 20)})
    result = run("-a", store, "push", str(src), "calib", "1.0.0")
    assert result.returncode == 0 and result.stderr == ""


# --- 6. numbers --------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["gc", "--grace", "nan"], ["gc", "--grace", "NaN"], ["gc", "--grace", "inf"], ["gc", "--grace", "-inf"],
    ["gc", "--grace", "-1"], ["gc", "--grace", "1e300"], ["gc", "--grace", "twelve"],
    ["-j", "0", "ls"], ["-j", "-3", "ls"], ["-j", "100000", "ls"], ["-j", "nan", "ls"], ["-j", "1e3", "ls"],
])
def test_bad_numbers_are_usage_errors(store: str, args: list[str]) -> None:
    before = snapshot(Path(store))
    result = run("-a", store, *args)
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.startswith("archive: error: Invalid value for") and "Traceback" not in result.stderr
    assert snapshot(Path(store)) == before


def test_gc_grace_nan_keeps_young_garbage(store: str) -> None:
    """The harm of nan: it compared like 0 and removed what a publish in flight had just written."""
    junk = Path(store) / "tmp" / "in-flight.part"
    junk.parent.mkdir(exist_ok=True)
    junk.write_bytes(b"x")
    assert run("-a", store, "gc", "--grace", "nan").returncode == 2
    assert junk.exists()


# --- 4. interrupts -----------------------------------------------------------------------------

def screen_lines(output: bytes) -> list[str]:
    """What a terminal shows for ``output``: each line as carriage returns and erase-line
    (``ESC [ K``) left it."""
    lines = []
    for raw in output.decode("utf-8", "replace").replace("\r\n", "\n").split("\n"):
        cells: list[str] = []
        column = 0
        for char in raw.replace("\x1b[K", "\0"):
            if char == "\r":
                column = 0
            elif char == "\0":
                del cells[column:]
            else:
                cells[column:column + 1] = [char]
                column += 1
        lines.append("".join(cells).rstrip())
    return [line for line in lines if line]


def _as_on_a_terminal() -> None:
    """The signal dispositions of a command typed in a terminal, whatever the test run inherited:
    under ``nohup`` SIGHUP is ignored, and the archive rightly keeps it ignored then."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_interrupt_cleans_up_and_leaves_a_clean_terminal(store: str, tmp_path: Path, signum: int, status: int) -> None:
    """SIGTERM behaves like Ctrl-C: the same cleanup (no partial file), one line, the bar erased;
    exit status 128 + the signal number."""
    import fcntl
    import pty
    import struct
    import termios

    big = make_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(4 << 20) for i in range(40)})
    assert run("-a", store, "push", str(big), "big", "1.0.0").returncode == 0
    out = tmp_path / "out"
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "archive", "-a", store, "-j", "1", "pull", "big", "--to", str(out),
                             "--link", "copy"], stdout=subprocess.PIPE, stderr=secondary,
                            env={**os.environ, "ARCHIVE_CACHE_DIR": str(tmp_path / "fresh-cache")},
                            preexec_fn=_as_on_a_terminal)
    os.close(secondary)
    shown = b""
    while b"writing" not in shown or not pull_has_begun(out):  # the bar is up, writing began
        assert proc.poll() is None, "the pull ended before the signal; make the data set bigger"
        shown += os.read(primary, 65536)
    proc.send_signal(signum)
    proc.communicate(timeout=60)
    shown += drain(primary)
    assert proc.returncode == status
    assert screen_lines(shown)[-1:] == ["archive: interrupted"], screen_lines(shown)[-3:]
    assert not out.exists() and staged_beside(out) == []  # a new folder, built aside: nothing left


def test_interrupt_stops_running_transfers(store: str, tmp_path: Path) -> None:
    """Ctrl-C during a parallel push stops the files being uploaded at their next chunk (they
    used to run to the end, minutes for large files over SSH) and leaves no temporary file."""
    block = os.urandom(1 << 20)
    src = make_tree(tmp_path / "src", {f"f{i}.bin": bytes([i]) + block * 128 for i in range(4)})
    proc = subprocess.Popen([sys.executable, "-m", "archive", "-a", store, "-j", "4", "--progress", "push", str(src),
                             "calib", "1.0.0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **EVERY_UPDATE})
    shown = b""
    while max(map(float, re.findall(rb"\| *([\d.]+)M/512M", shown)), default=0) < 40:  # all four are under way
        data = os.read(proc.stderr.fileno(), 65536)
        assert data, shown[-500:]
        shown += data
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.decode().split("\r")[-1].strip().endswith("archive: interrupted")
    stored = [p for p in (Path(store) / "blobs").rglob("*") if p.is_file()]
    assert len(stored) < 4, "the running uploads went on to the end"
    assert [p for p in Path(store).rglob("*") if p.is_file() and "tmp" in p.relative_to(store).parts] == []
    shutil.rmtree(src)  # half a GiB: pytest keeps the last runs' folders
    shutil.rmtree(store)


# --- 8. encodings ------------------------------------------------------------------------------

def test_output_in_an_encoding_without_the_characters(store: str, tmp_path: Path) -> None:
    """A Latin-1 terminal: names it cannot encode are escaped, not a UnicodeEncodeError traceback;
    the JSON stays valid and equal."""
    src = make_tree(tmp_path / "src", {"日本.txt": b"x"})
    assert run("-a", store, "push", str(src), "calib", "1.0.0", "-m", "é 日本 😀").returncode == 0
    latin1 = {"PYTHONIOENCODING": "latin-1"}
    shown = subprocess.run([sys.executable, "-m", "archive", "-a", store, "show", "calib"], capture_output=True,
                           env={**os.environ, **latin1}, timeout=60)
    assert shown.returncode == 0 and shown.stderr == b"", shown.stderr[-500:]
    assert "\\u65e5\\u672c.txt" in shown.stdout.decode("latin-1") and "é" in shown.stdout.decode("latin-1")
    as_json = subprocess.run([sys.executable, "-m", "archive", "-a", store, "show", "calib", "--json"],
                             capture_output=True, env={**os.environ, **latin1}, timeout=60)
    assert as_json.returncode == 0, as_json.stderr[-500:]
    assert json.loads(as_json.stdout.decode("latin-1"))["metadata"]["message"] == "é 日本 😀"


def test_library_warnings_read_like_the_cli_own(store: str, tmp_path: Path) -> None:
    """A warning logged by the library is `archive: warning: ...`, as verify's are; -q hides it."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "stat.sqlite").write_bytes(b"this is not a sqlite database" * 100)
    src = make_tree(tmp_path / "src", {"a.txt": b"a"})
    pushed = run("-a", store, "push", str(src), "calib", "1.0.0", env={"ARCHIVE_CACHE_DIR": str(cache)})
    assert pushed.returncode == 0
    assert re.match(r"archive: warning: stat cache .* unusable", pushed.stderr), pushed.stderr
    quiet = run("-q", "-a", store, "push", str(src), "calib", "1.0.0", env={"ARCHIVE_CACHE_DIR": str(cache)})
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_interrupted_is_exactly_one_line_on_a_pipe(store: str, tmp_path: Path) -> None:
    """No empty line before the message (click printed one on Ctrl-C)."""
    big = make_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(4 << 20) for i in range(40)})
    assert run("-a", store, "push", str(big), "big", "1.0.0").returncode == 0
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "archive", "-a", store, "-j", "1", "pull", "big", "--to", str(out),
                             "--link", "copy"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ARCHIVE_CACHE_DIR": str(tmp_path / "fresh-cache")})
    while not pull_has_begun(out):
        assert proc.poll() is None, "the pull ended before the signal; make the data set bigger"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "archive: interrupted\n"
    assert not out.exists() and staged_beside(out) == []  # a new folder, built aside: nothing left


def test_pull_escapes_the_folder_it_names(store: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": b"a"})
    assert run("-a", store, "push", str(src), "calib", "1.0.0").returncode == 0
    dest = tmp_path / "out\x1b]0;pwned\x07"
    result = run("-a", store, "pull", "calib", "--to", str(dest))
    assert result.returncode == 0 and (dest / "a.txt").read_bytes() == b"a"
    assert "\x1b" not in result.stdout + result.stderr and "\\x1b]0;pwned\\x07" in result.stdout
    assert "pulled calib 1.0.0 (range *)" in result.stderr
