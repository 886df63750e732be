"""The sd_notify protocol: READY, WATCHDOG and STATUS datagrams to systemd.

Only active when systemd (or a test) sets ``$NOTIFY_SOCKET``; otherwise every
call is a cheap no-op. Implemented directly on a unix datagram socket: the
protocol is one line of text per message.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = address
        self.enabled = bool(address)
        if address.startswith("@"):  # an abstract-namespace socket
            self.address = "\0" + address[1:]
        usec = os.environ.get("WATCHDOG_USEC", "")
        # Ping at half the watchdog period, or every 5 s when none is set.
        self.watchdog_every = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else 5.0
        self._last_ping = 0.0

    def send(self, *lines: str) -> None:
        if not self.enabled:
            return
        payload = "\n".join(lines).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect(self.address)
                sock.sendall(payload)
            except OSError:
                return  # systemd gone or socket not ours: never fatal

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_every:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")
