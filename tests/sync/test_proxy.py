"""The dropping link: bytes pass unchanged and are counted; connections are cut, on demand and on a timer."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from sync.proxy import DroppingProxy


@pytest.fixture
def sink():
    """An upstream that reads everything and answers each connection with the SHA-256 of what it got, then closes."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    got: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(1)
            with conn:
                buf = bytearray()
                while len(buf) < 8 or len(buf) - 8 < int.from_bytes(buf[:8], "big"):
                    try:
                        chunk = conn.recv(65536)
                    except OSError:  # cut by the proxy, or the test moved on
                        break
                    if not chunk:
                        break
                    buf += chunk
                got.append(bytes(buf[8:]))
                try:
                    conn.sendall(hashlib.sha256(bytes(buf[8:])).digest())
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield server.getsockname(), got
    done.set()
    t.join(timeout=5)
    server.close()


def _send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(len(data).to_bytes(8, "big") + data)
        out = b""
        while len(out) < 32:
            chunk = s.recv(64)
            if not chunk:
                break
            out += chunk
        return out


def test_bytes_cross_unchanged_and_are_counted_each_way(sink) -> None:
    upstream, got = sink
    data = os.urandom(700_000)
    with DroppingProxy(upstream, cut_every_s=None) as proxy:
        answer = _send(proxy.port, data)
        deadline = time.monotonic() + 5
        while proxy.stats().down < 32 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = proxy.stats()
    assert answer == hashlib.sha256(data).digest()
    assert got == [data]
    assert stats.up == len(data) + 8 and stats.down == 32 and stats.connections == 1 and stats.cuts == 0


def test_a_cut_resets_an_open_connection_mid_transfer(sink) -> None:
    upstream, got = sink
    with DroppingProxy(upstream, cut_every_s=None) as proxy, socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall((10_000_000).to_bytes(8, "big") + b"x" * 1000)  # announces far more than it sends
        deadline = time.monotonic() + 5
        while proxy.stats().up < 1008 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.cut() == 1
        with pytest.raises(OSError):
            for _ in range(100):  # the peer's reset surfaces on the next send or receive
                s.sendall(b"y" * 65536)
                time.sleep(0.01)
        assert proxy.stats().cuts == 1


def test_the_timer_cuts_every_connection_again_and_again(sink) -> None:
    upstream, _ = sink
    with DroppingProxy(upstream, cut_every_s=0.2) as proxy:
        socks = [socket.create_connection(("127.0.0.1", proxy.port), timeout=10) for _ in range(2)]
        time.sleep(0.7)
        for s in socks:
            s.close()
        assert proxy.stats().cuts >= 1
        again = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        time.sleep(0.7)
        again.close()
        assert proxy.stats().cuts >= 2 and proxy.stats().connections == 3
