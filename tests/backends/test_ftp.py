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
from archive.backends.ftp import KEYRING_SERVICE, FTPArchive
from tests.backends.conformance import BackendContract
from tests.backends.remote_cli import (check_cli_round_trip, check_password_never_shown, check_racing_pushes,
                                        check_credentials_from_netrc_and_keyring, check_malformed_locations,
                                        check_missing_library, check_stale_lock, one_line_error, run)
from tests.ftpd import PASSWORD, USER, FtpServer, ftpd, ftpsd  # noqa: F401


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


# ------------------------------------------------------------------ the CLI
def test_cli_round_trip(ftpd: FtpServer, tmp_path: Path) -> None:
    check_cli_round_trip(ftpd.url("store"), ftpd.root / "store", tmp_path)


def test_racing_pushes_of_one_version_have_one_winner(ftpd: FtpServer, tmp_path: Path) -> None:
    check_racing_pushes(ftpd.url("store"), tmp_path)


def test_wrong_password_is_one_line_and_no_password_shows(ftpd: FtpServer, tmp_path: Path) -> None:
    check_password_never_shown(ftpd.url("store"), ftpd.url("store", password="wrong-pw"), PASSWORD, tmp_path)


# ------------------------------------------------------------------ FTPS
def test_ftps_round_trip_with_a_private_ca(ftpsd: tuple[FtpServer, Path], tmp_path: Path) -> None:
    server, ca_file = ftpsd
    url = server.url("store", query=f"ca_bundle={ca_file}")
    assert url.startswith("ftps://")
    check_cli_round_trip(url, server.root / "store", tmp_path)  # the server requires TLS on every connection


def test_ftps_without_the_ca_is_refused_in_one_line(ftpsd: tuple[FtpServer, Path], tmp_path: Path) -> None:
    server, _ = ftpsd
    result = run("init", server.url("store"), home=tmp_path)
    one_line_error(result, "TLS failed")
    assert "ca_bundle" in result.stderr and PASSWORD not in result.stderr
    assert not (server.root / "store").exists()  # nothing was sent before the certificate was checked


def test_plain_ftp_to_a_server_that_requires_tls_is_one_line(ftpsd: tuple[FtpServer, Path], tmp_path: Path) -> None:
    server, _ = ftpsd
    plain = server.url("store").replace("ftps://", "ftp://", 1)
    result = run("init", plain, home=tmp_path)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert PASSWORD not in result.stderr


# ------------------------------------------------------------------ create-only writes
def test_a_stale_lock_fails_in_one_line_and_holds_up_only_its_key(ftpd: FtpServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with archive.get_interface(ftpd.url("store"), create=True) as arc:
        check_stale_lock(arc, ftpd.root / "store", monkeypatch)


def test_without_fsspec_the_extra_to_install_is_named(ftpd: FtpServer) -> None:
    check_missing_library(ftpd.url("store"), "fsspec", "ftp")


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    from tests.sshd import free_port

    url = f"ftp://ftpuser:{PASSWORD}@127.0.0.1:{free_port()}/~/store"
    result = run("-a", url, "ls", home=tmp_path)
    one_line_error(result, "cannot reach the server")
    assert PASSWORD not in result.stderr


# ------------------------------------------------------------------ credentials and locations
def test_credentials_from_netrc_and_keyring(ftpd: FtpServer, keyring_file: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    check_credentials_from_netrc_and_keyring(ftpd.url("store", password=None), "127.0.0.1", USER, PASSWORD,
                                             KEYRING_SERVICE, tmp_path, monkeypatch)


def test_malformed_locations_are_refused_in_one_line() -> None:
    check_malformed_locations([
        ("ftp://127.0.0.1:ftp/store", "the port is not a number"),
        ("ftp:///store", "not a ftp/ftps://[user@]host[:port]/path location"),
        ("ftp://u:pw-secret@127.0.0.1/", "names no folder"),
        ("ftps://u:pw-secret@127.0.0.1/store?tls=no", "unknown parameter 'tls'"),
    ])


def test_absolute_and_home_relative_paths(ftpd: FtpServer) -> None:
    """``/~/store`` is below the login folder (``/`` on this server), ``/store`` absolute."""
    with archive.get_interface(ftpd.url("store"), create=True) as home_relative:
        assert home_relative.root == "/store"  # type: ignore[attr-defined]
    absolute = ftpd.url("store").replace("/~/", "/", 1)
    with archive.get_interface(absolute) as arc:
        assert arc.root == "/store" and arc.location == ftpd.url("store", password="***").replace("/~/", "/", 1)
    assert (ftpd.root / "store" / "archive.json").is_file()
