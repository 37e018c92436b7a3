"""Embedded default configurations, used when ``mgfast server`` / ``mgfast client`` get no CONFIG.

They are kept as JSON text in the upstream format and go through the same loader as a user's
file, so they are validated identically and double as a minimal working example. Both run on a
fresh machine without certificates: plain HTTP on loopback, ZeroMQ over ipc sockets under
``/tmp/mgfast`` (the loader's users create parent directories on bind). Together they form a
working chain: a Savant producer connects to the client's ``router`` socket, the client POSTs to
the server on 127.0.0.1:8080, and a Savant consumer subscribes to the server's ``pub`` socket.
"""

from __future__ import annotations

EMBEDDED_SOURCE = "<embedded default>"

SERVER_DEFAULT_JSON = """\
{
  "ip": "127.0.0.1",
  "port": 8080,
  "out_stream": {
    "url": "pub+bind:ipc:///tmp/mgfast/server",
    "send_timeout": {"secs": 1, "nanos": 0},
    "send_retries": 3,
    "receive_timeout": {"secs": 1, "nanos": 0},
    "receive_retries": 3,
    "send_hwm": 1000,
    "receive_hwm": 1000,
    "inflight_ops": 100
  }
}
"""

CLIENT_DEFAULT_JSON = """\
{
  "ip": "127.0.0.1",
  "port": 8081,
  "url": "http://127.0.0.1:8080",
  "in_stream": {
    "url": "router+bind:ipc:///tmp/mgfast/client",
    "receive_timeout": {"secs": 1, "nanos": 0},
    "receive_hwm": 1000,
    "topic_prefix_spec": {"none": null},
    "source_cache_size": 1000,
    "inflight_ops": 100
  }
}
"""
