"""A TCP proxy in front of the S3 test server that can be cut: a network lost part way.

`CuttingProxy(endpoint)` listens on a free port of 127.0.0.1 and forwards every connection to
the server. Armed with a pattern (`cut_at`), it cuts the network at the first request whose
bytes match it: that request is never forwarded, every open connection is closed, and every
later connection is closed as soon as it is accepted (the client sees "Connection was closed
before we received a valid response", as behind a proxy or NAT that dropped its state). Armed
with `drop_once`, it drops the connection of the first request matching the pattern only (that
request is never forwarded) and forwards every other one: a network failing for a moment.
"""

from __future__ import annotations

import re
import socket
import threading
from urllib.parse import urlsplit


class CuttingProxy:
    def __init__(self, endpoint: str) -> None:
        target = urlsplit(endpoint)
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.pattern: re.Pattern[bytes] | None = None
        self.once = False  # drop_once: the pattern drops one request, not the network
        self.edit: tuple[re.Pattern[bytes], bytes] | None = None  # rewrite's
        self.rewritten = 0  # requests rewrite changed
        self.dropped: list[bytes] = []  # the first line of each request dropped so
        self.cut = threading.Event()
        self.requests: list[bytes] = []  # the first line of each request forwarded
        self.refused = 0  # connections closed at once, the network being cut
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def cut_at(self, pattern: bytes) -> None:
        """Cut the network at the first request matching pattern (a regular expression over the
        bytes a client sends)."""
        self.pattern = re.compile(pattern)

    def drop_once(self, pattern: bytes) -> None:
        """Drop the connection of the first request matching pattern (never forwarded), once."""
        self.once = True
        self.pattern = re.compile(pattern)

    def rewrite(self, pattern: bytes, repl: bytes) -> None:
        """Replace what pattern matches in each request's bytes with repl before forwarding."""
        self.edit = (re.compile(pattern), repl)

    def close(self) -> None:
        self._closed = True
        self._cut_all()
        self.server.close()

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.cut.is_set():
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if from_client:
                    if self.cut.is_set():
                        break
                    pattern = self.pattern
                    if pattern is not None and pattern.search(data):
                        if self.once:
                            if self._drop_first(data):
                                break
                        else:
                            self.cut.set()
                            self._cut_all()
                            return
                    head = data.split(b"\r\n", 1)[0]
                    if re.match(rb"[A-Z]+ /", head):
                        self.requests.append(head)
                    if self.edit is not None:
                        data, n = self.edit[0].subn(self.edit[1], data)
                        self.rewritten += n
                dst.sendall(data)
        except OSError:
            pass
        self._close_pair(src, dst)

    def _drop_first(self, data: bytes) -> bool:
        """True for the first request drop_once's pattern matched (its connection is dropped)."""
        with self._lock:
            if self.pattern is None:
                return False
            self.pattern = None
            self.dropped.append(data.split(b"\r\n", 1)[0])
            return True

    def _close_pair(self, *socks: socket.socket) -> None:
        for s in socks:
            with self._lock:
                self._open.discard(s)
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _cut_all(self) -> None:
        with self._lock:
            socks = list(self._open)
        self._close_pair(*socks)
