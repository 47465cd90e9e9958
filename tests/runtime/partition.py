"""A TCP proxy in the test process that can cut a client off from PostgreSQL, like a partition.

Every connection through it is forwarded byte for byte until it is cut. Cut, it stops
forwarding in both directions but keeps every socket open: to the client the network looks
black-holed (its kernel still talks to the proxy, so nothing errors; the client waits), and
the server sees a silent peer. `heal()` resumes forwarding what was held, as a healed network
delivers a retransmitted segment: to a session the server has ended meanwhile, that is the
server's last message and then the end of the stream.

The cut can be armed on a needle: the first client chunk that completes its n-th occurrence
is held, so a test cuts a holder at an exact statement (e.g. mid-batch, after its DELETE and
before its fence check).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

CHUNK_BYTES = 65536


class PartitionProxy:
    def __init__(self, listen_port: int, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.flowing = threading.Event()
        self.flowing.set()
        self.cut_event = threading.Event()
        self.cut_at: float | None = None  # time.time() of the cut
        self._needle = b""
        self._needle_left = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._listener = socket.create_server(("127.0.0.1", listen_port), reuse_port=False)
        self.port = listen_port
        threading.Thread(target=self._accept, name="partition-accept", daemon=True).start()

    def cut_on(self, needle: bytes, occurrence: int = 1) -> None:
        """Cut at the client chunk that completes the `occurrence`-th sighting of `needle`."""
        with self._lock:
            self._needle, self._needle_left = needle, occurrence

    def cut(self) -> None:
        with self._lock:
            self._cut_locked()

    def heal(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self._closed = True
        self.flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _cut_locked(self) -> None:
        if self.flowing.is_set():
            self.flowing.clear()
            self.cut_at = time.time()
            self.cut_event.set()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        tail = b""
        try:
            while True:
                data = src.recv(CHUNK_BYTES)
                if from_client and data:
                    tail = self._watch(tail, data)
                self.flowing.wait()  # cut: hold this chunk and read nothing more
                if self._closed:
                    return
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)

    def _watch(self, tail: bytes, data: bytes) -> bytes:
        with self._lock:
            if not self._needle_left:
                return b""
            window = tail + data
            self._needle_left -= window.count(self._needle)
            if self._needle_left <= 0:
                self._needle_left = 0
                self._cut_locked()
            return window[-(len(self._needle) - 1) :] if len(self._needle) > 1 else b""
