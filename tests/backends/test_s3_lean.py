"""The S3 backend's lean GETs (archive/backends/s3_lean.py), seen on the wire.

``read_key`` (a pull's small blobs, records, pointers) sends its GET without botocore's client,
so its requests are watched where they travel: :class:`WireRelay`, a relay on 127.0.0.1 in
front of the real moto server that records each request's head and can answer the next GETs
itself (a 503, a redirect) or cut the next answer short, as a failing server would.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path
from typing import Iterator

import pytest

import archive
from archive.backends.s3 import S3Archive
from archive.errors import AuthenticationError, BackendUnavailableError, IntegrityError, KeyNotFoundError
from tests.backends.test_s3 import run
from tests.conftest import make_tree
from tests.s3d import S3Server, new_bucket, start_s3_server, stop_s3_server


def http_answer(status: str, body: bytes = b"", headers: str = "") -> bytes:
    """A whole HTTP/1.1 answer that closes its connection."""
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n").encode() + body


def s3_error(status: str, code: str, headers: str = "") -> bytes:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
    return http_answer(status, body, "Content-Type: application/xml\r\n" + headers)


class WireRelay:
    """A relay from 127.0.0.1:``port`` to the S3 server, one request per connection.

    ``heads``: the head of each request (request line and headers, lower-case names).
    ``answers``: raw answers sent, in turn, to the next GETs instead of passing them on.
    ``cut_next_get``: the next GET's answer is cut after that many bytes.
    """

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self.heads: list[dict[str, str]] = []
        self.answers: list[bytes] = []
        self.cut_next_get: int | None = None
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gets(self) -> list[dict[str, str]]:
        return [head for head in self.heads if head["method"] == "GET"]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            request = _read_request(client)
            if request is None:
                return
            head, raw = request
            with self._lock:
                self.heads.append(head)
                answer = self.answers.pop(0) if head["method"] == "GET" and self.answers else None
                cut, self.cut_next_get = (self.cut_next_get, None) if head["method"] == "GET" else (None,
                                                                                                     self.cut_next_get)
            if answer is not None:
                client.sendall(answer)
                return
            with socket.create_connection(("127.0.0.1", self._upstream)) as server:
                server.sendall(raw)
                sent = 0
                while data := server.recv(65536):  # moto closes each connection after its answer
                    if cut is not None and sent + len(data) > cut:
                        client.sendall(data[:cut - sent])
                        return
                    client.sendall(data)
                    sent += len(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def _read_request(sock: socket.socket) -> tuple[dict[str, str], bytes] | None:
    """One whole request (head and body) from ``sock``, and its parsed head."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            return None
        data += more
    head_text, _, body = data.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    head = {"method": method, "target": target}
    head.update((name.strip().lower(), value.strip()) for name, value in (line.split(":", 1) for line in lines[1:]))
    while len(body) < int(head.get("content-length", "0")):
        body += sock.recv(65536)
    return head, data[:len(head_text) + 4] + body


@pytest.fixture
def relay(s3_env: S3Server) -> Iterator[WireRelay]:
    wire = WireRelay(s3_env.port)
    yield wire
    wire.close()


@pytest.fixture
def arc(s3_env: S3Server, s3_bucket: str, relay: WireRelay) -> Iterator[S3Archive]:
    location = s3_env.location(s3_bucket, "store").replace(s3_env.endpoint, relay.endpoint())
    with archive.get_interface(location, create=True) as arc:
        assert isinstance(arc, S3Archive)
        yield arc


def botocore_sends(arc: S3Archive) -> list[str]:
    """Each request botocore's client sends from now on (its URL)."""
    sent: list[str] = []
    arc.client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
    return sent


# ------------------------------------------------------------------ what goes on the wire
def test_read_key_is_one_signed_get_that_skips_botocore(arc: S3Archive, relay: WireRelay) -> None:
    arc.write_key("tmp/small", [b"small content"])
    through_botocore = botocore_sends(arc)
    relay.heads.clear()
    assert arc.read_key("tmp/small", 100) == b"small content"
    (get,) = relay.heads
    assert get["method"] == "GET" and get["target"] == f"/{arc.bucket}/store/tmp/small"
    assert get["authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
    assert "range" not in get and get["user-agent"] == arc.client.meta.config.user_agent
    assert through_botocore == []


@pytest.mark.parametrize("key", ["releases/calib/1.0.0+build.7", "releases/a b/ü é~x", "tmp/odd!$&'()*,;=@[]"])
def test_a_key_is_encoded_as_botocore_encodes_it(arc: S3Archive, relay: WireRelay, key: str) -> None:
    arc.write_key(key, [key.encode()])
    through_botocore = botocore_sends(arc)
    with arc.open_key(key) as stream:  # the client's GET
        assert stream.read() == key.encode()
    relay.heads.clear()
    assert arc.read_key(key, 1000) == key.encode()
    assert [h["target"] for h in relay.gets()] == ["/" + through_botocore[0].split("/", 3)[3]]


def test_signatures_are_accepted_by_a_server_that_checks_them(tmp_path: Path, s3_env: S3Server,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_s3_server(tmp_path / "auth", authenticate=True)
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        bucket = new_bucket(server)
        with archive.get_interface(server.location(bucket, "store"), create=True) as arc:
            for key in ("tmp/plain", "releases/a b/x~y"):  # moto's check fails botocore's own 'ü', '+', '='
                arc.write_key(key, [b"signed " + key.encode()])
                assert arc.read_key(key, 1000) == b"signed " + key.encode()
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-xyz")
        with pytest.raises(AuthenticationError, match="access refused") as refused:
            archive.get_interface(server.location(bucket, "store"))  # reads archive.json
        assert "wrong-secret-xyz" not in str(refused.value) and server.secret_key not in str(refused.value)
    finally:
        stop_s3_server(server)


# ------------------------------------------------------------------ answers and failures
def test_a_missing_key_and_a_too_large_object(arc: S3Archive) -> None:
    with pytest.raises(KeyNotFoundError):
        arc.read_key("tmp/nothing-here", 100)
    arc.write_key("tmp/big", [b"x" * 5000])
    with pytest.raises(IntegrityError, match="over the 4999 byte limit"):
        arc.read_key("tmp/big", 4999)
    assert arc.read_key("tmp/big", 5000) == b"x" * 5000  # the connection after a refusal is sound
    arc.write_key("tmp/empty", [b""])
    assert arc.read_key("tmp/empty", 10) == b""


@pytest.mark.parametrize("answer", [s3_error("503 Service Unavailable", "SlowDown"),
                                    s3_error("500 Internal Server Error", "InternalError"),
                                    s3_error("429 Too Many Requests", "TooManyRequestsException"),
                                    s3_error("400 Bad Request", "RequestTimeout"),
                                    b"HTTP/1.1 200 OK\r\nContent-Len"],  # the connection dropped mid-answer
                         ids=["503", "500", "429", "request-timeout", "dropped"])
def test_server_errors_and_throttling_are_retried(arc: S3Archive, relay: WireRelay, answer: bytes) -> None:
    arc.write_key("tmp/retried", [b"after retries"])
    relay.heads.clear()
    relay.answers = [answer, answer]
    assert arc.read_key("tmp/retried", 100) == b"after retries"
    assert len(relay.gets()) == 3


def test_a_body_cut_short_is_read_again(arc: S3Archive, relay: WireRelay) -> None:
    data = os.urandom(200_000)
    arc.write_key("tmp/cut", [data])
    relay.heads.clear()
    relay.cut_next_get = 100_000
    assert arc.read_key("tmp/cut", len(data)) == data
    assert len(relay.gets()) == 2


def test_retries_end_with_one_line(arc: S3Archive, relay: WireRelay) -> None:
    attempts = arc.client.meta.config.retries["total_max_attempts"]
    relay.answers = [s3_error("503 Service Unavailable", "SlowDown")] * attempts
    relay.heads.clear()
    with pytest.raises(BackendUnavailableError, match=r"server error \(SlowDown\)"):
        arc.read_key("archive.json", 4096)
    assert len(relay.gets()) == attempts


def test_a_redirect_goes_back_to_the_client(arc: S3Archive, relay: WireRelay) -> None:
    """A bucket in another region: botocore's client follows S3's redirects, the lean GET does not."""
    arc.write_key("tmp/elsewhere", [b"found"])
    relay.answers = [s3_error("301 Moved Permanently", "PermanentRedirect", "x-amz-bucket-region: us-east-1\r\n")]
    through_botocore = botocore_sends(arc)
    assert arc.read_key("tmp/elsewhere", 100) == b"found"
    assert len(through_botocore) == 1
    assert arc.read_key("tmp/elsewhere", 100) == b"found"
    assert len(through_botocore) == 2  # from now on through the client


def test_a_pull_of_small_files_sends_one_get_each(s3_env: S3Server, s3_bucket: str, relay: WireRelay,
                                                  tmp_path: Path) -> None:
    url = s3_env.location(s3_bucket, "store").replace(s3_env.endpoint, relay.endpoint())
    files = {f"f{i}.txt": f"small file {i}".encode() for i in range(40)}
    assert run("init", url).returncode == 0
    assert run("-a", url, "push", str(make_tree(tmp_path / "src", files)), "many", "1.0.0").returncode == 0
    relay.heads.clear()
    pulled = run("-a", url, "pull", "many", "--to", str(tmp_path / "out"), "--no-cache")
    assert pulled.returncode == 0, pulled.stderr
    assert snapshot_of(tmp_path / "out") == files
    blob_gets = [h["target"].rsplit("/", 1)[1] for h in relay.gets() if "/blobs/" in h["target"]]
    file_blobs = {hashlib.sha256(data).hexdigest() for data in files.values()}
    assert len(blob_gets) == len(files) + 1 and len(set(blob_gets) - file_blobs) == 1  # and the record
    assert all("range" not in h for h in relay.gets())


def snapshot_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and ".archive" not in p.parts}
