"""A link that drops: a TCP proxy on loopback that cuts every connection every few seconds and counts the bytes.

A village clinic's link comes and goes.  Between a SuperNode and its
SuperLink this proxy forwards bytes unchanged (TLS passes through: the box
still checks the coordinator's certificate end to end) and, every
``cut_every_s`` seconds, closes every open connection in both directions,
mid-message if one is under way.  The byte counts let ``mammo bench sync`` and
the tests say how much was sent again because of the drops: the bytes that
crossed under drops minus the bytes the same transfer takes on a link that
stays up.

Threads, not asyncio: the proxy runs beside code that blocks (Flower's
processes, the tests), and a handful of connections is all it ever carries.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

BUFFER = 64 * 1024


@dataclass(frozen=True)
class ProxyStats:
    """Bytes forwarded client->upstream (``up``) and back (``down``), connections accepted and cut."""

    up: int
    down: int
    connections: int
    cuts: int


class DroppingProxy:
    """Forward ``127.0.0.1:port`` to ``upstream``; cut every open connection every ``cut_every_s`` (None: never)."""

    def __init__(self, upstream: tuple[str, int], cut_every_s: float | None = 3.0, port: int = 0) -> None:
        self.upstream = upstream
        self.cut_every_s = cut_every_s
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.2)  # accept() wakes to see a stop (closing a socket does not wake a thread blocked on it)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._up = self._down = self._connections = self._cuts = 0
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stats(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(self._up, self._down, self._connections, self._cuts)

    def start(self) -> DroppingProxy:
        for target in (self._accept_loop, self._cut_loop):
            t = threading.Thread(target=target, name=f"proxy-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> DroppingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cut(self) -> int:
        """Drop every open connection now (both sides see a reset); returns how many were open."""
        with self._lock:
            socks, self._open = list(self._open), set()
            if socks:
                self._cuts += 1
        for s in socks:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST, not a polite FIN
            with contextlib.suppress(OSError):
                s.close()
        return len(socks) // 2

    def _cut_loop(self) -> None:
        if self.cut_every_s is None:
            return
        while not self._stop.wait(self.cut_every_s):
            n = self.cut()
            if n:
                log.info("proxy %d: cut %d connection(s)", self.port, n)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += 1
                self._open.update((client, server))
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(BUFFER)
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    if up:
                        self._up += len(data)
                    else:
                        self._down += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            with contextlib.suppress(OSError):
                src.close()  # each socket is the source of exactly one pump, so each is closed once
