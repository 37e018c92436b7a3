"""Create and configure the ZeroMQ sockets of the Savant transport, in one place.

    sock = open_socket(context, url, send_hwm=1000, receive_hwm=1000,
                       fix_ipc_permissions=0o777, subscribe=b"", options={zmq.REQ_RELAXED: 1})

Every socket towards a Savant peer goes through :func:`open_socket`, so Savant's options are
applied the same way everywhere; failures raise :class:`EndpointError`, whose message names the
URL and the cause (``cannot bind dealer+bind:tcp://127.0.0.1:5555: Address already in use``).
A bound ipc path that another live process holds is refused rather than taken over. The options
and the ipc details: docs/protocol.md section 1, "Socket URLs and options".
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Mapping

import zmq
import zmq.asyncio

from mgfast.zmq.url import SocketUrl

LINGER_MS = 100  # Savant's linger on close: pending messages get 100 ms to leave
CONFIRMATION = b"OK"  # the acknowledgement payload of Savant readers

SOCKET_TYPES: dict[str, int] = {
    "pub": zmq.PUB,
    "dealer": zmq.DEALER,
    "req": zmq.REQ,
    "sub": zmq.SUB,
    "router": zmq.ROUTER,
    "rep": zmq.REP,
}


class EndpointError(RuntimeError):
    """A socket could not be created, configured, bound or connected; names the endpoint."""

    def __init__(self, url: SocketUrl | str, action: str, cause: BaseException | str):
        self.url = str(url)
        self.action = action
        self.cause = cause
        if isinstance(cause, (zmq.ZMQError, OSError)) and cause.strerror:
            reason = cause.strerror
        else:
            reason = str(cause)
        super().__init__(f"cannot {action} {self.url}: {reason}")


class StreamClosed(Exception):
    """The writer or reader was closed (or never started) while the operation was pending."""


def open_socket(
    context: zmq.asyncio.Context,
    url: SocketUrl,
    *,
    send_hwm: int | None = None,
    receive_hwm: int | None = None,
    fix_ipc_permissions: int | None = None,
    subscribe: bytes = b"",
    options: Mapping[int, int] | None = None,
) -> zmq.asyncio.Socket:
    """Return a bound or connected asyncio socket configured as Savant does; see module docs."""
    try:
        sock = context.socket(SOCKET_TYPES[url.socket_type])
    except zmq.ZMQError as exc:
        raise EndpointError(url, "create a socket for", exc) from exc
    try:
        _configure(sock, url, send_hwm, receive_hwm, subscribe, options)
        if url.bind:
            _bind(sock, url, fix_ipc_permissions)
        else:
            _connect(sock, url)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def _configure(sock: zmq.asyncio.Socket, url: SocketUrl, send_hwm: int | None,
               receive_hwm: int | None, subscribe: bytes, options: Mapping[int, int] | None
               ) -> None:
    try:
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        if send_hwm is not None:
            sock.setsockopt(zmq.SNDHWM, send_hwm)
        if receive_hwm is not None:
            sock.setsockopt(zmq.RCVHWM, receive_hwm)
        for option, value in (options or {}).items():
            sock.setsockopt(option, value)
        if url.socket_type == "sub":
            sock.setsockopt(zmq.SUBSCRIBE, subscribe)
    except zmq.ZMQError as exc:
        raise EndpointError(url, "configure", exc) from exc


def _bind(sock: zmq.asyncio.Socket, url: SocketUrl, fix_ipc_permissions: int | None) -> None:
    path = url.ipc_path if url.is_ipc else None
    if path is not None:
        if os.path.isdir(path):
            raise EndpointError(url, "bind", "the ipc path is a directory, not a socket file")
        if _ipc_in_use(path):
            raise EndpointError(url, "bind", "another process is bound to this ipc socket (is a "
                                "second gateway running with the same stream url?); stop it or "
                                "give this one another path")
        parent = os.path.dirname(path)
        if parent:
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise EndpointError(url, "create the directory of", exc) from exc
    try:
        sock.bind(url.endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(url, "bind", exc) from exc
    if path is not None and fix_ipc_permissions is not None:
        try:
            os.chmod(path, fix_ipc_permissions & 0o7777)  # as chmod(2): higher bits are not modes
        except OSError as exc:
            raise EndpointError(url, "apply fix_ipc_permissions to", exc) from exc


def _ipc_in_use(path: str) -> bool:
    """Whether a live process listens on the socket file at ``path`` (not a stale file)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _connect(sock: zmq.asyncio.Socket, url: SocketUrl) -> None:
    try:
        sock.connect(url.endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(url, "connect", exc) from exc

