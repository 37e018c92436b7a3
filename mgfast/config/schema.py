"""The schema tables: which keys the server and client configs have, which are required, and
which value spec checks each one.

Every key is documented once, in README.md's "Configuration reference" table
(``tests/test_config_schema.py`` checks that each key here has a row there). Keys marked
``# mgfast`` are extensions; the rest are upstream 0.2.0's, accepted with upstream's meaning.
"""

from __future__ import annotations

from mgfast.auth import config as auth_config
from mgfast.config import checks
from mgfast.config.model import (
    BasicAuth,
    ClientConfig,
    ClientTls,
    HttpLimits,
    Identity,
    Peers,
    RetryStrategy,
    ServerConfig,
    ServerTls,
    SessionTickets,
    Statistics,
    WaitStrategy,
)
from mgfast.config.validation import (
    I32_MAX,
    I64_MAX,
    I64_MIN,
    U32_MAX,
    U64_MAX,
    Bool,
    Duration,
    FilePath,
    HttpUrl,
    Int,
    Ip,
    List,
    Mode,
    Number,
    Obj,
    SocketUrl,
    Str,
    Tagged,
    opt,
    req,
)
from mgfast.zmq.settings import InStreamConfig, OutStreamConfig, TopicPrefixSpec

_PORT = Int(0, 65535, example="8080")  # 0: the kernel picks one, as with upstream's bind
_IP = Ip()
_ZMQ_TIMEOUT = Duration(min_s=0.001, max_s=I32_MAX / 1000,
                        why="ZeroMQ timeouts are whole milliseconds in a 32-bit integer")
_ZMQ_COUNT = Int(1, I32_MAX, example="1000")
_RETRIES = Int(0, I32_MAX, example="3")
_POSITIVE = Duration(positive=True)
_ANY_DURATION = Duration(example='{"secs": 0, "nanos": 1000000}')
_COUNT = Int(1, U64_MAX, example="1000")
_STRICT = Bool()  # mgfast: warnings (unknown keys, ...) become errors


def _file(what: str, example: str) -> FilePath:
    return FilePath("file", what, f'"{example}"')


_IDENTITY = Obj({
    "certificate": req(_file("certificate", "/etc/certs/server.crt")),
    "key": req(_file("private key", "/etc/certs/server.key")),
}, Identity, example='{"certificate": "server.crt", "key": "server.key"}')

_PEERS = Obj({
    "lookup_hash_directory": req(FilePath("dir", "hash directory", '"/etc/certs/lookup-hash-dir"')),
    "crl_enabled": opt(Bool()),
}, Peers, example='{"lookup_hash_directory": "/etc/certs/lookup-hash-dir", "crl_enabled": true}')

_SESSION_TICKETS = Obj({  # mgfast
    "enabled": opt(Bool()),
    # at least a second: a key per shorter period would mostly make clients miss; at most the
    # 7 days TLS 1.3 allows a ticket to live (RFC 8446 4.6.1)
    "rotate_interval": opt(Duration(min_s=1.0, max_s=7 * 86400.0,
                                    why="a ticket lives at most one key period, and TLS 1.3 "
                                        "allows at most 7 days",
                                    example='{"secs": 3600, "nanos": 0}')),
}, SessionTickets, example='{"enabled": true, "rotate_interval": {"secs": 3600, "nanos": 0}}')

_SERVER_TLS = Obj({
    "identity": req(_IDENTITY),
    "peers": opt(_PEERS),
    "handshake_timeout": opt(_POSITIVE),  # mgfast
    "recheck_interval": opt(_POSITIVE),  # mgfast
    "session_tickets": opt(_SESSION_TICKETS),  # mgfast
}, ServerTls, example='{"identity": {"certificate": "server.crt", "key": "server.key"}}', hints={
    "peer_lookup_hash_directory": 'that is the pre-0.2.0 name; write "peers": '
                                  '{"lookup_hash_directory": "...", "crl_enabled": false}',
})

_CLIENT_TLS = Obj({
    "root_certificate": opt(_file("root certificate", "/etc/certs/ca.crt")),
    "identity": opt(_IDENTITY),
}, ClientTls, example='{"root_certificate": "ca.crt"}')

_STATISTICS = Obj({
    "frame_period": opt(Int(I64_MIN, I64_MAX, example="1000")),  # <= 1: a line per message
    "timestamp_period": opt(_ANY_DURATION),
    "history_size": opt(_COUNT),  # in upstream's samples; upstream ignores it
}, Statistics, example='{"frame_period": 1000}', post=checks.exactly_one_period)

_HTTP = Obj({  # mgfast
    "max_body_size": opt(Int(1, 2**40, example="33554432")),
    "max_line_size": opt(Int(64, 2**30, example="8192")),
    "max_header_size": opt(Int(64, 2**30, example="32768")),
    "header_timeout": opt(_POSITIVE),
    "body_timeout": opt(_POSITIVE),
    "idle_timeout": opt(_POSITIVE),
    "linger_time": opt(_POSITIVE),
    "linger_timeout": opt(_POSITIVE),
}, HttpLimits, example='{"max_body_size": 33554432}')

_METRICS = Obj({  # mgfast; turned into a Listen by checks.finish_listener
    "ip": opt(_IP),
    "port": req(_PORT),
}, dict, example='{"ip": "0.0.0.0", "port": 9100}')

_OUT_STREAM = Obj({
    "url": req(SocketUrl("writer")),
    "send_timeout": opt(_ZMQ_TIMEOUT),
    "send_retries": opt(_RETRIES),
    "receive_timeout": opt(_ZMQ_TIMEOUT),
    "receive_retries": opt(_RETRIES),
    "send_hwm": opt(_ZMQ_COUNT),
    "receive_hwm": opt(_ZMQ_COUNT),
    "fix_ipc_permissions": opt(Mode()),
    "inflight_ops": opt(Int(1, I32_MAX, example="100")),  # upstream ignores it; mgfast uses it
}, OutStreamConfig, post=checks.permissions_need_bind,
    example='{"url": "pub+bind:ipc:///tmp/server"}')

_TOPIC_PREFIX_SPEC = Tagged({
    "none": None,
    "source_id": Str(nonempty=False, example='"cam-1"'),
    "prefix": Str(nonempty=False, example='"cam-"'),
}, lambda name, value: TopicPrefixSpec() if value is None
   else TopicPrefixSpec(kind="source_id" if name == "source_id" else "prefix",
                        value=value.encode()),
   example='{"none": null}, {"source_id": "cam-1"} or {"prefix": "cam-"}')

_IN_STREAM = Obj({
    "url": req(SocketUrl("reader")),
    "receive_timeout": opt(_ZMQ_TIMEOUT),
    "receive_hwm": opt(_ZMQ_COUNT),
    "topic_prefix_spec": opt(_TOPIC_PREFIX_SPEC),
    "source_cache_size": opt(Int(1, I32_MAX, example="1000")),
    "inflight_ops": opt(Int(1, I32_MAX, example="100")),
    "fix_ipc_permissions": opt(Mode()),
}, InStreamConfig, post=checks.permissions_need_bind,
    example='{"url": "router+bind:ipc:///tmp/client"}')

_RETRY_STRATEGY = Tagged({
    "exponential": Obj({
        "initial_delay": req(_ANY_DURATION),
        "maximum_delay": req(_ANY_DURATION),
        "multiplier": req(Number(2, fix="write 2 or more: each retry waits multiplier times "
                                         "longer than the previous one, up to maximum_delay")),
    }, RetryStrategy, post=checks.retry_delays,
        example='{"initial_delay": {"secs": 0, "nanos": 1000000}, '
                '"maximum_delay": {"secs": 1, "nanos": 0}, "multiplier": 2}'),
}, lambda name, value: value,
   example='{"exponential": {"initial_delay": {"secs": 0, "nanos": 1000000}, '
           '"maximum_delay": {"secs": 1, "nanos": 0}, "multiplier": 2}}')

_WAIT_STRATEGY = Tagged({
    "yield": None,
    "sleep": _ANY_DURATION,
}, lambda name, value: WaitStrategy(kind="yield") if value is None
   else WaitStrategy(kind="sleep", sleep=value),
   example='"yield" or {"sleep": {"secs": 0, "nanos": 1000000}}')

_CACHE = Obj({
    "size": req(_COUNT),
    "usage": opt(Obj({
        "period": req(_POSITIVE),
        "evicted_threshold": req(Int(1, U32_MAX, example="10")),
    }, example='{"period": {"secs": 60, "nanos": 0}, "evicted_threshold": 10}')),
}, example='{"size": 10}')

_CREDENTIALS = Obj({
    "username": req(Str(example='"user"')),
    "password": req(Str(nonempty=False, example='"password"')),
}, example='{"username": "user", "password": "password"}')

_ETCD = Obj({
    "urls": req(List(Str(example='"http://etcd:2379"'), single_ok=True)),
    "tls": opt(Obj({
        "root_certificate": opt(_file("etcd root certificate", "etcd-ca.crt")),
        "identity": opt(Obj({
            "certificate": req(_file("etcd client certificate", "etcd-client.crt")),
            "key": req(_file("etcd client key", "etcd-client.key")),
        }, example='{"certificate": "etcd-client.crt", "key": "etcd-client.key"}')),
    }, example='{"root_certificate": "etcd-ca.crt"}')),
    "credentials": opt(_CREDENTIALS),
    "path": req(Str(example='"/users"')),
    "data_format": req(Str(choices=("json", "yaml"))),
    "connect_timeout": req(_POSITIVE),
    "lease_timeout": req(Duration(positive=True, example='{"secs": 60, "nanos": 0}')),
    "cache": req(_CACHE),
}, example='{"urls": ["http://etcd:2379"], "path": "/users", "data_format": "json", ...}')

_SERVER_AUTH = Obj({
    "basic": req(Obj({
        "etcd": req(_ETCD),
        "cache": req(_CACHE),
        "quarantine": opt(Obj({
            "failed_attempt_limit": req(Int(1, U32_MAX, example="3")),
            "period": req(_POSITIVE),
        }, example='{"failed_attempt_limit": 3, "period": {"secs": 60, "nanos": 0}}')),
    }, example='{"etcd": {...}, "cache": {"size": 10}}')),
}, lambda basic: basic, post=lambda kw, ctx, path: kw.update(
    basic=auth_config.build(kw["basic"], ctx.fail, path + ("basic",))),
   example='{"basic": {"etcd": {...}, "cache": {"size": 10}}}')

_CLIENT_AUTH = Obj({
    "basic": req(Obj({
        "username": req(Str(example='"user"')),
        "password": req(Str(nonempty=False, example='"password"')),
    }, BasicAuth, example='{"username": "user", "password": "password"}', hints={
        "id": 'upstream 0.2.0 calls it "username": rename "id" to "username"',
    })),
}, lambda basic: basic, example='{"basic": {"username": "user", "password": "password"}}')

_TOP_HINTS = {"ssl": 'upstream 0.2.0 calls this section "tls" (with "identity" and "peers")'}

SERVER = Obj({
    "ip": req(_IP),
    "port": req(_PORT),
    "out_stream": req(_OUT_STREAM),
    "tls": opt(_SERVER_TLS),
    "auth": opt(_SERVER_AUTH),
    "statistics": opt(_STATISTICS),
    "http": opt(_HTTP),  # mgfast
    "workers": opt(Int(1, 1024, example="4")),  # mgfast
    "metrics": opt(_METRICS),  # mgfast
    "strict": opt(_STRICT),  # mgfast
}, ServerConfig, post=checks.finish_listener, hints=_TOP_HINTS,
    example='{"ip": "0.0.0.0", "port": 8080, "out_stream": {"url": "pub+bind:ipc:///tmp/server"}}')

CLIENT = Obj({
    "ip": req(_IP),
    "port": req(_PORT),
    "url": req(HttpUrl()),
    "in_stream": req(_IN_STREAM),
    "retry_strategy": opt(_RETRY_STRATEGY),
    "wait_strategy": opt(_WAIT_STRATEGY),
    "tls": opt(_CLIENT_TLS),
    "auth": opt(_CLIENT_AUTH),
    "statistics": opt(_STATISTICS),
    "http": opt(_HTTP),  # mgfast
    "connections": opt(Int(1, 1024, example="4")),  # mgfast
    "batch": opt(Int(1, 65536, example="64")),  # mgfast
    "pipeline": opt(Int(1, 1024, example="16")),  # mgfast
    "drain_timeout": opt(Duration(example='{"secs": 10, "nanos": 0}')),  # mgfast
    "metrics": opt(_METRICS),  # mgfast
    "strict": opt(_STRICT),  # mgfast
}, ClientConfig, post=checks.finish_client, hints=_TOP_HINTS,
    example='{"ip": "0.0.0.0", "port": 8081, "url": "http://127.0.0.1:8080", '
            '"in_stream": {"url": "router+bind:ipc:///tmp/client"}}')
