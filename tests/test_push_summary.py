"""What push says: how much was new to the archive, and when a re-push changed nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import archive
from archive.publish import PublishStats
from tests.conftest import make_tree


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True, timeout=120)


def test_push_says_what_was_new_and_what_was_stored(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    run("init", store)
    src = make_tree(tmp_path / "src", {"a.bin": b"a" * 1000, "b.bin": b"b" * 3000, "copy-of-a.bin": b"a" * 1000})
    first = run("-a", store, "push", str(src), "calib", "1.0.0")
    assert first.returncode == 0, first.stderr
    assert "published calib 1.0.0: 3 files" in first.stdout
    assert "new: 2 files, 3.9 KiB; already stored: 1 file, 1000 B" in first.stdout

    again = run("-a", store, "push", str(src), "calib", "1.0.0")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("calib 1.0.0 exists already with the same content: nothing changed")

    (src / "b.bin").write_bytes(b"c" * 3000)
    second = run("-a", store, "push", str(src), "calib", "1.1.0")
    assert "new: 1 file, 2.9 KiB; already stored: 2 files, 2.0 KiB" in second.stdout, second.stdout


def test_publish_fills_in_stats(folder_archive, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"x": b"x" * 10, "y": b"y" * 20})
    stats = PublishStats()
    folder_archive.publish(src, "calib", "1.0.0", progress=False, stats=stats)
    assert (stats.files, stats.bytes, stats.uploaded_files, stats.uploaded_bytes, stats.unchanged) == (2, 30, 2, 30, False)
    again = PublishStats()
    folder_archive.publish(src, "calib", "2.0.0", progress=False, stats=again)
    assert (again.uploaded_files, again.uploaded_bytes) == (0, 0)
    assert isinstance(archive.get_interface(folder_archive.location), archive.ArchiveInterface)
