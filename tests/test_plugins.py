"""Backends are found by URL scheme through the ``archive.backends`` entry-point group."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from tests.conftest import make_tree

PLUGIN = '''
from archive.backends.filesystem import FileSystemArchive


class DemoArchive(FileSystemArchive):
    """A third party's backend: a folder archive reached as demo://PATH."""

    @classmethod
    def from_location(cls, location):
        return cls(location.split("://", 1)[1])
'''


def install_plugin(root: Path, value: str = "demo_backend:DemoArchive") -> dict:
    """A distribution that registers ``demo://`` without touching the archive package, as pip
    would lay it out (a module and its .dist-info with entry_points.txt); the env to find it."""
    root.mkdir()
    (root / "demo_backend.py").write_text(PLUGIN)
    info = root / "demo_backend-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-backend\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[archive.backends]\ndemo = {value}\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_a_third_party_backend_is_found_by_its_scheme(tmp_path: Path) -> None:
    env = install_plugin(tmp_path / "site")
    store = f"demo://{tmp_path / 'store'}"
    src = make_tree(tmp_path / "src", {"a.txt": b"via a plugin"})
    assert run(env, "init", store).returncode == 0
    pushed = run(env, "-a", store, "push", str(src), "calib", "1.0.0")
    assert pushed.returncode == 0, pushed.stderr
    assert (tmp_path / "store" / "releases" / "calib" / "1.0.0").is_file()
    pulled = run(env, "-a", store, "pull", "calib", "--to", str(tmp_path / "out"))
    assert pulled.returncode == 0 and (tmp_path / "out" / "a.txt").read_bytes() == b"via a plugin"


def test_an_unknown_scheme_names_the_registered_ones(tmp_path: Path) -> None:
    env = install_plugin(tmp_path / "site")
    result = run(env, "-a", "nope://x/y", "ls")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "unsupported archive location 'nope://x/y'" in result.stderr and "demo://" in result.stderr


def test_a_broken_plugin_is_one_line(tmp_path: Path) -> None:
    env = install_plugin(tmp_path / "site", "demo_backend:Missing")
    result = run(env, "-a", f"demo://{tmp_path}", "ls")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "the backend registered for demo:// (demo_backend:Missing) cannot be loaded" in result.stderr


def test_the_built_in_backends_are_registered_the_same_way() -> None:
    registered = {ep.name: ep.value for ep in entry_points(group="archive.backends")}
    assert registered.get("file") == "archive.backends.filesystem:FileSystemArchive"
    assert registered.get("sftp") == "archive.backends.sftp:SFTPArchive"
    assert registered.get("https") == registered.get("http") == "archive.backends.http:HTTPArchive"
