"""Savant socket URLs: ``<type>+<bind|connect>:<endpoint>`` or a bare endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

WriterType = Literal["pub", "dealer", "req"]
ReaderType = Literal["sub", "router", "rep"]
SocketType = Literal["pub", "dealer", "req", "sub", "router", "rep"]

WRITER_TYPES: tuple[str, ...] = ("pub", "dealer", "req")
READER_TYPES: tuple[str, ...] = ("sub", "router", "rep")
# Savant's defaults for a bare endpoint: writers are dealers, readers routers, both bind.
DEFAULT_WRITER: WriterType = "dealer"
DEFAULT_READER: ReaderType = "router"


@dataclass(frozen=True, slots=True)
class SocketUrl:
    socket_type: SocketType
    bind: bool
    endpoint: str

    @property
    def is_ipc(self) -> bool:
        return self.endpoint.startswith("ipc://")

    @property
    def ipc_path(self) -> str:
        return self.endpoint[len("ipc://"):]

    def __str__(self) -> str:
        return f"{self.socket_type}+{'bind' if self.bind else 'connect'}:{self.endpoint}"


def parse_socket_url(url: str, *, role: Literal["writer", "reader"]) -> SocketUrl:
    """Parse a Savant socket URL; raise ValueError with a message that says the fix."""
    allowed = WRITER_TYPES if role == "writer" else READER_TYPES
    socket_type: str = DEFAULT_WRITER if role == "writer" else DEFAULT_READER
    bind = True
    endpoint = url
    if "+" in url.split("://", 1)[0]:
        prefix, sep, endpoint = url.partition(":")
        socket_type, _, mode = prefix.partition("+")
        if socket_type not in allowed:
            raise ValueError(
                f"socket type {socket_type!r} in {url!r} is not a {role} type; use one of "
                f"{', '.join(allowed)}"
            )
        if mode not in ("bind", "connect"):
            raise ValueError(f"mode {mode!r} in {url!r} must be 'bind' or 'connect'")
        bind = mode == "bind"
    if endpoint.startswith("ipc://"):
        if len(endpoint) == len("ipc://"):
            raise ValueError(f"{url!r} has no ipc socket path; write e.g. ipc:///tmp/stream")
    elif endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{url!r} needs tcp://HOST:PORT with a port from 1 to 65535")
    else:
        raise ValueError(
            f"{url!r} is not a Savant socket URL; write <type>+<bind|connect>:ipc:///path "
            f"or <type>+<bind|connect>:tcp://host:port, type one of {', '.join(allowed)}"
        )
    return SocketUrl(socket_type, bind, endpoint)  # type: ignore[arg-type]
