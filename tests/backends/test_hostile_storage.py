"""Storage that someone else controls, through the command line, on the folder and SFTP backends.

A link, FIFO or name that is not UTF-8 inside an archive (made by hand, by another tool, or by
someone hostile) must never lead the archive outside its root, hang it, or crash it: it fails
in one line that names the thing, and nothing outside the archive is read, written or deleted.
Every command runs as a subprocess with a timeout, so a regression that hangs fails instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archive import layout
from archive.hashing import BlobId
from tests.conftest import make_tree
from tests.sshd import SSHServer

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 30


@pytest.fixture(params=["folder", "sftp"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """An archive location and the folder on this machine that holds it (for SFTP, on the
    server, which runs here): each test runs on the folder backend and on SFTP."""
    store = tmp_path / "store"
    if request.param == "folder":
        return str(store), store
    sshd: SSHServer = request.getfixturevalue("sshd")
    request.getfixturevalue("ssh_key_home")
    return sshd.url(store), store


@pytest.fixture
def published(where: tuple[str, Path], tmp_path: Path) -> tuple[str, Path]:
    """An archive holding ``calib 1.0.0`` (one file, ``a.txt``)."""
    location, _ = where
    assert cli("init", location).returncode == 0
    pushed = cli("-a", location, "push", str(make_tree(tmp_path / "src", {"a.txt": b"alpha"})), "calib", "1.0.0")
    assert pushed.returncode == 0, pushed.stderr
    return where


def test_gc_never_follows_a_linked_tmp(published: tuple[str, Path], tmp_path: Path) -> None:
    location, store = published
    victim = make_tree(tmp_path / "victim", {"thesis.tex": b"years of work", "old.part": b"x"})
    for path in victim.iterdir():
        os.utime(path, (1_000_000_000, 1_000_000_000))
    _replace_with_link(store / layout.TMP_DIR, victim)
    result = cli("-a", location, "gc", "--grace", "0")
    one_line_error(result, "tmp is a symbolic link inside the archive; refusing to follow it")
    assert sorted(p.name for p in victim.iterdir()) == ["old.part", "thesis.tex"]


def test_push_never_writes_through_a_linked_release_folder(published: tuple[str, Path], tmp_path: Path) -> None:
    location, store = published
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (store / layout.RELEASES_DIR / "other").symlink_to(elsewhere)
    src = make_tree(tmp_path / "src2", {"b.txt": b"beta"})
    result = cli("-a", location, "push", str(src), "other", "1.0.0")
    one_line_error(result, "releases/other is a symbolic link inside the archive; refusing to follow it")
    assert list(elsewhere.iterdir()) == []


def test_a_linked_blob_is_never_read(published: tuple[str, Path], tmp_path: Path) -> None:
    """A blob that is a link to a file of the same content elsewhere: refused, not copied."""
    location, store = published
    blob = store / layout.blob_key(BlobId.of_bytes(b"alpha"))
    outside = tmp_path / "outside"
    outside.write_bytes(b"alpha")
    blob.unlink()
    blob.symlink_to(outside)
    result = cli("-a", location, "pull", "calib", "--to", str(tmp_path / "out"))
    one_line_error(result, f"{layout.blob_key(BlobId.of_bytes(b'alpha'))} is a symbolic link inside the archive")
    assert not (tmp_path / "out" / "a.txt").exists()


@pytest.mark.parametrize("which", ["marker", "pointer", "blob", "record"])
def test_a_fifo_fails_in_one_line_instead_of_hanging(published: tuple[str, Path], tmp_path: Path,
                                                     which: str) -> None:
    location, store = published
    record = (store / layout.release_key("calib", "1.0.0")).read_text().strip()
    key = {"marker": layout.MARKER_KEY, "pointer": layout.release_key("calib", "1.0.0"),
           "blob": layout.blob_key(BlobId.of_bytes(b"alpha")),
           "record": layout.blob_key(BlobId.parse(record))}[which]
    (store / key).unlink()
    os.mkfifo(store / key)
    commands = {"marker": [["ls"], ["show", "calib"]], "pointer": [["show", "calib"]], "record": [["show", "calib"]],
                "blob": [["pull", "calib", "--to", str(tmp_path / "out")],
                         ["pull", "calib", "--link", "hard", "--to", str(tmp_path / "out1")],
                         ["pull", "calib", "--no-cache", "--to", str(tmp_path / "out2")]]}[which]
    for command in commands:
        one_line_error(cli("-a", location, *command), f"{key} is a FIFO inside the archive, not a file; refusing to use it")


def test_names_that_are_not_utf8_are_skipped(published: tuple[str, Path], tmp_path: Path) -> None:
    location, store = published
    os.mkdir(os.fsencode(store / layout.RELEASES_DIR) + b"/caf\xe9")
    stale = os.fsencode(store / layout.TMP_DIR) + b"/\xff.part"
    Path(os.fsdecode(stale)).parent.mkdir(exist_ok=True)
    with open(stale, "wb") as stream:
        stream.write(b"left over")
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    listed = cli("-a", location, "ls")
    assert (listed.returncode, listed.stdout.split()) == (0, ["calib"]), listed.stderr
    assert "Traceback" not in listed.stderr
    pulled = cli("-a", location, "pull", "calib", "--to", str(tmp_path / "out"))
    assert pulled.returncode == 0, pulled.stderr
    assert cli("-a", location, "push", str(make_tree(tmp_path / "s", {"b": b"b"})), "more", "1.0.0").returncode == 0
    collected = cli("-v", "-a", location, "gc", "--grace", "0")
    assert collected.returncode == 0, collected.stderr
    assert "skipping a name that is not UTF-8" in collected.stderr
    assert os.path.exists(stale)  # not ours to remove: the archive never writes such a name


def test_the_root_itself_may_be_a_link(where: tuple[str, Path], tmp_path: Path) -> None:
    location, store = where
    real = tmp_path / "mnt" / "share"
    real.mkdir(parents=True)
    store.symlink_to(real)
    assert cli("init", location).returncode == 0
    src = make_tree(tmp_path / "src", {"a.txt": b"alpha"})
    assert cli("-a", location, "push", str(src), "calib", "1.0.0").returncode == 0
    assert cli("-a", location, "ls").stdout.split() == ["calib"]
    assert (real / layout.release_key("calib", "1.0.0")).is_file()


# ------------------------------------------------------------------ helpers
def cli(*args: str) -> subprocess.CompletedProcess:
    """``archive ARGS`` as a subprocess that must end within :data:`TIMEOUT` seconds."""
    env = {**os.environ, "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring", "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "archive", "--no-progress", *args], env=env, text=True,
                            capture_output=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT, cwd=REPO)
    assert time.monotonic() - started < TIMEOUT
    return result


def one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("archive: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr, result.stderr


def _replace_with_link(folder: Path, target: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.symlink_to(target)


def test_a_link_in_tmp_is_never_resumed_into(sshd: SSHServer, ssh_key_home: Path, tmp_path: Path) -> None:
    """An SFTP upload resumes a partial blob it finds in ``tmp/``: one that is a link to a
    user's file must not be claimed (it was read, cut and overwritten through the link)."""
    import archive

    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"v" * (2 << 20))
    os.utime(victim, (1_000_000_000, 1_000_000_000))
    data = b"d" * (2 << 20)
    blob = BlobId.of_bytes(data)
    store = tmp_path / "store"
    with archive.get_interface(sshd.url(store), create=True) as arc:
        (store / layout.TMP_DIR / f"{blob.hexdigest}.{'0' * 32}.part").symlink_to(victim)
        arc.write_key(layout.blob_key(blob), [data])
        assert arc.read_key(layout.blob_key(blob), len(data)) == data
    assert victim.read_bytes() == b"v" * (2 << 20)
    assert not (store / layout.blob_key(blob)).is_symlink()
