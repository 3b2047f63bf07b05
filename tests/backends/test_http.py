"""The HTTP backend against a real nginx (tests/httpd.py): reading, refusing writes, TLS, resume.

The archive is published with the folder backend into the folder nginx serves, then read over
HTTP, through the public API and through the CLI as a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

import archive
from archive import layout
from archive.backends.http import HTTPArchive
from archive.errors import (AuthenticationError, BackendError, BackendUnavailableError, InvalidInputError,
                            KeyNotFoundError, NotAnArchiveError, ReadOnlyArchiveError, ReleaseNotFoundError)
from archive.hashing import BlobId
from tests.backends.conformance import BackendContract
from tests.conftest import make_tree
from tests.relay import Relay
from tests.httpd import WebServer, make_ca, start_nginx, stop_nginx
from tests.test_publish import snapshot

FILES = {"a.txt": b"alpha", "sub/b.bin": bytes(range(256)) * 4000, "sub/deeper/c": b"",
         "with space & %.txt": b"quoted"}
BIG = bytes(range(256)) * 20_000  # 5 MB: several chunks, cut half-way in the resume test


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def publish_site(root: Path, tmp_path: Path) -> Path:
    """A folder archive in ``root/store`` with demo 1.0.0, 1.2.0, 2.0.0-rc.1 and other 0.1.0."""
    with archive.get_interface(root / "store", create=True) as arc:
        src = make_tree(tmp_path / "src", FILES)
        for version in ("1.0.0", "1.2.0", "2.0.0-rc.1"):
            arc.publish(src, "demo", version, {"message": f"v{version}"}, progress=False)
        arc.publish(make_tree(tmp_path / "big", {"big.bin": BIG}), "other", "0.1.0", progress=False)
    return root / "store"


@pytest.fixture
def site(httpd: WebServer, tmp_path: Path) -> str:
    """The URL of a published archive served by nginx."""
    publish_site(httpd.root, tmp_path)
    return httpd.url("store")


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.startswith("archive: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ the read side of the contract
class TestHTTPReadContract:
    """What every backend promises to a reader, on an archive served by nginx."""

    @pytest.fixture
    def arc(self, site: str) -> Iterator[HTTPArchive]:
        with archive.get_interface(site) as arc:
            assert isinstance(arc, HTTPArchive) and arc.read_only and not arc.listable
            yield arc

    def test_names_versions_and_resolve_come_from_the_index(self, arc: HTTPArchive) -> None:
        assert arc.names() == ["demo", "other"]
        assert arc.versions("demo") == ["2.0.0-rc.1", "1.2.0", "1.0.0"]
        assert arc.resolve("demo", "^1").version == "1.2.0"
        assert arc.resolve("demo", "*", include_prerelease=True).version == "2.0.0-rc.1"
        with pytest.raises(ReleaseNotFoundError):
            arc.resolve("nothing", "*")

    def test_stat_and_open_an_object(self, arc: HTTPArchive, httpd: WebServer) -> None:
        key = layout.blob_key(BlobId.of_bytes(FILES["sub/b.bin"]))
        info = arc.stat_key(key)
        stored = httpd.root / "store" / key
        assert info.size == len(FILES["sub/b.bin"])
        assert abs(info.mtime - stored.stat().st_mtime) < 1.01  # HTTP dates have whole seconds
        with arc.open_key(key) as stream:
            assert stream.read(10) == FILES["sub/b.bin"][:10]
            assert stream.read() == FILES["sub/b.bin"][10:]

    def test_missing_key_raises_not_found(self, arc: HTTPArchive) -> None:
        with pytest.raises(KeyNotFoundError):
            arc.stat_key("blobs/sha256/00/missing")
        with pytest.raises(KeyNotFoundError):
            with arc.open_key("blobs/sha256/00/missing"):
                pass

    def test_a_key_never_leads_outside_the_root(self, arc: HTTPArchive) -> None:
        for key in ("../archive.json", "blobs/../../x", "blobs//x", "/etc/passwd"):
            with pytest.raises(InvalidInputError):
                arc.stat_key(key)
        assert arc.url_of("releases/a b/%2e%2e") == arc.base_url + "releases/a%20b/%252e%252e"

    def test_every_write_is_refused(self, arc: HTTPArchive, httpd: WebServer, tmp_path: Path) -> None:
        before = files_of(httpd.root)
        for attempt in (lambda: arc.write_key("releases/x/1.0.0", [b"p"]), lambda: arc.delete_key(layout.MARKER_KEY),
                        lambda: arc.move_key(layout.MARKER_KEY, "x"), lambda: arc.collect_garbage(),
                        lambda: arc.publish(make_tree(tmp_path / "n", {"f": b"1"}), "demo", "3.0.0", progress=False)):
            with pytest.raises(ReadOnlyArchiveError, match=r"is read-only \(a web server\)$"):
                attempt()
        assert files_of(httpd.root) == before

    def test_listing_is_refused_in_one_line(self, arc: HTTPArchive) -> None:
        with pytest.raises(BackendError, match="cannot list"):
            arc.list_keys(layout.RELEASES_DIR)

    def test_download_and_open_are_byte_identical(self, arc: HTTPArchive, tmp_path: Path) -> None:
        out = arc.download("demo", "^1", tmp_path / "out", progress=False)
        assert snapshot(out) == FILES
        out = arc.download("demo", "1.0.0", tmp_path / "direct", use_cache=False, progress=False)
        assert snapshot(out) == FILES
        with arc.open("demo", "with space & %.txt") as stream:
            assert stream.read() == b"quoted"

    def test_verify_full_rehashes_over_http(self, arc: HTTPArchive, httpd: WebServer) -> None:
        report = arc.verify(full=True, progress=False)
        assert report.errors == [] and report.releases == 4
        key = layout.blob_key(BlobId.of_bytes(FILES["a.txt"]))
        blob = httpd.root / "store" / key
        blob.chmod(0o644)
        blob.write_bytes(b"alphA")  # same size, other bytes: only a full verify sees it
        assert arc.verify(progress=False).errors == []
        assert any(BlobId.of_bytes(FILES["a.txt"]).short in e for e in arc.verify(full=True, progress=False).errors)


# ------------------------------------------------------------------ the CLI
def test_cli_reads_an_archive_over_http(site: str, tmp_path: Path) -> None:
    assert run("-a", site, "ls").stdout.split() == ["demo", "other"]
    assert [line.split()[0] for line in run("-a", site, "ls", "demo").stdout.splitlines()] == ["2.0.0-rc.1", "1.2.0", "1.0.0"]
    shown = run("-a", site, "show", "demo", "<1.1")
    assert shown.returncode == 0 and shown.stdout.splitlines()[0] == "demo 1.0.0" and "sub/b.bin" in shown.stdout
    pull = run("-a", site, "pull", "demo", "^1", "--to", str(tmp_path / "out"))
    assert pull.returncode == 0, pull.stderr
    assert snapshot(tmp_path / "out") == FILES
    verify = run("-a", site, "verify", "--full")
    assert verify.returncode == 0 and "0 problem(s)" in verify.stdout, verify.stdout + verify.stderr


def test_a_pull_costs_one_get_per_blob(site: str, httpd: WebServer, tmp_path: Path) -> None:
    """No HEAD, second GET or new connection per file: a pull reads each blob it lacks once."""
    before = len(httpd.requests())
    assert run("-j", "1", "-a", site, "pull", "demo", "1.0.0", "--to", str(tmp_path / "out")).returncode == 0
    assert httpd.connections() == 1  # kept alive: no new connection per file
    blobs = [(method, status) for method, path, status, _ in httpd.requests()[before:] if "/blobs/" in path]
    assert sorted(blobs) == [("GET", 200)] * (len(set(FILES.values())) + 1), blobs  # + the record


def test_cli_refuses_to_write_over_http(site: str, httpd: WebServer, tmp_path: Path) -> None:
    before = files_of(httpd.root)
    src = make_tree(tmp_path / "src", {"new": b"new"})
    one_line_error(run("-a", site, "push", str(src), "demo", "3.0.0"), "read-only")
    one_line_error(run("-a", site, "gc"), "read-only")
    one_line_error(run("-a", site, "gc", "--dry-run"), "read-only")  # it could not list the blobs
    one_line_error(run("-a", site, "verify", "--repair"), "read-only")
    one_line_error(run("init", httpd.url("fresh")), "read-only")
    assert files_of(httpd.root) == before
    assert not [r for r in httpd.requests() if r[0] not in ("GET", "HEAD")]


def test_no_archive_json_is_not_an_archive(httpd: WebServer) -> None:
    (httpd.root / "plain").mkdir()
    (httpd.root / "plain" / "index.html").write_text("hello")
    result = run("-a", httpd.url("plain"), "ls")
    one_line_error(result, f"{httpd.url('plain')} is not an archive")
    assert "archive init" not in result.stderr  # a web server cannot be made one
    with pytest.raises(NotAnArchiveError):
        archive.get_interface(httpd.url("plain/"))


@pytest.mark.parametrize("location, problem", [
    ("http://127.0.0.1:http/store", "the port is not a number"),
    ("http:///store", "not an http(s)://host/path URL"),
    ("https://127.0.0.1/store?cache=no", "unknown parameter 'cache'"),
    ("https://u:pw-secret@127.0.0.1:x/store", "the port is not a number"),
])
def test_malformed_locations_are_refused_in_one_line(location: str, problem: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(problem)) as refused:
        archive.get_interface(location)
    assert "pw-secret" not in str(refused.value)


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    from tests.sshd import free_port

    url = f"http://127.0.0.1:{free_port()}/store"
    with pytest.raises(BackendUnavailableError, match="cannot reach the server"):
        archive.get_interface(url)
    one_line_error(run("-a", url, "ls", env={"ARCHIVE_CONNECT_TIMEOUT": "2"}), "cannot reach the server")


# ------------------------------------------------------------------ TLS
@pytest.fixture
def tls_site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An archive served over HTTPS with a certificate of a CA made for the test: (URL, CA file)."""
    ca = make_ca(tmp_path / "ca")
    root = tmp_path / "www"
    root.mkdir()
    publish_site(root, tmp_path)
    server = start_nginx(tmp_path / "nginx", root, tls=ca)
    yield server.url("store"), ca.ca_file
    stop_nginx(server)


def test_tls_with_a_private_ca(tls_site: tuple[str, Path], tmp_path: Path) -> None:
    url, ca_file = tls_site
    assert url.startswith("https://")
    env = {"REQUESTS_CA_BUNDLE": str(ca_file)}
    assert run("-a", url, "ls", env=env).stdout.split() == ["demo", "other"]
    pull = run("-a", url, "pull", "other", "--to", str(tmp_path / "out"), env=env)
    assert pull.returncode == 0 and (tmp_path / "out" / "big.bin").read_bytes() == BIG
    with_parameter = run("-a", f"{url}?ca_bundle={ca_file}", "ls", "demo")
    assert [line.split()[0] for line in with_parameter.stdout.splitlines()] == ["2.0.0-rc.1", "1.2.0", "1.0.0"], with_parameter.stderr


def test_tls_without_the_ca_is_refused_in_one_line(tls_site: tuple[str, Path]) -> None:
    url, _ = tls_site
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    result = subprocess.run([sys.executable, "-m", "archive", "-a", url, "ls"], capture_output=True,
                            text=True, env=env, timeout=60)
    one_line_error(result, "TLS failed")
    assert "REQUESTS_CA_BUNDLE" in result.stderr


# ------------------------------------------------------------------ basic auth
@pytest.fixture
def auth_site(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    publish_site(root, tmp_path)
    server = start_nginx(tmp_path / "nginx", root, users={"reader": "s3cret-pw"})
    yield server.url("store")
    stop_nginx(server)


def test_basic_auth_from_netrc(auth_site: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(AuthenticationError, match=r"/store/archive.json: access refused \(HTTP 401\)"):
        archive.get_interface(auth_site)
    one_line_error(run("-a", auth_site, "ls", env={"HOME": str(home)}), "access refused (HTTP 401)")
    netrc = home / ".netrc"
    netrc.write_text("machine 127.0.0.1 login reader password s3cret-pw\n")
    netrc.chmod(0o600)
    assert run("-a", auth_site, "ls", env={"HOME": str(home)}).stdout.split() == ["demo", "other"]
    with archive.get_interface(auth_site) as arc:
        assert arc.resolve("demo").version == "1.2.0"


def test_a_password_in_the_url_is_used_and_never_shown(auth_site: str, tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    good = auth_site.replace("http://", "http://reader:s3cret-pw@")
    assert run("-a", good, "ls", env=env).stdout.split() == ["demo", "other"]
    bad = auth_site.replace("http://", "http://reader:wrong-pw@")
    result = run("-vv", "-a", bad, "ls", env=env)
    assert result.returncode == 1 and "401" in result.stderr
    assert "wrong-pw" not in result.stderr + result.stdout
    with archive.get_interface(good) as arc:
        assert "s3cret" not in arc.location + arc.base_url + repr(arc)
    pull = run("-vv", "-a", good, "pull", "demo", "--to", str(tmp_path / "out"), env=env)
    assert pull.returncode == 0 and "s3cret" not in pull.stdout + pull.stderr
    remembered = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and b"s3cret" in p.read_bytes()]
    assert remembered == [] and snapshot(tmp_path / "out") == FILES


def _keyring_env(tmp_path: Path, service: str, account: str, secret: str) -> dict[str, str]:
    """The environment of a CLI run whose keyring (a real keyrings.alt file) holds one secret."""
    from keyrings.alt.file import PlaintextKeyring

    store = PlaintextKeyring()
    store.file_path = str(tmp_path / "xdg" / "python_keyring" / "keyring_pass.cfg")
    store.set_password(service, account, secret)
    return {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg"),
            "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring"}


def test_a_password_from_the_keyring_after_a_401(auth_site: str, tmp_path: Path) -> None:
    """``http://reader@host/...``: the password of account reader@host:port, service archive-http."""
    url = auth_site.replace("http://", "http://reader@")
    host = url.split("@", 1)[1].split("/", 1)[0]
    one_line_error(run("-a", url, "ls", env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "none"),
                                             "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring"}),
                   "access refused (HTTP 401)")
    env = _keyring_env(tmp_path, "archive-http", f"reader@{host}", "s3cret-pw")
    result = run("-vv", "-a", url, "pull", "demo", "--to", str(tmp_path / "out"), env=env)
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert snapshot(tmp_path / "out") == FILES


def test_a_bearer_token_from_the_keyring(tmp_path: Path) -> None:
    """No user in the URL: the token of account host:port, service archive-http-token."""
    root = tmp_path / "www"
    root.mkdir()
    publish_site(root, tmp_path)
    server = start_nginx(tmp_path / "nginx", root,
                         extra='if ($http_authorization != "Bearer tok-9f2e") { return 401; }')
    try:
        one_line_error(run("-a", server.url("store"), "ls", env={"HOME": str(tmp_path)}), "HTTP 401")
        env = _keyring_env(tmp_path, "archive-http-token", f"127.0.0.1:{server.port}", "tok-9f2e")
        result = run("-vv", "-a", server.url("store"), "ls", env=env)
        assert result.stdout.split() == ["demo", "other"], result.stderr
        assert "tok-9f2e" not in result.stderr
    finally:
        stop_nginx(server)


# ------------------------------------------------------------------ servers that refuse HEAD
def test_a_server_that_refuses_head_is_asked_for_one_byte(tmp_path: Path) -> None:
    """Some gateways answer HEAD with 405: sizes then come from a GET of byte 0 (Content-Range)."""
    root = tmp_path / "www"
    root.mkdir()
    publish_site(root, tmp_path)
    server = start_nginx(tmp_path / "nginx", root, extra="if ($request_method = HEAD) { return 405; }")
    try:
        with archive.get_interface(server.url("store")) as arc:
            blob = arc.resolve("other").files["big.bin"].blob
            assert arc.stat_key(layout.blob_key(blob)).size == len(BIG)
            assert arc.stat_key("archive.json").size == (root / "store" / "archive.json").stat().st_size
        heads = lambda: [status for method, _, status, _ in server.requests() if method == "HEAD"]  # noqa: E731
        assert heads() == [405]  # refused once, then remembered by that archive object
        verified = run("-a", server.url("store"), "verify")
        assert verified.returncode == 0, verified.stderr
        pulled = run("-a", server.url("store"), "pull", "demo", "--to", str(tmp_path / "out"))
        assert pulled.returncode == 0 and snapshot(tmp_path / "out") == FILES, pulled.stderr
        # verify's threads may each send one HEAD before the first refusal is seen; never more
        assert set(heads()) == {405} and len(heads()) <= 1 + HTTPArchive.max_workers
        assert ("GET", "/store/" + layout.blob_key(blob), 206, "bytes=0-0") in server.requests()
    finally:
        stop_nginx(server)


# ------------------------------------------------------------------ redirects
def test_a_redirect_to_another_host_is_not_followed(tmp_path: Path) -> None:
    """A server that redirects every request to another host: credentials never go there."""
    root = tmp_path / "www"
    root.mkdir()
    publish_site(root, tmp_path)
    server = start_nginx(tmp_path / "nginx", root, extra="return 302 http://localhost:1$uri;")
    try:
        url = f"http://user:pw-secret@127.0.0.1:{server.port}/store"
        result = run("-a", url, "ls", env={"HOME": str(tmp_path)})
        one_line_error(result, "redirected to another host")
        assert "pw-secret" not in result.stderr
    finally:
        stop_nginx(server)


def test_a_redirect_on_the_same_host_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "www"
    publish_site(root, tmp_path)
    server = start_nginx(tmp_path / "nginx", root, extra="rewrite ^/old/(.*)$ /store/$1 redirect;")
    try:
        assert run("-a", server.url("old"), "ls").stdout.split() == ["demo", "other"]
        assert any(status == 302 for _, _, status, _ in server.requests())
    finally:
        stop_nginx(server)


# ------------------------------------------------------------------ a transfer cut half-way
def test_a_cut_transfer_resumes_with_a_range_request(site: str, httpd: WebServer, tmp_path: Path) -> None:
    relay = Relay(httpd.port, cut_after=len(BIG) // 2, cut_requests=False)
    try:
        url = f"http://127.0.0.1:{relay.port}/store"
        # the cut must land in the big blob, so the small index and record reads come first
        with archive.get_interface(url) as arc:
            release = arc.resolve("other")
        relay.cuts = 0
        result = run("-a", url, "pull", "other", "--to", str(tmp_path / "out"))
        assert result.returncode == 0, result.stderr
        assert relay.cuts == 1
    finally:
        relay.close()
    assert hashlib.sha256((tmp_path / "out" / "big.bin").read_bytes()).digest() == hashlib.sha256(BIG).digest()
    blob = "/store/" + layout.blob_key(release.files["big.bin"].blob)
    gets = [(status, ranged) for method, path, status, ranged in httpd.requests() if path == blob and method == "GET"]
    assert gets[0] == (200, "")
    assert gets[1][0] == 206 and gets[1][1].startswith("bytes=") and int(gets[1][1][6:-1]) > 0, gets


def test_a_server_that_ignores_range_fails_clearly(tmp_path: Path) -> None:
    """nginx with ``max_ranges 0`` answers every Range request with the whole object (200)."""
    root = tmp_path / "www"
    publish_site(root, tmp_path)
    server = start_nginx(tmp_path / "nginx", root, extra="max_ranges 0;")
    relay = Relay(server.port, cut_after=len(BIG) // 2, cut_requests=False)
    try:
        with archive.get_interface(f"http://127.0.0.1:{relay.port}/store") as arc:
            key = layout.blob_key(arc.resolve("other").files["big.bin"].blob)
            relay.cuts = 0
            with pytest.raises(BackendError, match="cannot resume: the server ignored the byte range"):
                with arc.open_key(key) as stream:
                    stream.read()
    finally:
        relay.close()
        stop_nginx(server)


def test_more_jobs_than_the_pool_holds_stay_quiet(httpd: WebServer, tmp_path: Path) -> None:
    """``-j 32`` over HTTP: the threads share the session's pool, and no warning shows."""
    files = {f"f{i:03}": os.urandom(300_000) for i in range(120)}
    with archive.get_interface(httpd.root / "store", create=True) as arc:
        arc.publish(make_tree(tmp_path / "src", files), "many", "1.0.0", progress=False)
    result = run("-j", "32", "-a", httpd.url("store"), "pull", "many", "--to", str(tmp_path / "out"))
    assert result.returncode == 0 and result.stderr.startswith("pulled many 1.0.0"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert snapshot(tmp_path / "out") == files


# ------------------------------------------------------------------ the shared contract, read over HTTP
class FolderWritesHTTPReads(HTTPArchive):
    """Writes go straight into the folder nginx serves, every read goes over HTTP.

    So the shared conformance suite runs its reading half on the HTTP backend: each object a
    test writes is then stat'ed, opened and downloaded through nginx, and names and versions
    come from the index files (``listable`` stays False).
    """

    read_only = False

    def __init__(self, folder: archive.ArchiveInterface, url: str) -> None:
        base = HTTPArchive.from_location(url)
        super().__init__(url, base.base_url)
        base.close()
        self.folder = folder

    check_writable = archive.ArchiveInterface.check_writable

    def write_key(self, key, chunks, *, exclusive=False):
        self.folder.write_key(key, chunks, exclusive=exclusive)

    def delete_key(self, key):
        self.folder.delete_key(key)

    def move_key(self, source, target):
        self.folder.move_key(source, target)

    def list_keys(self, prefix):
        return self.folder.list_keys(prefix)

    @property
    def root(self) -> Path:
        """The served folder, where the suite arranges what the storage holds."""
        return self.folder.root  # type: ignore[attr-defined]


class TestContractReadOverHTTP(BackendContract):
    # What a web server does with a link, a FIFO or a file where a folder should be is its own
    # setting (nginx: disable_symlinks; it answers 404 for a FIFO, never blocking), invisible to
    # a client, which sees a 404 or the content; every byte read is verified against its hash
    # above the backend anyway. So these storage-side checks are not the HTTP backend's. (A
    # folder where a file should be is seen: the server redirects to the folder's URL.)
    test_a_link_in_place_of_an_object_is_never_followed = None
    test_a_link_in_place_of_a_folder_is_never_followed = None
    test_a_fifo_in_place_of_an_object_is_refused_without_blocking = None
    test_a_file_in_place_of_a_folder_is_refused = None

    @pytest.fixture
    def arc(self, httpd: WebServer) -> Iterator[FolderWritesHTTPReads]:
        with archive.get_interface(httpd.root / "store", create=True) as folder:
            with FolderWritesHTTPReads(folder, httpd.url("store")) as arc:
                arc.check_archive()
                yield arc
