"""The settings a Savant ZeroMQ writer or reader takes: upstream's ``out_stream`` / ``in_stream``.

They live with the transports (not in ``mgfast.config``) so that the ZeroMQ code depends on
nothing but itself; the config loader builds them. Defaults are Savant's (savant-rs 0.3.5
``WriterConfigBuilder`` / ``ReaderConfigBuilder``), among them ``fix_ipc_permissions`` = 0o777:
a bound ipc socket is opened to every user unless the config narrows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mgfast.zmq.url import SocketUrl

# Savant applies 0o777 to a bound ipc socket file when the config names no permissions, so a
# producer or consumer running under another uid can connect.
DEFAULT_IPC_PERMISSIONS = 0o777


@dataclass(frozen=True, kw_only=True, slots=True)
class OutStreamConfig:
    """A Savant writer (pub / dealer / req): timeouts in seconds, retries and HWMs as counts."""

    url: SocketUrl
    send_timeout: float = 1.0
    send_retries: int = 3
    receive_timeout: float = 1.0
    receive_retries: int = 3
    send_hwm: int = 1000
    receive_hwm: int = 1000
    fix_ipc_permissions: int = DEFAULT_IPC_PERMISSIONS
    inflight_ops: int = 100  # mgfast: messages a worker keeps in flight towards the egress


@dataclass(frozen=True, kw_only=True, slots=True)
class TopicPrefixSpec:
    """Which topics a reader accepts; ``value`` is empty for ``none``."""

    kind: Literal["none", "source_id", "prefix"] = "none"
    value: bytes = b""

    def accepts(self, topic: bytes) -> bool:
        if self.kind == "none":
            return True
        if self.kind == "source_id":
            return topic == self.value
        return topic.startswith(self.value)


@dataclass(frozen=True, kw_only=True, slots=True)
class InStreamConfig:
    """A Savant reader (sub / router / rep) and the client's in-flight window."""

    url: SocketUrl
    receive_timeout: float = 1.0
    receive_hwm: int = 1000
    topic_prefix_spec: TopicPrefixSpec = field(default_factory=TopicPrefixSpec)
    source_cache_size: int = 1000
    inflight_ops: int = 100
    fix_ipc_permissions: int = DEFAULT_IPC_PERMISSIONS
