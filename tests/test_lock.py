"""archive.lock: pins by record id, refused when tampered with, served from a mirror."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import archive
from archive.errors import IntegrityError, InvalidInputError
from tests.conftest import make_tree
from tests.test_cli import run


@pytest.fixture
def two_versions(folder_archive: archive.ArchiveInterface, tmp_path: Path) -> archive.ArchiveInterface:
    for version, text in (("1.0.0", b"one"), ("1.1.0", b"two")):
        folder_archive.publish(make_tree(tmp_path / version, {"gains.csv": text}), "calib", version)
    return folder_archive


def test_lock_pins_the_resolved_version_and_sync_brings_it_back(two_versions, tmp_path: Path) -> None:
    from archive.lock import make_lock, write_lock

    path = write_lock(make_lock(two_versions, ["calib@~1.0"]), tmp_path / "archive.lock")
    pins = archive.load_lock(path)
    assert [(e.name, e.range, e.version) for e in pins.entries] == [("calib", "~1.0", "1.0.0")]
    assert pins.entries[0].record == two_versions.get_release("calib", "1.0.0").record_id
    folders = two_versions.sync(path, tmp_path / "out")
    assert (folders["calib"] / "gains.csv").read_bytes() == b"one"


def test_a_tampered_record_id_is_refused_and_nothing_is_written(two_versions, tmp_path: Path) -> None:
    lock = tmp_path / "archive.lock"
    assert run("-a", two_versions.location, "lock", "calib@^1", "other@*", "-f", str(lock)).returncode == 1
    assert run("-a", two_versions.location, "lock", "calib@^1", "-f", str(lock)).returncode == 0
    real = two_versions.get_release("calib", "1.1.0").record_id
    lock.write_text(lock.read_text().replace(real.hexdigest, "0" * 64))
    result = run("sync", str(lock), "--to", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.startswith("archive: error: calib 1.1.0") and "lock pins 000000000000" in result.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(IntegrityError):
        two_versions.sync(lock, tmp_path / "out")


def test_a_lock_made_on_one_archive_syncs_from_a_mirror(two_versions, tmp_path: Path) -> None:
    lock = tmp_path / "archive.lock"
    assert run("-a", two_versions.location, "lock", "calib", "-f", str(lock)).returncode == 0
    mirror = str(tmp_path / "mirror")
    assert run("mirror", two_versions.location, mirror, "--create").returncode == 0
    shutil.rmtree(two_versions.location)
    result = run("-a", mirror, "sync", str(lock), "--to", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"calib\t{tmp_path / 'out' / 'calib'}\n"
    assert (tmp_path / "out" / "calib" / "gains.csv").read_bytes() == b"two"


def test_a_malformed_lock_is_one_line(tmp_path: Path) -> None:
    lock = tmp_path / "archive.lock"
    lock.write_text('lock-version = 1\n[[release]]\nname = "calib"\n')
    with pytest.raises(InvalidInputError, match="needs the strings"):
        archive.load_lock(lock)
    result = run("sync", str(lock))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "archive: error:" in run("sync", str(tmp_path / "missing.lock")).stderr


def test_quotes_and_control_characters_round_trip(tmp_path: Path) -> None:
    from archive.hashing import BlobId
    from archive.lock import Lock, LockEntry, write_lock

    entry = LockEntry("team/calib", '>=1 "x" \x7f\\ \t', "1.0.0", BlobId.of_bytes(b"x"), 'C:\\data "a" \u00e9')
    path = write_lock(Lock((entry,)), tmp_path / "archive.lock")
    assert archive.load_lock(path).entries == (entry,)
