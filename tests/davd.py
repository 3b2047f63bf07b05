"""A real WebDAV server (wsgidav on cheroot) on 127.0.0.1 for the WebDAV backend tests.

wsgidav runs as a subprocess of ``python -m wsgidav.server.server_cli`` with a JSON config made
per test: one share ``/`` on a folder, basic auth for one user, symbolic links not followed
(``fs_dav_provider.follow_symlinks: false``), no lock manager. :func:`start_davd` and
:func:`stop_davd` work outside pytest; the ``davd`` fixture stops exactly the process it started.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.servers import stop_process, wait_until_listening
from tests.sshd import free_port

USER, PASSWORD = "davuser", "dav-s3cret"


@dataclass
class DavServer:
    """A running wsgidav serving :attr:`root` as ``/``."""

    root: Path
    folder: Path
    port: int
    tls: bool
    process: subprocess.Popen = field(repr=False)

    def url(self, path: str = "", user: str | None = USER, password: str | None = PASSWORD) -> str:
        """``webdav(s)://user:password@127.0.0.1:port/path`` (no credentials if ``user`` is None)."""
        auth = "" if user is None else f"{user}:{password}@" if password is not None else f"{user}@"
        return f"{'webdavs' if self.tls else 'webdav'}://{auth}127.0.0.1:{self.port}/{path}"

    def log(self) -> str:
        return (self.folder / "wsgidav.log").read_text(errors="replace")


def _config(root: Path, port: int, users: dict[str, str], tls) -> dict:
    certificate = {"ssl_certificate": str(tls.cert_file), "ssl_private_key": str(tls.key_file),
                   "ssl_adapter": "builtin"} if tls else {}
    return {**certificate,
        "host": "127.0.0.1", "port": port, "verbose": 3, "logging": {"enable": True},
        "provider_mapping": {"/": {"root": str(root), "readonly": False}},
        "fs_dav_provider": {"follow_symlinks": False},
        "http_authenticator": {"domain_controller": None, "accept_basic": True, "accept_digest": False,
                               "default_to_digest": False, "trusted_auth_header": None},
        "simple_dc": {"user_mapping": {"*": {u: {"password": p} for u, p in users.items()}}},
        "lock_storage": False, "property_manager": None,
        "dir_browser": {"enable": False},
        "server_args": {"numthreads": 16},
    }


def start_davd(folder: Path, root: Path, users: dict[str, str] | None = None, tls=None) -> DavServer:
    """Start wsgidav serving ``root`` (its config and log in ``folder``); wait until it listens.

    ``tls``: a :class:`~tests.httpd.LocalCA` whose server certificate makes it serve HTTPS."""
    folder.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "wsgidav.json"
    config.write_text(json.dumps(_config(root, port, users or {USER: PASSWORD}, tls)))
    log = open(folder / "wsgidav.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "wsgidav.server.server_cli", "-c", str(config)],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    wait_until_listening(process, port, "wsgidav", lambda: (folder / "wsgidav.log").read_text(errors="replace"))
    return DavServer(root, folder, port, tls is not None, process)


def stop_davd(server: DavServer) -> None:
    stop_process(server.process)


@pytest.fixture
def davd(tmp_path: Path) -> Iterator[DavServer]:
    """wsgidav on 127.0.0.1 serving the (empty) folder ``tmp_path / "dav"``, basic auth for
    :data:`USER` / :data:`PASSWORD`."""
    server = start_davd(tmp_path / "davd", tmp_path / "dav")
    yield server
    stop_davd(server)


@pytest.fixture
def davsd(tmp_path: Path) -> Iterator[tuple[DavServer, Path]]:
    """wsgidav over HTTPS with a certificate of a CA made for the test: (server, CA file)."""
    from tests.httpd import make_ca

    ca = make_ca(tmp_path / "ca")
    server = start_davd(tmp_path / "davsd", tmp_path / "davs", tls=ca)
    yield server, ca.ca_file
    stop_davd(server)
