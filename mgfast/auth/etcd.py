"""A small etcd v3 client: range, watch, put and delete under a key prefix, on grpc.aio.

The generated etcd v3 stubs come from ``aetcd`` (``aetcd.rpc``: maintained, and its generated
code works with the protobuf and grpcio releases mgfast installs). Its ``Client`` is not used:
it connects to one endpoint without TLS, while upstream's ``auth.basic.etcd`` takes several
URLs, a root certificate, a client certificate and user credentials. This module opens the
channel itself (TLS credentials when the URLs are https://, the next URL on each reconnect,
keepalive pings so a dead etcd is noticed) and authenticates with etcd's token scheme.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator

import grpc
from aetcd import rpc

from mgfast.auth.config import EtcdConfig

# etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time); 10 s + 5 s timeout
# notices a silent etcd within about 15 s, a killed one at once (the connection resets).
_CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),
)

PUT, DELETE = 0, 1

EtcdError = (grpc.RpcError, asyncio.TimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class Entry:
    key: bytes
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Change:
    kind: int  # PUT or DELETE
    entry: Entry


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix"."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class EtcdClient:
    """One channel at a time to one of the configured endpoints."""

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self.next_endpoint = 0
        self.endpoint = ""
        self.channel: grpc.aio.Channel | None = None
        self.metadata: tuple[tuple[str, str], ...] | None = None
        self.kv: rpc.KVStub | None = None
        self.watch_stub: rpc.WatchStub | None = None

    async def connect(self) -> None:
        """Open a channel to the next endpoint, authenticate; raises EtcdError on failure."""
        await self.close()
        config = self.config
        self.endpoint = config.endpoints[self.next_endpoint % len(config.endpoints)]
        self.next_endpoint += 1
        if config.secure:
            self.channel = grpc.aio.secure_channel(self.endpoint, _credentials(config),
                                                   options=_CHANNEL_OPTIONS)
        else:
            self.channel = grpc.aio.insecure_channel(self.endpoint, options=_CHANNEL_OPTIONS)
        await asyncio.wait_for(self.channel.channel_ready(), config.connect_timeout)
        self.metadata = None
        if config.credentials is not None:
            auth = rpc.AuthStub(self.channel)
            reply = await auth.Authenticate(
                rpc.AuthenticateRequest(name=config.credentials.username,
                                        password=config.credentials.password),
                timeout=config.connect_timeout)
            self.metadata = (("token", reply.token),)
        self.kv = rpc.KVStub(self.channel)
        self.watch_stub = rpc.WatchStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            channel, self.channel = self.channel, None
            await channel.close()

    async def range_prefix(self, prefix: bytes) -> tuple[int, list[Entry]]:
        """(store revision, entries) of every key under prefix, read at one revision."""
        reply = await self.kv.Range(  # type: ignore[union-attr]
            rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix)),
            timeout=self.config.connect_timeout, metadata=self.metadata)
        return reply.header.revision, [Entry(kv.key, kv.value, kv.mod_revision)
                                       for kv in reply.kvs]

    async def watch_prefix(self, prefix: bytes, start_revision: int
                           ) -> AsyncIterator[list[Change]]:
        """Changes under prefix from start_revision on, a batch per etcd response, until the
        stream fails (EtcdError) or etcd cancels it (e.g. the revision was compacted:
        raises WatchCanceled)."""
        opened = asyncio.Event()
        done = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=prefix, range_end=prefix_end(prefix), start_revision=start_revision))
            opened.set()
            await done.wait()  # keep the send side open: closing it ends the watch

        call = self.watch_stub.Watch(requests(), metadata=self.metadata)  # type: ignore[union-attr]
        try:
            async for reply in call:
                if reply.canceled:
                    raise WatchCanceled(reply.cancel_reason or
                                        f"compacted at revision {reply.compact_revision}")
                if reply.events:
                    yield [Change(ev.type, Entry(ev.kv.key, ev.kv.value, ev.kv.mod_revision))
                           for ev in reply.events]
            raise ConnectionResetError("etcd ended the watch stream")
        finally:
            done.set()
            call.cancel()

    async def put(self, key: bytes, value: bytes) -> int:
        reply = await self.kv.Put(rpc.PutRequest(key=key, value=value),  # type: ignore[union-attr]
                                  timeout=self.config.connect_timeout, metadata=self.metadata)
        revision: int = reply.header.revision
        return revision

    async def delete(self, key: bytes) -> int:
        """Delete one key; returns how many were deleted (0 or 1)."""
        reply = await self.kv.DeleteRange(  # type: ignore[union-attr]
            rpc.DeleteRangeRequest(key=key), timeout=self.config.connect_timeout,
            metadata=self.metadata)
        deleted: int = reply.deleted
        return deleted


class WatchCanceled(Exception):
    """etcd canceled the watch; resync from a fresh range."""


def check_tls(config: EtcdConfig) -> None:
    """Fail at start-up on etcd TLS files that cannot work (grpc would only report an
    unavailable etcd, over and over). Raises ValueError naming the field and the fix."""
    import ssl
    tls = config.tls
    if tls is None:
        return
    if tls.root_certificate is not None:
        try:
            ssl.create_default_context(cafile=str(tls.root_certificate))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"auth.basic.etcd.tls.root_certificate: {tls.root_certificate} is not a PEM CA "
                f"certificate ({exc}); give the CA that signed etcd's certificate") from None
    if tls.certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_cert_chain(str(tls.certificate), str(tls.key))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"auth.basic.etcd.tls.identity: {tls.certificate} and {tls.key} are not a PEM "
                f"certificate and its private key ({exc}); give etcd's client certificate "
                f"and the key it was issued for") from None


def _credentials(config: EtcdConfig) -> grpc.ChannelCredentials:
    tls = config.tls
    if tls is None:
        return grpc.ssl_channel_credentials()  # system CA store
    root = tls.root_certificate.read_bytes() if tls.root_certificate else None
    key = tls.key.read_bytes() if tls.key else None
    chain = tls.certificate.read_bytes() if tls.certificate else None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                        certificate_chain=chain)


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed etcd call, for logs."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out (auth.basic.etcd.connect_timeout)"
    return f"{type(exc).__name__}: {exc}"
