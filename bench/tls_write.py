"""What sending one 100 KiB message over TLS costs the sender, the way the client can do it:
its CPU per message (user + system, its own thread only) for each way of writing, to a reader
thread that drains the socket. A quick measurement, not part of the load benchmark:

    .venv/bin/python -m bench.tls_write [--count 3000] [--size 102400]

- ``plain``: the bytes alone, one ``sendall`` (the kernel's copy and loopback TCP);
- ``memory-bio``: ``SSLObject`` over ``MemoryBIO``s, as uvloop's SSL transport and the server
  write: encrypt into the BIO, read it out, one ``sendall``;
- ``ssl-socket``: ``SSLSocket`` on the non-blocking socket (OpenSSL's socket BIO): one
  ``write`` per TLS record.

It bounds issue #11's 100 KB client target: with the seed guide's certificates and the
AES-128-GCM suite mgfast prefers, the TLS write alone is most of what the client may spend per
message (see bench/README.md). Each mode runs three times, alternating; each keeps its best.
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from bench.common import Certs
from mgfast.tls.ciphersuites import prefer_aes128

MODES = ("plain", "memory-bio", "ssl-socket")


def _drain(listener: socket.socket, server: ssl.SSLContext | None) -> None:
    """Accept one connection, finish the TLS handshake, then read raw bytes (never decrypted:
    only the sender is measured) until the peer closes."""
    conn, _ = listener.accept()
    if server is not None:
        _handshake(conn, lambda incoming, outgoing: server.wrap_bio(incoming, outgoing,
                                                                    server_side=True))
    buffer = bytearray(1 << 20)
    try:
        while conn.recv_into(buffer):
            pass
    except ConnectionResetError:
        pass  # the sender closed with our session tickets unread: the end all the same
    conn.close()


def _handshake(sock: socket.socket,
               wrap: Callable[[ssl.MemoryBIO, ssl.MemoryBIO], ssl.SSLObject]
               ) -> tuple[ssl.SSLObject, ssl.MemoryBIO]:
    """A TLS handshake over memory BIOs on a blocking socket: the object and its outgoing BIO."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = wrap(incoming, outgoing)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))
    if outgoing.pending:
        sock.sendall(outgoing.read())
    return tls, outgoing


def _thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def run(mode: str, certs: Certs, size: int, count: int) -> float:
    """The sender's CPU in us per message."""
    server = client = None
    if mode != "plain":
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(certs.server_crt, certs.server_key)
        prefer_aes128(server)
        client = ssl.create_default_context(cafile=str(certs.ca))
        prefer_aes128(client)
    listener = socket.create_server(("127.0.0.1", 0))
    reader = threading.Thread(target=_drain, args=(listener, server), daemon=True)
    reader.start()
    sock = socket.create_connection(listener.getsockname())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = os.urandom(size)
    if mode == "plain":
        started = _thread_cpu()
        for _ in range(count):
            sock.sendall(payload)
    elif mode == "memory-bio":
        assert client is not None  # made for every TLS mode
        tls, outgoing = _handshake(sock, lambda incoming, outgoing: client.wrap_bio(
            incoming, outgoing, server_hostname="127.0.0.1"))
        started = _thread_cpu()
        for _ in range(count):
            tls.write(payload)
            sock.sendall(outgoing.read())
    else:
        assert client is not None
        tls_sock = client.wrap_socket(sock, server_hostname="127.0.0.1")
        tls_sock.setblocking(False)
        sock = tls_sock
        started = _thread_cpu()
        for _ in range(count):
            while True:
                try:
                    tls_sock.send(payload)  # the same buffer again after SSLWantWriteError
                    break
                except ssl.SSLWantWriteError:
                    select.select([], [tls_sock], [])
    spent = _thread_cpu() - started
    sock.close()
    reader.join(30)
    listener.close()
    return spent / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tls_write", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--size", type=int, default=100 * 1024)
    args = parser.parse_args(argv)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mgfast-tls-write-") as tmp:
        certs = Certs.create(Path(tmp))
        for _ in range(3):
            for mode in MODES:
                spent = run(mode, certs, args.size, args.count)
                best[mode] = min(best.get(mode, spent), spent)
    print(f"sender CPU per {args.size:,} B message, best of 3 ({args.count} messages each):")
    for mode in MODES:
        print(f"  {mode:11s} {best[mode]:7.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
