"""A real FTP server (pyftpdlib) on 127.0.0.1 for the FTP backend tests, plain or FTPS.

The server runs as a subprocess of this very file (``python tests/ftpd.py CONFIG``) with one
user whose home is the served folder; with a :class:`~tests.httpd.LocalCA` it is an explicit
FTPS server (``AUTH TLS``) that requires TLS on the control and the data connections.
:func:`start_ftpd` and :func:`stop_ftpd` work outside pytest; the fixtures stop exactly the
process they started.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

USER, PASSWORD = "ftpuser", "ftp-s3cret"


@dataclass
class FtpServer:
    """A running pyftpdlib serving :attr:`root` as the home of :data:`USER`."""

    root: Path
    folder: Path
    port: int
    tls: bool
    process: subprocess.Popen = field(repr=False)

    def url(self, path: str = "", user: str | None = USER, password: str | None = PASSWORD,
            query: str = "") -> str:
        """``ftp(s)://user:password@127.0.0.1:port/~/path`` (the path relative to the home)."""
        auth = "" if user is None else f"{user}:{password}@" if password is not None else f"{user}@"
        tail = f"?{query}" if query else ""
        return f"{'ftps' if self.tls else 'ftp'}://{auth}127.0.0.1:{self.port}/~/{path}{tail}"

    def log(self) -> str:
        return (self.folder / "ftpd.log").read_text(errors="replace")


def _serve(config_file: str) -> None:
    """Run the server of ``config_file`` until terminated (the subprocess's main)."""
    import logging

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import ThreadedFTPServer

    config = json.loads(Path(config_file).read_text())
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    authorizer = DummyAuthorizer()
    for user, password in config["users"].items():
        authorizer.add_user(user, password, config["root"], perm="elradfmwMT")
    handler = FTPHandler
    if config.get("cert"):
        from pyftpdlib.handlers import TLS_FTPHandler

        handler = TLS_FTPHandler
        handler.certfile, handler.keyfile = config["cert"], config["key"]
        handler.tls_control_required = handler.tls_data_required = True
    handler.authorizer = authorizer
    handler.passive_ports = None
    server = ThreadedFTPServer(("127.0.0.1", config["port"]), handler)
    server.max_cons = 64
    server.serve_forever()


def start_ftpd(folder: Path, root: Path, tls=None, users: dict[str, str] | None = None) -> FtpServer:
    """Start pyftpdlib serving ``root`` (config and log in ``folder``); wait until it listens.

    ``tls``: a :class:`~tests.httpd.LocalCA` whose server certificate makes it an FTPS server.
    """
    from tests.servers import wait_until_listening
    from tests.sshd import free_port

    folder.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {"root": str(root), "port": port, "users": users or {USER: PASSWORD},
              "cert": str(tls.cert_file) if tls else None, "key": str(tls.key_file) if tls else None}
    (folder / "ftpd.json").write_text(json.dumps(config))
    with open(folder / "ftpd.log", "wb") as log:
        process = subprocess.Popen([sys.executable, __file__, str(folder / "ftpd.json")],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_until_listening(process, port, "pyftpdlib", lambda: (folder / "ftpd.log").read_text(errors="replace"))
    return FtpServer(root, folder, port, tls is not None, process)


def stop_ftpd(server: FtpServer) -> None:
    from tests.servers import stop_process

    stop_process(server.process)


@pytest.fixture
def ftpd(tmp_path: Path) -> Iterator[FtpServer]:
    """pyftpdlib on 127.0.0.1 (plain FTP) serving the (empty) folder ``tmp_path / "ftp"``."""
    server = start_ftpd(tmp_path / "ftpd", tmp_path / "ftp")
    yield server
    stop_ftpd(server)


@pytest.fixture
def ftpsd(tmp_path: Path) -> Iterator[tuple[FtpServer, Path]]:
    """An FTPS server (explicit TLS, required) with a CA made for the test: (server, CA file)."""
    from tests.httpd import make_ca

    ca = make_ca(tmp_path / "ca")
    server = start_ftpd(tmp_path / "ftpsd", tmp_path / "ftps", tls=ca)
    yield server, ca.ca_file
    stop_ftpd(server)


if __name__ == "__main__":
    _serve(sys.argv[1])
