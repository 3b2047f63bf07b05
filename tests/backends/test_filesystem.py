"""The folder backend against the shared contract, plus what only a folder can show."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import archive
from archive import layout
from archive.backends.filesystem import FileSystemArchive
from archive.errors import NotAnArchiveError, StorageFullError
from tests.backends.conformance import BackendContract


class TestFileSystemContract(BackendContract):
    @pytest.fixture
    def arc(self, tmp_path: Path):
        with archive.get_interface(tmp_path / "store", create=True) as arc:
            yield arc


def test_objects_are_stored_read_only(folder_archive: FileSystemArchive) -> None:
    folder_archive.write_key("blobs/sha256/aa/x", [b"data"])
    mode = os.stat(folder_archive.local_path("blobs/sha256/aa/x")).st_mode & 0o777
    assert mode & 0o222 == 0


def test_folder_without_marker_is_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAnArchiveError, match="archive init"):
        archive.get_interface(tmp_path / "plain")


def test_marker_names_the_format(folder_archive: FileSystemArchive) -> None:
    text = folder_archive.local_path(layout.MARKER_KEY).read_text()
    assert '"format":"archive"' in text and '"version":1' in text


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_disk_full_is_a_one_line_backend_error(folder_archive: FileSystemArchive, monkeypatch) -> None:
    import archive.backends.filesystem as fs

    real_open = os.open

    def open_full(path, flags, mode=0o777, **kw):
        if str(path).endswith(".part"):
            return real_open("/dev/full", os.O_WRONLY)
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(fs.os, "open", open_full)
    with pytest.raises(StorageFullError, match="no space left"):
        folder_archive.write_key("blobs/sha256/bb/y", [b"x" * 100_000])
