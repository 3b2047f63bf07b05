"""A real nginx on 127.0.0.1 for the HTTP backend tests: started and stopped per test.

``nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'`` serves a folder (``autoindex off``), plain or
over TLS with a certificate of a CA made for the test, optionally behind basic auth. Its access
log records the ``Range`` header of each request, so tests can see how a body was resumed.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.servers import stop_process, wait_until_listening
from tests.sshd import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class WebServer:
    """A running nginx serving :attr:`root`."""

    root: Path
    folder: Path
    port: int
    tls: bool
    process: subprocess.Popen = field(repr=False)

    def url(self, path: str = "") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/{path}"

    def requests(self) -> list[tuple[str, str, int, str]]:
        """(method, path, status, Range header) of each request so far, oldest first."""
        lines = (self.folder / "access.log").read_text().splitlines()
        entries = []
        for line in lines:
            method, path, status, ranged, _ = line.split("\t")
            entries.append((method, path, int(status), "" if ranged == "-" else ranged))
        return entries

    def connections(self) -> int:
        """How many TCP connections have made requests so far."""
        return len({line.rsplit("\t", 1)[1] for line in (self.folder / "access.log").read_text().splitlines()})


@dataclass
class LocalCA:
    """A certificate authority made for one test, and a server certificate for 127.0.0.1."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_ca(folder: Path) -> LocalCA:
    """A self-signed CA and, signed by it, a certificate for the address 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "archive test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    result = LocalCA(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    result.ca_file.write_bytes(ca.public_bytes(pem))
    result.cert_file.write_bytes(cert.public_bytes(pem))
    result.key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return result


def _config(folder: Path, root: Path, port: int, tls: LocalCA | None, users: dict[str, str] | None,
            extra: str) -> str:
    listen = f"listen 127.0.0.1:{port}" + (" ssl" if tls else "") + ";"
    if tls:
        listen += f"\n    ssl_certificate {tls.cert_file};\n    ssl_certificate_key {tls.key_file};"
    auth = ""
    if users:
        (folder / "htpasswd").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in users.items()))
        auth = f'auth_basic "archive";\n    auth_basic_user_file {folder / "htpasswd"};'
    temp = "".join(f"{kind}_temp_path {folder / 'tmp' / kind};\n  "
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""user root;
worker_processes 1;
pid {folder / 'nginx.pid'};
error_log {folder / 'error.log'};
events {{ worker_connections 64; }}
http {{
  {temp}types {{ application/json json; }}
  default_type application/octet-stream;
  log_format ranges "$request_method\\t$uri\\t$status\\t$http_range\\t$connection";
  access_log {folder / 'access.log'} ranges;
  server {{
    {listen}
    root {root};
    autoindex off;
    {auth}
    {extra}
  }}
}}
"""


def start_nginx(folder: Path, root: Path, tls: LocalCA | None = None,
                users: dict[str, str] | None = None, extra: str = "") -> WebServer:
    """Start nginx serving ``root`` (its files in ``folder``); wait until it accepts connections.

    ``tls``: serve HTTPS with its certificate; ``users``: basic auth for these user names and
    passwords; ``extra``: directives added to the ``server`` block.
    """
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    (folder / "nginx.conf").write_text(_config(folder, root, port, tls, users, extra))
    process = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until_listening(process, port, "nginx", lambda: process.stderr.read().decode(errors="replace"), 15)
    return WebServer(root, folder, port, tls is not None, process)


def stop_nginx(server: WebServer) -> None:
    stop_process(server.process)


@pytest.fixture
def httpd(tmp_path: Path) -> Iterator[WebServer]:
    """nginx on 127.0.0.1 over plain HTTP, serving the (empty) folder ``tmp_path / "www"``."""
    root = tmp_path / "www"
    root.mkdir()
    server = start_nginx(tmp_path / "nginx", root)
    yield server
    stop_nginx(server)
