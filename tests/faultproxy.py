"""A TCP forwarder between the replicator and PostgreSQL that a test can cut.

Outage tests go through a real socket that really breaks, not through a mock
of the driver: :meth:`FaultProxy.cut` closes every forwarded connection at
once (the client sees the server vanish mid-query, the server sees its client
vanish) and resets every new connection until :meth:`FaultProxy.restore`.

Bounded and self-stopping: at most ``max_connections`` connections are
forwarded at a time (two threads each; more are reset), and the proxy closes
itself after ``lifetime`` seconds even if the test forgets to.

Import as ``from faultproxy import FaultProxy`` (``tests/`` is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 65536
_ACCEPT_TICK = 0.1  # seconds between checks of the stop flag while accepting


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN: a cut, not a goodbye."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Pair:
    """One forwarded connection: client <-> server, a pump thread per direction."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self._lock = threading.Lock()
        self._open_directions = 2
        self._cut = False
        self.threads = [
            threading.Thread(target=self._pump, args=(client, server), daemon=True),
            threading.Thread(target=self._pump, args=(server, client), daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)  # pass the half-close on
        with self._lock:
            self._open_directions -= 1
            done = self._open_directions == 0 or self._cut
        if done:
            self._finish()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes both pumps
        self._finish()

    def _finish(self) -> None:
        _reset(self.client)
        _reset(self.server)
        self.proxy._forget(self)


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` until cut."""

    def __init__(
        self,
        target_port: int,
        *,
        target_host: str = "127.0.0.1",
        max_connections: int = 64,
        lifetime: float = 900.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target = (target_host, target_port)
        self.max_connections = max_connections
        self.lifetime = lifetime
        self.connect_timeout = connect_timeout
        self.accepted = 0  # connections forwarded
        self.refused = 0  # connections reset on arrival (cut, or over the bound)
        self.cut_connections = 0  # forwarded connections closed by cut()
        self.cuts = 0
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()
        self._refusing = False
        self._stopped = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.settimeout(_ACCEPT_TICK)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._listener is not None, "the proxy has not been started"
        return int(self._listener.getsockname()[1])

    def dsn(self, dsn: str) -> str:
        """``dsn`` (a postgresql:// URL) pointed at the proxy instead of the server."""
        parts = urlsplit(dsn)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}"))

    def close(self) -> None:
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._cut_all()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- faults -----------------------------------------------------------------

    def cut(self) -> int:
        """Close every forwarded connection and reset new ones until restore().

        Returns how many connections were cut.
        """
        with self._lock:
            self._refusing = True
            self.cuts += 1
        return self._cut_all()

    def restore(self) -> None:
        """Forward new connections again."""
        with self._lock:
            self._refusing = False

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._pairs)

    # -- internals ----------------------------------------------------------------

    def _cut_all(self) -> int:
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.cut()
        with self._lock:
            self.cut_connections += len(pairs)
        return len(pairs)

    def _forget(self, pair: _Pair) -> None:
        with self._lock:
            self._pairs.discard(pair)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        deadline = time.monotonic() + self.lifetime
        try:
            while not self._stopped.is_set() and time.monotonic() < deadline:
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                self._admit(client)
        finally:
            self._stopped.set()
            with contextlib.suppress(OSError):
                self._listener.close()
            self._cut_all()

    def _admit(self, client: socket.socket) -> None:
        with self._lock:
            refuse = self._refusing or len(self._pairs) >= self.max_connections
            if refuse:
                self.refused += 1
        if refuse:
            _reset(client)
            return
        try:
            server = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError:
            with self._lock:
                self.refused += 1
            _reset(client)  # the server itself is down: the client sees that
            return
        client.settimeout(None)
        server.settimeout(None)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(self, client, server)
        with self._lock:
            if self._refusing:  # cut() ran while we were connecting
                self.refused += 1
                refuse = True
            else:
                self._pairs.add(pair)
                self.accepted += 1
        if refuse:
            _reset(client)
            _reset(server)
            return
        pair.start()
