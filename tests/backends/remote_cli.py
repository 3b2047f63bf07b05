"""CLI checks shared by the tests of the remote backends that write (WebDAV, FTP).

Each function drives ``python -m archive`` as a subprocess against a location served by a real
server, and looks at the served folder (``store``, the archive's folder on the server's disk) to
see what the storage holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from archive import layout
from archive.hashing import BlobId
from tests.conftest import make_tree
from tests.test_publish import snapshot

REPO = Path(__file__).resolve().parents[2]
FILES = {"data/a.bin": os.urandom(300_000), "readme": b"hi\n", "with space & %.txt": b"quoted", "empty": b""}


def run(*args: str, home: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m archive --no-progress ARGS`` with no keyring and, if given, another ``$HOME``."""
    env = {**os.environ, "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring", "PYTHONPATH": str(REPO)}
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "archive", "--no-progress", *args], env=env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout, cwd=REPO)


def one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.startswith("archive: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def check_cli_round_trip(url: str, store: Path, tmp_path: Path) -> None:
    """init, push, ls, show, pull, verify --full and gc through the CLI, all against ``url``."""
    src = make_tree(tmp_path / "src", FILES)
    assert run("init", url).returncode == 0
    for version in ("1.0.0", "1.1.0"):
        pushed = run("-a", url, "push", str(src), "calib", version, "-m", f"v{version}")
        assert pushed.returncode == 0, pushed.stderr
    assert run("-a", url, "ls").stdout.split() == ["calib"]
    assert [line.split()[0] for line in run("-a", url, "ls", "calib").stdout.splitlines()] == ["1.1.0", "1.0.0"]
    shown = run("-a", url, "show", "calib", "<1.1")
    assert shown.returncode == 0 and shown.stdout.splitlines()[0] == "calib 1.0.0", shown.stdout + shown.stderr
    assert "data/a.bin" in shown.stdout
    pulled = run("-a", url, "pull", "calib", "^1", "--to", str(tmp_path / "out"))
    assert pulled.returncode == 0, pulled.stderr
    assert snapshot(tmp_path / "out") == FILES
    verify = run("-a", url, "verify", "--full")
    assert verify.returncode == 0 and "0 problem(s)" in verify.stdout, verify.stdout + verify.stderr
    left = list((store / layout.TMP_DIR).iterdir())
    assert left == [], left  # no temporary and no lock left behind
    check_cli_gc(url, store)


def check_cli_gc(url: str, store: Path) -> None:
    """gc removes an old unreferenced blob and an old temporary, keeps a young one and every
    referenced blob, and a full verify is clean afterwards."""
    old, young = b"orphan, old", b"orphan, young"
    for data, age in ((old, 3 * 86400), (young, 0)):
        blob = store / layout.blob_key(BlobId.of_bytes(data))
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        os.utime(blob, (time.time() - age, time.time() - age))
    stale = store / layout.TMP_DIR / "0123abcd.part"
    stale.write_bytes(b"left by a killed push")
    os.utime(stale, (time.time() - 3 * 86400,) * 2)
    before = len(files_of(store / layout.BLOBS_DIR))
    collected = run("-a", url, "gc")
    assert collected.returncode == 0, collected.stderr
    assert f"removed {layout.blob_key(BlobId.of_bytes(old))}" in collected.stdout, collected.stdout
    assert f"removed {layout.TMP_DIR}/0123abcd.part" in collected.stdout, collected.stdout
    assert not stale.exists() and (store / layout.blob_key(BlobId.of_bytes(young))).exists()
    assert len(files_of(store / layout.BLOBS_DIR)) == before - 1
    verify = run("-a", url, "verify", "--full")
    assert verify.returncode == 0 and "0 problem(s)" in verify.stdout, verify.stdout + verify.stderr


def check_racing_pushes(url: str, tmp_path: Path, racers: int = 4) -> None:
    """Pushes of one version from separate processes at once: exactly one publishes it, the
    others are refused in one line, and the release is the winner's."""
    assert run("init", url).returncode == 0
    sources = [make_tree(tmp_path / f"src{i}", {"who": f"pusher {i}".encode()}) for i in range(racers)]
    env = {**os.environ, "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "archive", "--no-progress", "-a", url, "push", str(src),
                               "race", "1.0.0"], env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO) for src in sources]
    results = [(proc.wait(120), proc.stderr.read()) for proc in procs]
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()
    winners = [i for i, (code, _) in enumerate(results) if code == 0]
    assert len(winners) == 1, results
    for code, err in results:
        assert code == 0 or ("exists already" in err and err.count("\n") == 1), err
    out = run("-a", url, "pull", "race", "1.0.0", "--to", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "who").read_bytes() == f"pusher {winners[0]}".encode()


def check_password_never_shown(good_url: str, bad_url: str, password: str, tmp_path: Path) -> None:
    """A wrong password is one line; with -vv neither the wrong nor the right one shows."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    wrong = run("-vv", "-a", bad_url, "ls", home=home)
    assert wrong.returncode == 1, wrong.stderr  # -vv shows a traceback, still without a password
    assert "archive: error: " in wrong.stderr and "refused" in wrong.stderr, wrong.stderr
    assert "wrong-pw" not in wrong.stdout + wrong.stderr
    one_line_error(run("-a", bad_url, "ls", home=home), "refused")
    src = make_tree(tmp_path / "pw-src", {"f": b"1"})
    for args in (("init", good_url), ("-vv", "-a", good_url, "push", str(src), "pw", "1.0.0"),
                 ("-vv", "-a", good_url, "ls"), ("-vv", "-a", good_url, "pull", "pw", "--to", str(tmp_path / "pw"))):
        result = run(*args, home=home)
        assert result.returncode == 0, result.stderr
        assert password not in result.stdout + result.stderr, args
    left = [p for folder in (tmp_path / "pw", tmp_path / "user") for p in folder.rglob("*")
            if p.is_file() and password.encode() in p.read_bytes()]
    assert left == []  # nor in what a pull leaves, nor in the cache and what it remembers


def check_stale_lock(arc, store: Path, monkeypatch) -> None:
    """A lock folder left by a writer killed while it held it: a create-only write of that key
    waits :data:`~archive.backends.fsspec_base.LOCK_WAIT`, then fails in one line naming the
    folder to remove; once removed, the write goes through. Other keys are not held up."""
    import hashlib

    import pytest

    from archive.backends import fsspec_base
    from archive.errors import BackendError

    key = "releases/n/1.0.0"
    lock = f"{layout.TMP_DIR}/.lock-{hashlib.sha256(key.encode()).hexdigest()[:32]}"
    (store / lock).mkdir(parents=True)
    monkeypatch.setattr(fsspec_base, "LOCK_WAIT", 0.5)
    with pytest.raises(BackendError, match=f"holds the lock {lock} in .*: remove that folder$"):
        arc.write_key(key, [b"pointer"], exclusive=True)
    assert not arc.has_key(key) and arc.list_keys(layout.TMP_DIR) == []
    arc.write_key("releases/n/2.0.0", [b"other"], exclusive=True)
    (store / lock).rmdir()
    arc.write_key(key, [b"pointer"], exclusive=True)
    assert arc.read_key(key, 100) == b"pointer"


def check_missing_library(url: str, module: str, extra: str) -> None:
    """With ``module`` not installed, the location is refused in one line naming the extra."""
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            f"    def find_spec(self, name, path, target=None):\n"
            f"        if name.split('.')[0] == {module!r}: raise ModuleNotFoundError(name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from archive.cli import main\n"
            "sys.argv = ['archive', '-a', sys.argv[1], 'ls']\n"
            "main()\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code, url], env=env, text=True, capture_output=True,
                            timeout=60, cwd=REPO)
    one_line_error(result, f"pip install 'archive[{extra}]'")


def check_credentials_from_netrc_and_keyring(url_without_password: str, host: str, user: str, password: str,
                                             keyring_service: str, tmp_path: Path, monkeypatch) -> None:
    """No password in the URL: refused in one line; then ``~/.netrc`` is used; without it, the
    keyring's password for ``user@host`` (the URL names the user). Nothing shows a password."""
    import keyring
    import pytest

    import archive
    from archive.errors import AuthenticationError

    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(AuthenticationError, match="refused"):
        archive.get_interface(url_without_password, create=True)
    netrc = home / ".netrc"
    netrc.write_text(f"machine {host} login {user} password {password}\n")
    netrc.chmod(0o600)
    with archive.get_interface(url_without_password, create=True) as arc:
        arc.write_key("releases/n/1.0.0", [b"netrc"], exclusive=True)
        assert password not in arc.location + repr(arc)
    netrc.unlink()
    keyring.set_password(keyring_service, f"{user}@{host}", password)
    with archive.get_interface(url_without_password) as arc:
        assert arc.read_key("releases/n/1.0.0", 100) == b"netrc"


def check_malformed_locations(cases: list[tuple[str, str]]) -> None:
    """Each location is refused in one line that says why and never shows its password."""
    import re

    import pytest

    import archive
    from archive.errors import InvalidInputError

    for location, problem in cases:
        with pytest.raises(InvalidInputError, match=re.escape(problem)) as refused:
            archive.get_interface(location)
        assert "pw-secret" not in str(refused.value) and "\n" not in str(refused.value)
