"""The WebDAV backend against a real wsgidav server (tests/davd.py): the shared contract, the
CLI end to end, create-only races, credentials.

wsgidav serves a temporary folder over HTTP on 127.0.0.1 with basic auth; the suite arranges what
the storage holds in that folder directly (``root`` of the archive is its path below it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

import archive
from archive.backends.webdav import KEYRING_SERVICE, WebDAVArchive
from tests.backends.conformance import BackendContract
from tests.backends.remote_cli import (check_cli_round_trip, check_credentials_from_netrc_and_keyring,
                                        check_malformed_locations, check_missing_library, check_password_never_shown,
                                        check_racing_pushes, check_stale_lock, one_line_error, run)
from tests.davd import PASSWORD, USER, DavServer, davd, davsd  # noqa: F401


class TestWebDAVContract(BackendContract):
    # wsgidav is started with follow_symlinks off: it answers 403 for a link, and what a server
    # does with a link, a FIFO or a device on its disk is its own setting, invisible to a client
    # (a PROPFIND shows a file or a collection). Every byte read is verified against its hash
    # above the backend anyway. So these storage-side checks are not the WebDAV backend's.
    test_a_link_in_place_of_an_object_is_never_followed = None
    test_a_link_in_place_of_a_folder_is_never_followed = None
    test_a_fifo_in_place_of_an_object_is_refused_without_blocking = None
    # wsgidav cannot list a folder holding a name that is not UTF-8 (HTTP 500: the whole listing
    # fails, reported in one line); no such name reaches a client to be skipped.
    test_names_that_are_not_utf8_are_skipped_in_listings = None

    @pytest.fixture
    def arc(self, davd: DavServer) -> Iterator[WebDAVArchive]:
        self._server = davd
        with archive.get_interface(davd.url("store"), create=True) as arc:
            assert isinstance(arc, WebDAVArchive)
            yield arc

    def on_disk(self, arc: archive.ArchiveInterface, key: str) -> Path:
        return Path(self._server.root, arc.root, *key.split("/"))  # type: ignore[attr-defined]


# ------------------------------------------------------------------ the CLI
def test_cli_round_trip(davd: DavServer, tmp_path: Path) -> None:
    check_cli_round_trip(davd.url("store"), davd.root / "store", tmp_path)


def test_racing_pushes_of_one_version_have_one_winner(davd: DavServer, tmp_path: Path) -> None:
    check_racing_pushes(davd.url("store"), tmp_path)


def test_wrong_password_is_one_line_and_no_password_shows(davd: DavServer, tmp_path: Path) -> None:
    check_password_never_shown(davd.url("store"), davd.url("store", password="wrong-pw"), PASSWORD, tmp_path)


# ------------------------------------------------------------------ create-only writes
def test_a_stale_lock_fails_in_one_line_and_holds_up_only_its_key(davd: DavServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with archive.get_interface(davd.url("store"), create=True) as arc:
        check_stale_lock(arc, davd.root / "store", monkeypatch)


def test_without_webdav4_the_extra_to_install_is_named(davd: DavServer) -> None:
    check_missing_library(davd.url("store"), "webdav4", "webdav")


# ------------------------------------------------------------------ HTTPS, unreachable
def test_webdavs_round_trip_with_a_private_ca(davsd: tuple[DavServer, Path], tmp_path: Path) -> None:
    server, ca_file = davsd
    url = f"{server.url('store')}?ca_bundle={ca_file}"
    assert url.startswith("webdavs://")
    check_cli_round_trip(url, server.root / "store", tmp_path)


def test_webdavs_without_the_ca_is_refused_in_one_line(davsd: tuple[DavServer, Path], tmp_path: Path) -> None:
    server, _ = davsd
    result = run("init", server.url("store"), home=tmp_path)
    one_line_error(result, "TLS failed")
    assert "ca_bundle" in result.stderr and PASSWORD not in result.stderr
    assert not (server.root / "store").exists()


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    from tests.sshd import free_port

    url = f"webdav://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/store"
    result = run("-a", url, "ls", home=tmp_path)
    one_line_error(result, "cannot reach the server")
    assert PASSWORD not in result.stderr


# ------------------------------------------------------------------ credentials and locations
def test_credentials_from_netrc_and_keyring(davd: DavServer, keyring_file: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    check_credentials_from_netrc_and_keyring(davd.url("store", password=None), "127.0.0.1", USER, PASSWORD,
                                             KEYRING_SERVICE, tmp_path, monkeypatch)


def test_malformed_locations_are_refused_in_one_line() -> None:
    check_malformed_locations([
        ("webdav://127.0.0.1:dav/store", "the port is not a number"),
        ("webdav:///store", "not a webdav/webdavs://[user@]host[:port]/path location"),
        ("webdav://u:pw-secret@127.0.0.1/", "names no folder"),
        ("webdavs://u:pw-secret@127.0.0.1/store?verify=no", "unknown parameter 'verify'"),
        ("webdav://u:pw-secret@127.0.0.1:x/store", "the port is not a number"),
    ])


def test_the_location_never_holds_the_password(davd: DavServer) -> None:
    with archive.get_interface(davd.url("store"), create=True) as arc:
        assert PASSWORD not in arc.location + repr(arc) + arc.base_url  # type: ignore[attr-defined]
        assert arc.location == davd.url("store", password="***")
