"""End to end through the CLI: what a push records comes back on a pull, at the edges."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_tree
from tests.test_scan import deep_src  # noqa: F401 - the fixture


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True, timeout=300)


def remove_bottom_up(root: Path, depth: int) -> None:
    """shutil.rmtree recurses and fails 1,200 levels down."""
    for level in range(depth, 0, -1):
        folder = os.path.join(root, *["d"] * level)
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if not os.path.isdir(path):
                os.unlink(path)
        os.rmdir(folder)


def test_a_folder_1200_levels_deep_round_trips(tmp_path: Path, deep_src: str) -> None:  # noqa: F811
    store, out = str(tmp_path / "store"), tmp_path / "out"
    assert run("init", store).returncode == 0
    assert run("-a", store, "push", str(tmp_path / "src"), "deep", "1.0.0").returncode == 0
    pulled = run("-a", store, "pull", "deep", "^1", "--to", str(out))
    try:
        assert pulled.returncode == 0, pulled.stderr[-2000:]
        assert (out / deep_src).read_bytes() == (tmp_path / "src" / deep_src).read_bytes()
        assert (out / "top.txt").read_bytes() == (tmp_path / "src" / "top.txt").read_bytes()
    finally:
        if (out / "d").exists():
            remove_bottom_up(out, 1200)


def test_an_executable_stays_executable(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"run.sh": b"#!/bin/sh\necho ran\n", "data.txt": b"x"})
    (src / "run.sh").chmod(0o755)
    store, out = str(tmp_path / "store"), tmp_path / "out"
    run("init", store)
    assert run("-a", store, "push", str(src), "tool", "1.0.0").returncode == 0
    assert run("-a", store, "pull", "tool", "--to", str(out)).returncode == 0
    assert subprocess.run([str(out / "run.sh")], capture_output=True, text=True).stdout == "ran\n"
    assert not os.access(out / "data.txt", os.X_OK)
