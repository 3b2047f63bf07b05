"""A relay on 127.0.0.1 in front of the test S3 server that shows what goes on the wire.

Requests the S3 backend makes without botocore's client (archive/backends/s3_lean.py) skip the
client's event hooks, so tests watch them here: each request's head and when it came, and, to
play a failing server, answers of its own for the next GETs or a cut answer.
"""

from __future__ import annotations

import socket
import threading
import time

from tests.relay import Relay


def http_answer(status: str, body: bytes = b"", headers: str = "") -> bytes:
    """A whole HTTP/1.1 answer that closes its connection."""
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n").encode() + body


def s3_error(status: str, code: str, headers: str = "") -> bytes:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
    return http_answer(status, body, "Content-Type: application/xml\r\n" + headers)


class WireRelay(Relay):
    """A relay from 127.0.0.1:``port`` to the S3 server, one request per connection.

    ``heads``: the head of each request (request line, headers with lower-case names, and
    ``at``: the ``time.monotonic()`` of its arrival).
    ``answers``: raw answers sent, in turn, to the next GETs instead of passing them on.
    ``cut_next_get``: the answer to the next GET passed on is cut after that many bytes.
    ``delay``: seconds each request waits before it is passed on.
    """

    def __init__(self, upstream: int, delay: float = 0.0) -> None:
        self.delay = delay
        self.heads: list[dict[str, str]] = []
        self.answers: list[bytes] = []
        self.cut_next_get: int | None = None
        self._lock = threading.Lock()
        super().__init__(upstream)

    def gets(self) -> list[dict[str, str]]:
        return [head for head in self.heads if head["method"] == "GET"]

    def serve(self, client: socket.socket) -> None:
        """Answer one request: from ``answers``, or passed on (perhaps cut)."""
        with client:
            request = _read_request(client)
            if request is None:
                return
            head, raw = request
            with self._lock:
                self.heads.append(head)
                answer = self.answers.pop(0) if head["method"] == "GET" and self.answers else None
                cut = None
                if head["method"] == "GET" and answer is None:  # a GET answered here is not the one cut
                    cut, self.cut_next_get = self.cut_next_get, None
            if answer is not None:
                client.sendall(answer)
                return
            time.sleep(self.delay)
            with socket.create_connection(("127.0.0.1", self.upstream)) as server:
                server.sendall(raw)
                sent = 0
                while data := server.recv(65536):  # moto closes each connection after its answer
                    if cut is not None and sent + len(data) > cut:
                        client.sendall(data[:cut - sent])
                        return
                    client.sendall(data)
                    sent += len(data)


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
    head = {"method": method, "target": target, "at": repr(time.monotonic())}  # when it arrived
    head.update((name.strip().lower(), value.strip()) for name, value in (line.split(":", 1) for line in lines[1:]))
    while len(body) < int(head.get("content-length", "0")):
        body += sock.recv(65536)
    return head, data[:len(head_text) + 4] + body
