"""A TCP relay on 127.0.0.1 in front of a test server, misbehaving on purpose when asked.

Tests put one between a backend and its real server (sshd, nginx, moto) to play a network or a
server that fails: a connection cut after so many bytes, a slow link, a header the server
ignores, or (in a subclass that answers itself, tests/backends/s3_wire.py) whatever a test
needs to see on the wire. :meth:`Relay.close` closes the relay's listener and the connections it
made, nothing else.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable


class Relay:
    """Relays each connection to 127.0.0.1:``upstream`` from its own 127.0.0.1:``port``.

    ``cut_after``: the first connection that carries more than that many bytes (to the server
    if ``cut_requests``, else to the client) is cut there, both sockets closed, once (``cuts``
    counts it); it may be set at any time. ``rate``: at most that many bytes a second each way
    per connection. ``rewrite``: applied to every piece of data on its way to the server.
    """

    def __init__(self, upstream: int, *, cut_after: int | None = None, cut_requests: bool = True,
                 rate: int | None = None, rewrite: Callable[[bytes], bytes] | None = None) -> None:
        self.upstream = upstream
        self.cut_after, self.cut_requests, self.rate, self.rewrite = cut_after, cut_requests, rate, rewrite
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self, client: socket.socket) -> None:
        """Pass ``client``'s connection on to the server, both ways (a subclass may answer itself)."""
        server = socket.create_connection(("127.0.0.1", self.upstream))
        self._sockets += [client, server]
        threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
        self._pipe(server, client, False)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:  # the timeout, to look at the stop flag again
                continue
            threading.Thread(target=self.serve, args=(client,), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, to_server: bool) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                if to_server and self.rewrite is not None:
                    data = self.rewrite(data)
                limit = self.cut_after if to_server == self.cut_requests else None
                if limit is not None and self.cuts == 0 and sent + len(data) > limit:
                    target.sendall(data[:limit - sent])
                    self.cuts += 1
                    break
                target.sendall(data)
                sent += len(data)
                if self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:  # one side closed
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
