"""The FTP backend against a real pyftpdlib server (tests/ftpd.py), plain and FTPS: the shared
contract, the CLI end to end, create-only races, credentials, TLS.

pyftpdlib serves a temporary folder as the home of one user on 127.0.0.1; the suite arranges what
the storage holds in that folder directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

import archive
from archive.backends.ftp import FTPArchive
from tests.backends.conformance import BackendContract
from tests.ftpd import FtpServer, ftpd, ftpsd  # noqa: F401


class TestFTPContract(BackendContract):
    # What an FTP server does with a link, a FIFO or a device on its disk is its own setting,
    # invisible to a client (pyftpdlib follows links inside its root and reports them, and
    # FIFOs, as plain files). Every byte read is verified against its hash above the backend
    # anyway. So these storage-side checks are not the FTP backend's.
    test_a_link_in_place_of_an_object_is_never_followed = None
    test_a_link_in_place_of_a_folder_is_never_followed = None
    test_a_fifo_in_place_of_an_object_is_refused_without_blocking = None
    # pyftpdlib sends a name that is not UTF-8 with "?" in place of its bad bytes ("caf\xe9" is
    # listed as "caf?"), so no such name reaches a client to be skipped; the archive's own
    # names are ASCII, and the index code ignores names that are not release names.
    test_names_that_are_not_utf8_are_skipped_in_listings = None

    @pytest.fixture
    def arc(self, ftpd: FtpServer) -> Iterator[FTPArchive]:
        self._server = ftpd
        with archive.get_interface(ftpd.url("store"), create=True) as arc:
            assert isinstance(arc, FTPArchive)
            yield arc

    def on_disk(self, arc: archive.ArchiveInterface, key: str) -> Path:
        return Path(self._server.root, arc.root.lstrip("/"), *key.split("/"))  # type: ignore[attr-defined]
