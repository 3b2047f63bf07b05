"""Offline: resolve, pull and open answer from the cache's verified records and blobs."""

from __future__ import annotations

from pathlib import Path

import pytest

import archive
from archive.errors import NotFoundError
from tests.conftest import make_tree
from tests.test_cli import run


@pytest.fixture
def seen_store(tmp_path: Path) -> str:
    """An archive with calib 1.0.0 and 1.1.0 (both read once through the cache) and 2.0.0 (never read)."""
    location = str(tmp_path / "store")
    with archive.get_interface(location, create=True) as arc:
        for version in ("1.0.0", "1.1.0", "2.0.0"):
            arc.publish(make_tree(tmp_path / version, {"gains.csv": version.encode() * 100}), "calib", version)
    for version in ("1.0.0", "1.1.0"):
        assert run("-a", location, "pull", "calib", version).returncode == 0
    return location


def test_the_archive_moved_away_resolves_from_the_cache(seen_store: str, tmp_path: Path) -> None:
    Path(seen_store).rename(tmp_path / "elsewhere")
    result = run("-a", seen_store, "pull", "calib", "^1", "--to", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "gains.csv").read_bytes() == b"1.1.0" * 100
    offline_lines = [line for line in result.stderr.splitlines() if "offline" in line]
    assert offline_lines == [f"archive: warning: offline (no archive at {seen_store} now): answering from what"
                             " the cache holds"]
    with archive.get_interface(seen_store) as arc:
        assert arc.resolve("calib", "~1.0").version == "1.0.0"
        with arc.open("calib", "gains.csv", "1.0.0") as stream:
            assert stream.read() == b"1.0.0" * 100


def test_a_version_never_seen_fails_in_one_clear_line(seen_store: str, tmp_path: Path) -> None:
    Path(seen_store).rename(tmp_path / "elsewhere")
    result = run("-a", seen_store, "pull", "calib", "^2")
    assert result.returncode == 1
    error = result.stderr.splitlines()[-1]
    assert error.startswith("archive: error: offline: no version of 'calib' matches '^2' (have 1.1.0, 1.0.0)")
    assert "the cache knows only releases read before" in error and "Traceback" not in result.stderr


def test_archive_offline_never_touches_the_archive(seen_store: str, tmp_path: Path) -> None:
    with archive.get_interface(seen_store) as arc:
        arc.publish(make_tree(tmp_path / "new", {"x": b"x"}), "calib", "1.2.0")  # not seen by the cache
    result = run("-a", seen_store, "show", "calib", "^1", env={"ARCHIVE_OFFLINE": "1"})
    assert result.returncode == 0 and result.stdout.startswith("calib 1.1.0"), result.stderr
    assert "offline (ARCHIVE_OFFLINE is set)" in result.stderr  # 1.2.0 is in the archive, unknown to the cache


def test_nothing_known_of_an_archive_is_one_line(tmp_path: Path) -> None:
    result = run("-a", str(tmp_path / "never"), "ls", env={"ARCHIVE_OFFLINE": "1"})
    assert result.returncode == 1 and result.stderr == (
        f"archive: error: offline (ARCHIVE_OFFLINE is set): the cache holds nothing of {tmp_path / 'never'}\n")
    with pytest.raises(archive.NotAnArchiveError):  # not offline: a missing archive is what it was
        archive.get_interface(tmp_path / "never")


def test_a_blob_never_fetched_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    location = str(tmp_path / "store")
    with archive.get_interface(location, create=True) as arc:
        arc.publish(make_tree(tmp_path / "src", {"a": b"a" * 10, "b": b"b" * 10}), "calib", "1.0.0")
    with archive.get_interface(location) as arc:
        arc.resolve("calib")  # the record is kept, no blob is fetched
    monkeypatch.setenv("ARCHIVE_OFFLINE", "1")
    with archive.get_interface(location) as arc:
        with pytest.raises(NotFoundError, match="offline: the cache does not hold blob"):
            arc.download("calib", "1", tmp_path / "out")


def test_a_record_another_writer_stored_keeps_its_id_and_bytes(tmp_path: Path) -> None:
    """A record in canonical JSON that this version would encode otherwise (an explicit
    ``"executable": false``) is known by the id it is stored under, and the cache keeps its
    very bytes: offline, it still resolves, with that id."""
    from archive import layout
    from archive.hashing import BlobId
    from archive.records import RECORD_FORMAT, canonical_json

    location = str(tmp_path / "store")
    with archive.get_interface(location, create=True) as arc:
        content = b"gain 1.5\n"
        blob = BlobId.of_bytes(content)
        arc.write_key(layout.blob_key(blob), [content])
        record = canonical_json({"format": RECORD_FORMAT, "name": "calib", "version": "1.0.0",
                                 "created": "2020-01-02T03:04:05Z", "metadata": {},
                                 "files": {"gains.csv": {"blob": str(blob), "size": len(content),
                                                         "executable": False}}})
        stored = BlobId.of_bytes(record)
        arc.write_key(layout.blob_key(stored), [record])
        arc.write_key(layout.release_key("calib", "1.0.0"), [f"{stored}\n".encode()], exclusive=True)
        release = arc.get_release("calib", "1.0.0")
        assert release.to_bytes() != record  # the premise: encoded again, it would hash otherwise
        assert release.record_id == stored
    assert run("-a", location, "pull", "calib", "1.0.0", "--to", str(tmp_path / "out")).returncode == 0
    Path(location).rename(tmp_path / "elsewhere")
    result = run("-a", location, "show", "calib", "1.0.0", env={"ARCHIVE_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert f"  record   {stored}\n" in result.stdout
