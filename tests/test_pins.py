"""Remembered record ids belong to one archive (its id in archive.json), not to a path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import archive
from archive import layout
from tests.conftest import make_tree


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True, timeout=120)


def test_recreated_archive_at_the_same_path_is_a_new_archive(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    src = make_tree(tmp_path / "src", {"a.txt": b"first"})
    assert run("init", store).returncode == 0
    assert run("-a", store, "push", str(src), "calib", "1.0.0").returncode == 0
    assert run("-a", store, "show", "calib").returncode == 0
    shutil.rmtree(store)
    (src / "a.txt").write_bytes(b"second")
    assert run("init", store).returncode == 0
    assert run("-a", store, "push", str(src), "calib", "1.0.0").returncode == 0
    shown = run("-a", store, "show", "calib")
    assert shown.returncode == 0, shown.stderr
    assert "calib 1.0.0" in shown.stdout


def test_a_replaced_record_in_the_same_archive_is_still_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with archive.get_interface(store, create=True) as arc:
        arc.publish(make_tree(tmp_path / "a", {"a.txt": b"first"}), "calib", "1.0.0", progress=False)
        arc.resolve("calib")  # remembered
    marker = (store / layout.MARKER_KEY).read_text()
    shutil.rmtree(store / "releases")
    with archive.get_interface(store) as arc:  # the same archive (same id), its release swapped
        arc.publish(make_tree(tmp_path / "b", {"a.txt": b"other"}), "calib", "1.0.0", progress=False)
    assert (store / layout.MARKER_KEY).read_text() == marker
    result = run("-a", str(store), "show", "calib")
    assert result.returncode == 1 and "calib 1.0.0" in result.stderr and "has changed" in result.stderr


def test_new_archives_have_an_id_and_old_ones_still_open(tmp_path: Path) -> None:
    with archive.get_interface(tmp_path / "new", create=True) as arc:
        marker = json.loads((tmp_path / "new" / layout.MARKER_KEY).read_text())
        assert len(marker["id"]) == 32 and arc.archive_id == marker["id"]
    old = tmp_path / "old"
    old.mkdir()
    (old / layout.MARKER_KEY).write_text('{"format":"archive","version":1}\n')
    with archive.get_interface(old) as arc:
        assert arc.archive_id is None and arc.names() == []
