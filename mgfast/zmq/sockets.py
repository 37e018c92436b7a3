"""Create and configure the ZeroMQ sockets of the Savant transport, in one place.

Every socket mgfast opens towards a Savant peer goes through :func:`open_socket`, so the
options Savant applies are applied the same way everywhere:

- socket type from the URL (``pub|dealer|req`` writers, ``sub|router|rep`` readers);
- ``SNDHWM`` / ``RCVHWM`` when given, ``LINGER`` 100 ms (Savant's value);
- extra integer options (e.g. ``REQ_RELAXED``) before bind/connect;
- ``SUBSCRIBE`` for SUB sockets, from the topic prefix (``b""`` subscribes to everything);
- bind or connect; for ``ipc://`` with bind, the parent directories of the socket path are
  created first and ``fix_ipc_permissions`` is applied to the socket file afterwards.

Failures raise :class:`EndpointError`, whose message names the socket URL and the cause, so a
start-up error reads e.g. ``cannot bind dealer+bind:tcp://127.0.0.1:5555: Address already in
use``.

Note: libzmq removes a stale file at an ``ipc://`` path before binding it, so a second bind of
the same ipc path (in another process) silently takes the address over instead of failing.
"""

from __future__ import annotations

import os
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


def _configure(sock, url, send_hwm, receive_hwm, subscribe, options) -> None:
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


def _bind(sock, url: SocketUrl, fix_ipc_permissions: int | None) -> None:
    path = url.ipc_path if url.is_ipc else None
    if path is not None:
        if os.path.isdir(path):
            raise EndpointError(url, "bind", "the ipc path is a directory, not a socket file")
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
            os.chmod(path, fix_ipc_permissions)
        except OSError as exc:
            raise EndpointError(url, "apply fix_ipc_permissions to", exc) from exc


def _connect(sock, url: SocketUrl) -> None:
    try:
        sock.connect(url.endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(url, "connect", exc) from exc

