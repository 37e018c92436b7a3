"""Failed attempts shared between the workers of one server, so the quarantine limit holds.

The kernel spreads a client's connections over the workers (SO_REUSEPORT), so with counts
kept per worker an attacker would get ``failed_attempt_limit`` tries per worker. Instead every
worker tells the others each failure and success it sees, over Unix datagram sockets in a
directory the server creates for its workers (``MGFAST_AUTH_PEERS_DIR``), one socket per worker
process. Every worker applies the same events to its own bounded maps, so all of them quarantine
a (username, address) on the limit-th failure, wherever it happened. A datagram is a few dozen
bytes, sent only on failures and on a success after failures; nothing is sent per request.

A restarted worker starts with empty maps (as the whole server does after a restart); a dead
worker's socket is removed by whoever finds it refusing datagrams.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from pathlib import Path
from typing import Callable

log = logging.getLogger("mgfast.auth")

ENV = "MGFAST_AUTH_PEERS_DIR"
MAX_DATAGRAM = 1024  # an event: kind, address and username; longer usernames are not shared
_FAILURE, _SUCCESS = b"F", b"S"

Apply = Callable[[bool, str, str], None]  # (failed, username, address)


class PeerEvents:
    """This worker's socket in the directory, and sending to the others'."""

    def __init__(self, directory: str | os.PathLike[str], apply: Apply) -> None:
        self.directory = Path(directory)
        self.apply = apply
        self.path = self.directory / f"worker-{os.getpid()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(str(self.path))
        self.peers: list[Path] = []
        self.sent = 0  # datagrams sent (tests read it)

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._receive)

    def close(self) -> None:
        try:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        except RuntimeError:
            pass
        self.sock.close()
        self.path.unlink(missing_ok=True)

    def publish(self, failed: bool, username: str, address: str) -> None:
        """Tell every other worker about one failure (or a success that resets the count)."""
        data = (_FAILURE if failed else _SUCCESS) + address.encode() + b"\0" + username.encode()
        if len(data) > MAX_DATAGRAM:
            return
        for path in self._peer_paths():
            try:
                self.sock.sendto(data, str(path))
                self.sent += 1
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    path.unlink(missing_ok=True)  # a dead worker's socket
                elif exc.errno != errno.EAGAIN:  # a full peer buffer drops the event
                    log.debug("auth event not sent", extra={"peer": str(path),
                                                            "error": str(exc)})

    def _peer_paths(self) -> list[Path]:
        # Listed each time: failures are rare, workers come and go.
        return [p for p in self.directory.glob("worker-*.sock") if p != self.path]

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            kind, rest = data[:1], data[1:]
            address, sep, username = rest.partition(b"\0")
            if kind not in (_FAILURE, _SUCCESS) or not sep:
                continue
            try:
                self.apply(kind == _FAILURE, username.decode(), address.decode())
            except UnicodeDecodeError:
                continue
