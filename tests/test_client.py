"""``mgfast client`` as a process, between real peers.

savant-rs writers feed the client; the client feeds a real ``mgfast server`` (whose out_stream
feeds a savant-rs reader) or ``tests.upstream_stub`` (an upstream-style server that takes one
Media per POST and scripts its answers). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import functools
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

import pytest
import zmq

from mgfast.config.model import ClientConfig
from mgfast.http import client_connection as cc
from tests import savant_peers as sp
from tests.gateway_process import GatewayProcess, http_get, server_config
from tests.seed_ca import SeedCa
from tests.upstream_stub import DROP, UpstreamStub
from tests.util import arun, endpoint, free_port, scaled, wait_until

WRITER_FOR = {"sub": "pub", "router": "dealer", "rep": "req"}
BIG = os.urandom(3 * 1024 * 1024)  # a multi-megabyte extra part




# the client's default requests in flight per connection
PIPELINE = next(f.default for f in dataclasses.fields(ClientConfig) if f.name == "pipeline")


def client_config(in_url: str, server_url: str, **overrides) -> dict:
    """An upstream-format client config (every upstream key spelled out) on a free port."""
    config = {
        "ip": "127.0.0.1",
        "port": free_port(),
        "url": server_url,
        "in_stream": {
            "url": in_url,
            "receive_timeout": {"secs": 1, "nanos": 0},
            "receive_hwm": 1000,
            "topic_prefix_spec": {"none": None},
            "source_cache_size": 1000,
            "inflight_ops": 100,
        },
        "retry_strategy": {"exponential": {
            "initial_delay": {"secs": 0, "nanos": 1_000_000},
            "maximum_delay": {"secs": 0, "nanos": 200_000_000},
            "multiplier": 2}},
        "wait_strategy": {"sleep": {"secs": 0, "nanos": 1_000_000}},
    }
    config.update(overrides)
    return config


def one_worker_server(out_url: str, **overrides) -> dict:
    """A server config with one worker process: starts faster; the client opens several
    connections, which one worker serves as well as many."""
    return server_config(out_url, workers=1, **overrides)


def counters(client: GatewayProcess) -> dict[str, int]:
    """The counters of the client's final ``msg=stopped`` log line."""
    for line in client.log().splitlines():
        if "msg=stopped" in line:
            return {k: int(v) for k, _, v in (p.partition("=") for p in line.split())
                    if v.isdigit()}
    raise AssertionError(f"no msg=stopped line in the client log:\n{client.log()}")


def stop_client(client: GatewayProcess) -> dict[str, int]:
    """SIGTERM the client; it must exit 0 without having logged an error or a traceback (an
    exception that reached the event loop's handler is logged at level=error)."""
    assert client.stop() == 0, client.log()
    log = client.log()
    assert "level=error" not in log and "Traceback" not in log, log
    return counters(client)


def payload(source: str, i: int, big: bool = False) -> bytes:
    head = f"{source}:{i}:".encode()
    return head + BIG if big else head


@functools.lru_cache(maxsize=None)
def user_message(topic: str, extra: bytes) -> sp.Message:
    """The Savant message that carries ``extra``, built once: savant-rs numbers each new
    message (seq_id), so the bytes to compare with are those of the object that was sent."""
    return sp.user_data(topic)


def plan(sources: int, per_source: int, big_every: int = 0) -> list[tuple[str, bytes]]:
    """Interleaved (topic, extra) pairs: round-robin over the sources."""
    out = []
    for i in range(per_source):
        for s in range(sources):
            big = bool(big_every) and i % big_every == big_every - 1
            out.append((f"cam-{s}", payload(f"cam-{s}", i, big)))
    return out


def by_topic(items, topic_of=lambda m: m[0]):
    grouped: dict = {}
    for item in items:
        grouped.setdefault(topic_of(item), []).append(item)
    return grouped


def warm_up(writer: sp.SavantWriter, seen: callable, topic: str = "warm-up") -> None:
    """PUB/SUB joins late: publish probes until one went all the way through."""
    def probe() -> bool:
        writer.send(topic, sp.user_data(topic), b"probe")
        time.sleep(0.02)
        return seen()
    wait_until(probe, timeout=15, what="a probe through the subscription")


# ---- end to end: savant-rs writer -> client -> server -> savant-rs reader ----------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("reader_type, mode, transport", [
    ("sub", "bind", "tcp"), ("sub", "connect", "ipc"),
    ("router", "bind", "ipc"), ("router", "connect", "tcp"),
    ("rep", "bind", "tcp"), ("rep", "connect", "ipc"),
])
def test_savant_writer_to_client_to_server_to_savant_reader(tmp_path, reader_type, mode,
                                                            transport):
    out = endpoint("ipc", tmp_path, "out")
    into = endpoint(transport, tmp_path, "in")
    writer_type = WRITER_FOR[reader_type]
    # savant-rs writers default to send_hwm 50; a PUB drops what is over it, so a burst of 60
    # messages needs a larger one (the other types would block instead)
    writer = sp.SavantWriter(f"{writer_type}+{'connect' if mode == 'bind' else 'bind'}:{into}",
                             receive_timeout=5.0, receive_retries=1, send_hwm=1000)
    with sp.SavantReader(f"router+bind:{out}") as final, \
            GatewayProcess("server", one_worker_server(f"dealer+connect:{out}"), tmp_path) as server:
        if mode == "connect":
            writer.start()
        with GatewayProcess("client", client_config(f"{reader_type}+{mode}:{into}",
                                                    server.url), tmp_path) as client:
            if mode == "bind":
                writer.start()
            try:
                if writer_type == "pub":
                    warm_up(writer, lambda: final.messages)
                sent = plan(sources=3, per_source=20, big_every=10)
                expected_result = "ack" if writer_type == "req" else "success"
                for topic, extra in sent:
                    assert writer.send(topic, user_message(topic, extra), extra) == expected_result
                for s in range(3):
                    assert writer.send_eos(f"cam-{s}") in ("ack", "success")
                received = final.wait_for(len(sent) + 3, timeout=30,
                                          where=lambda m: m.topic != b"warm-up")
            finally:
                writer.close()
            stats = stop_client(client)
    got = by_topic(received, lambda m: m.topic)
    for s in range(3):
        topic = f"cam-{s}"
        *frames, eos = got[topic.encode()]
        assert [m.frames for m in frames] == [
            [topic.encode(), sp.to_bytes(user_message(topic, extra)), extra]
            for t, extra in sent if t == topic]
        assert eos.eos and not any(m.eos for m in frames)
    assert len(received) == len(sent) + 3
    assert stats["rejected"] == stats["undelivered"] == stats["in_flight"] == 0
    assert stats["forwarded"] == stats["read"] >= len(sent) + 3


# ---- upstream API: one Media per POST, retries, rejections, fallback ---------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("batch", [1, 16])
def test_upstream_api_exactly_with_retries_and_rejections(tmp_path, batch):
    """Against an upstream-style server: 5xx retried in order, 400/413 skipped, a dropped
    connection resent (counted as a possible duplicate); with batch > 1 the client negotiates,
    finds no batch support and speaks the upstream API all the same."""
    sent = plan(sources=3, per_source=15)
    script = {
        payload("cam-0", 2): [503, 503, 200],
        payload("cam-1", 4): [502, 504, 200],
        payload("cam-2", 6): [500, 200],
        payload("cam-0", 7): [400],
        payload("cam-1", 9): [413],
        payload("cam-2", 11): [DROP, 200],
    }

    def respond(media, attempt):
        answers = script.get(media.data[0], [200])
        return answers[min(attempt, len(answers)) - 1]

    into = endpoint("tcp", tmp_path, "in")
    with UpstreamStub(respond) as stub:
        config = client_config(f"router+bind:{into}", stub.url, batch=batch, pipeline=1,
                               auth={"basic": {"username": "edge-1", "password": "s3cret"}})
        with GatewayProcess("client", config, tmp_path) as client, \
                sp.SavantWriter(f"dealer+connect:{into}") as writer:
            status, body = http_get(client.url + "/health")
            assert (status, body) == (200, b'{"status":"healthy"}')
            for topic, extra in sent:
                assert writer.send(topic, user_message(topic, extra), extra) == "success"
            accepted = stub.wait_accepted(len(sent) - 2 + 1)  # one came twice
            stats = stop_client(client)

    rejected = {payload("cam-0", 7), payload("cam-1", 9)}
    want = [(t, e) for t, e in sent if e not in rejected]
    assert len(accepted) == len(want) + 1  # the dropped one came twice
    assert accepted.count(next(m for m in accepted if m.data[0] == payload("cam-2", 11))) == 2
    deduplicated = [m for i, m in enumerate(accepted) if m not in accepted[:i]]
    for topic, items in by_topic(want).items():
        assert [m.frames for m in deduplicated if m.topic == topic.encode()] == [
            [topic.encode(), sp.to_bytes(user_message(topic, extra)), extra]
            for _, extra in items]
    for request in stub.posts():  # exactly upstream's API, every time
        assert request.path == "/"
        assert request.headers["content-type"] == "application/protobuf"
        assert request.headers["authorization"] == "Basic " + base64.b64encode(
            b"edge-1:s3cret").decode()
    health_checks = [r for r in stub.requests if r.method == "GET"]
    assert (len(health_checks) > 0) == (batch > 1)
    assert stub.connections <= 8  # keep-alive: a handful of connections for ~60 requests
    # possible duplicates: the dropped connection, and the 502 (AckTimeout) and 500 answers
    assert stats["rejected"] == 2 and stats["duplicates_possible"] == 3
    assert stats["retried"] == 2 + 2 + 1 + 1
    assert stats["read"] == len(sent) and stats["forwarded"] == len(sent) - 2
    assert stats["batch_requests"] == 0
    log = client.log()
    assert "msg=\"message rejected; skipped\" topic=cam-0" in log and "status=400" in log
    poison = payload("cam-1", 9)
    assert f"size={5 + len(sp.to_bytes(user_message('cam-1', poison))) + len(poison)}" in log


@pytest.mark.timeout(60)
def test_batch_partial_failure_resends_only_the_rest_in_order(tmp_path):
    """Against a batch-capable peer: many messages per request, a transient failure inside a
    batch resends from that item on, a poison item is skipped, order holds, no duplicates."""
    sent = plan(sources=2, per_source=100)
    fail_once = {payload("cam-0", 30), payload("cam-1", 55), payload("cam-0", 80)}
    poison = payload("cam-1", 10)

    def respond(media, attempt):
        if media.data[0] == poison:
            return 400
        if media.data[0] in fail_once and attempt == 1:
            return 504
        return 200

    into = endpoint("ipc", tmp_path, "in")
    with UpstreamStub(respond, batch=True, delay=0.01) as stub:
        metrics = {"ip": "127.0.0.1", "port": free_port()}
        config = client_config(f"router+bind:{into}", stub.url, batch=64, connections=1,
                               metrics=metrics)
        with GatewayProcess("client", config, tmp_path) as client, \
                sp.SavantWriter(f"dealer+connect:{into}") as writer:
            for topic, extra in sent:
                writer.send(topic, sp.user_data(topic), extra)
            accepted = stub.wait_accepted(len(sent) - 1)

            def scraped() -> bool:  # the counters reach /metrics within the export interval
                _, text = http_get(f"http://127.0.0.1:{metrics['port']}/metrics")
                return (f"mgfast_client_messages_forwarded_total {len(sent) - 1}.0".encode()
                        in text and b"mgfast_client_messages_rejected_total 1.0" in text)
            wait_until(scraped, timeout=10, what="the counters on /metrics")
            stats = stop_client(client)
    assert len(accepted) == len(sent) - 1 == len(set(accepted))
    for topic, items in by_topic([(t, e) for t, e in sent if e != poison]).items():
        assert [m.data[0] for m in accepted if m.topic == topic.encode()] == [e for _, e in items]
    batches = [r for r in stub.posts() if r.headers["content-type"] == "application/x-mgfast-batch"]
    assert batches and stats["batch_requests"] == len(batches)
    assert stats["rejected"] == 1 and stats["duplicates_possible"] == 0
    assert stats["forwarded"] == len(sent) - 1 and stats["requests"] < len(sent) / 2


# ---- the server dies and comes back ------------------------------------------------------------

@pytest.mark.timeout(90)
@pytest.mark.parametrize("batch", [1, 32])
def test_server_killed_and_restarted_mid_stream_loses_nothing(tmp_path, batch):
    """SIGKILL the server mid-stream, start it again: every message arrives, in order per
    source; duplicates only as many as the client counted as possible (at-least-once)."""
    out = endpoint("ipc", tmp_path, "out")
    into = endpoint("tcp", tmp_path, "in")
    # REQ out_stream: the server answers 200 only once the reader confirmed, so a SIGKILL cannot
    # lose a message inside the server either
    config = server_config(f"req+connect:{out}", workers=2)
    sent = plan(sources=3, per_source=150)
    with sp.SavantReader(f"rep+bind:{out}") as final:
        server = GatewayProcess("server", config, tmp_path)
        try:
            with GatewayProcess("client", unblocking_client_config(
                    into, server.url, len(sent), batch=batch), tmp_path) as client, \
                    sp.SavantWriter(f"dealer+connect:{into}") as writer:
                results: list[str] = []
                feeder = threading.Thread(target=lambda: results.extend(
                    writer.send(t, sp.user_data(t), e) for t, e in sent), daemon=True)
                feeder.start()
                final.wait_for(60, timeout=30)
                kill_tree(server.proc.pid)
                server.stop()
                wait_until(lambda: "delivery failed; retrying" in client.log(), timeout=10,
                           what="the client to notice")
                server = GatewayProcess("server", config, tmp_path)
                feeder.join(30)
                assert set(results) == {"success"}, collections.Counter(results)
                received = wait_until(
                    lambda: _all_arrived(final, sent), timeout=40, what="every message")
                stats = stop_client(client)
        finally:
            server.stop()
    assert_all_in_order(received, sent, stats, window=batch * PIPELINE)
    assert stats["retried"] > 0
    assert (stats["batch_requests"] > 0) == (batch > 1)  # negotiated with the mgfast server


def assert_all_in_order(received: list[tuple[bytes, bytes]], sent: list[tuple[str, bytes]],
                        stats: dict[str, int], window: int) -> None:
    """Every sent message arrived, new ones in per-source order; a repeat only of one of the
    last ``window`` (what was in flight), and no more repeats than the client counted as
    possible (at-least-once)."""
    duplicates = len(received) - len(set(received))
    assert duplicates <= stats["duplicates_possible"]
    for topic, items in by_topic(sent).items():
        mine = [e for t, e in received if t == topic.encode()]
        order = {e: i for i, (_, e) in enumerate(items)}
        newest = -1
        for e in mine:
            assert order[e] <= newest + 1, f"{topic}: {order[e]} after {newest}"
            assert newest - order[e] < window, f"{topic}: {order[e]} repeated after {newest}"
            newest = max(newest, order[e])
        assert newest == len(items) - 1
    assert stats["undelivered"] == 0


def unblocking_client_config(into: str, server_url: str, messages: int, **overrides) -> dict:
    """A client whose in_stream window holds a whole test stream, so the savant-rs producer
    never blocks: savant-rs 0.3.0's BlockingWriter (dealer) reports success for messages it
    then never delivers once it has been blocked for several seconds (1 of 1200 after 8 s, 4
    after 20 s, against a plain pyzmq ROUTER; a pyzmq DEALER loses none), which would be
    blamed on the gateway."""
    config = client_config(f"router+bind:{into}", server_url, **overrides)
    config["in_stream"]["inflight_ops"] = messages + 100
    return config


def stream_through(tmp_path, server_out: str, reader_url: str, sent, during, *,
                   send_hwm: int = 1000, batch: int = 1):
    """savant-rs writer -> mgfast client -> mgfast server (2 workers) -> savant-rs reader;
    ``during(server, reader)`` runs once 60 messages arrived. Returns (received, stats)."""
    into = endpoint("tcp", tmp_path, "in")
    config = server_config(server_out, workers=2)
    config["out_stream"]["send_hwm"] = send_hwm
    with sp.SavantReader(reader_url, receive_hwm=100) as final, \
            GatewayProcess("server", config, tmp_path) as server, \
            GatewayProcess("client", unblocking_client_config(into, server.url, len(sent),
                                                              batch=batch), tmp_path) as client, \
            sp.SavantWriter(f"dealer+connect:{into}") as writer:
        def feed() -> None:  # a producer that resends what its send timeout refused
            for t, e in sent:
                while (result := writer.send(t, sp.user_data(t), e)) != "success":
                    assert result == "timeout", result

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        final.wait_for(60, timeout=30)
        during(server, final)
        feeder.join(60)
        assert not feeder.is_alive(), "the producer never got everything sent"
        received = wait_until(lambda: _all_arrived(final, sent), timeout=60,
                              what="every message")
        stats = stop_client(client)
    return received, stats


def test_a_consumer_stalled_20s_then_resumed_gets_everything_in_order(tmp_path):
    """The reader stops reading for 20 s: the out_stream fills, the server answers 504, the
    client backs off and resends; once it reads again, every message arrives in order."""
    where = endpoint("ipc", tmp_path, "out")
    # 32 KiB each: the buffers between writer and reader fill within the stall
    sent = [(t, e + b"." * 32768) for t, e in plan(sources=3, per_source=400)]

    def stall(server, final):
        final.pause()
        time.sleep(20)  # the stall itself is what is under test
        final.resume()

    received, stats = stream_through(tmp_path, f"dealer+connect:{where}",
                                     f"router+bind:{where}", sent, stall, send_hwm=100)
    assert_all_in_order(received, sent, stats, window=PIPELINE)
    assert stats["retried"] > 0  # the stall was felt


@pytest.mark.parametrize("victim", ["worker-0", "worker-1"])
def test_a_worker_killed_mid_stream_loses_nothing(tmp_path, victim):
    """SIGKILL a worker mid-stream (REQ out_stream: 200 means the consumer has it): the client
    resends what the dead worker had not answered to the other worker; everything arrives."""
    where = endpoint("ipc", tmp_path, "out")
    sent = plan(sources=3, per_source=300)

    def kill(server, final):
        pid = server.children()[victim]
        os.kill(pid, signal.SIGKILL)

    received, stats = stream_through(tmp_path, f"req+connect:{where}", f"rep+bind:{where}",
                                     sent, kill)
    assert_all_in_order(received, sent, stats, window=PIPELINE)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (the server's supervisor, workers, egress)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _all_arrived(final: sp.SavantReader, sent) -> list[tuple[bytes, bytes]]:
    """What ``final`` received, once it holds every message of ``sent``; until then raises
    with what is missing (per topic, the first one) and the consumer's own failures, so a
    timeout says whether messages were lost or the consumer stopped."""
    received = [(m.topic, m.extra[0]) for m in list(final.messages)]
    missing = [(t, e) for t, e in sent if e not in {e for _, e in received}]
    if not missing:
        return received
    first = {}
    for t, e in missing:
        first.setdefault(t, e)
    raise AssertionError(f"{len(missing)} of {len(sent)} missing, first per topic {first}; "
                         f"reader errors {final.errors!r}, other results {final.other[:5]!r}")


# ---- the server rejects one message: the stream goes on ----------------------------------------

@pytest.mark.timeout(60)
def test_server_answering_400_and_413_does_not_block_the_stream(tmp_path):
    out = endpoint("ipc", tmp_path, "out")
    into = endpoint("ipc", tmp_path, "in")
    config = one_worker_server(f"dealer+connect:{out}", http={"max_body_size": 1024 * 1024})
    message = sp.to_bytes(sp.user_data("cam-1"))
    good = [[b"cam-1", message, b"%d" % i] for i in range(20)]
    poison = [b"\xff\xfe", message, b"bad topic"]  # the server answers 400: topic not UTF-8
    too_big = [b"cam-1", message, BIG]  # over max_body_size: 413
    # Well-formed at the top, broken inside (a truncated varint in user_data): the client's
    # reader reads only the top level for the end-of-stream test, the server checks it all: 400
    deep = [b"cam-1", b"\x0a\x050.2.0" + bytes([8 << 3 | 2, 1, 0xFF]), b"broken inside"]
    stream = good[:5] + [poison] + good[5:10] + [too_big] + good[10:15] + [deep] + good[15:]
    with sp.SavantReader(f"router+bind:{out}") as final, \
            GatewayProcess("server", config, tmp_path) as server, \
            GatewayProcess("client", client_config(f"router+bind:{into}", server.url),
                           tmp_path) as client:
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        try:
            dealer.connect(into)
            for frames in stream:
                dealer.send_multipart(frames)
            received = final.wait_for(len(good), timeout=20)
        finally:
            dealer.close(linger=1000)
            context.term()
        stats = stop_client(client)
    assert [m.frames for m in received] == good
    assert stats["rejected"] == 3 and stats["forwarded"] == len(good)
    log = client.log()
    assert "topic=\\xff\\xfe" in log and "status=400" in log and "UTF-8" in log
    assert "truncated varint" in log and "user_data" in log
    assert f"size={len(b'cam-1') + len(message) + len(BIG)}" in log and "status=413" in log


# ---- HTTPS -------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_https_with_root_certificate_and_client_identity(tmp_path):
    """The seed guide's certificates: the client trusts the CA (root_certificate) and presents
    its certificate (identity); the server requires it (mutual TLS)."""
    seed = SeedCa.create(tmp_path / "pki")
    out = endpoint("ipc", tmp_path, "out")
    into = endpoint("tcp", tmp_path, "in")
    sconfig = one_worker_server(f"dealer+connect:{out}", tls={
        "identity": {"certificate": str(seed.server_crt), "key": str(seed.server_key)},
        "peers": {"lookup_hash_directory": str(seed.hash_dir), "crl_enabled": True}})
    sent = plan(sources=2, per_source=10, big_every=5)
    with sp.SavantReader(f"router+bind:{out}") as final, \
            GatewayProcess("server", sconfig, tmp_path) as server:
        assert server.url.startswith("https://")
        cconfig = client_config(f"router+bind:{into}", server.url, tls={
            "root_certificate": str(seed.ca_crt),
            "identity": {"certificate": str(seed.client_crt), "key": str(seed.client_key)}})
        with GatewayProcess("client", cconfig, tmp_path) as client, \
                sp.SavantWriter(f"dealer+connect:{into}") as writer:
            for topic, extra in sent:
                writer.send(topic, sp.user_data(topic), extra)
            received = final.wait_for(len(sent), timeout=30)
            stats = stop_client(client)
    for topic, items in by_topic(sent).items():
        assert [m.extra[0] for m in received if m.topic == topic.encode()] == [
            e for _, e in items]
    assert stats["forwarded"] == len(sent) and stats["retried"] == 0


@pytest.mark.timeout(60)
def test_tls_rejection_is_retried_and_nothing_is_dropped(tmp_path):
    """Without a client certificate the mutual-TLS server refuses the handshake: the client
    keeps the message and retries, logging why; it is not delivered, not dropped."""
    seed = SeedCa.create(tmp_path / "pki")
    out = endpoint("ipc", tmp_path, "out")
    into = endpoint("tcp", tmp_path, "in")
    sconfig = one_worker_server(f"dealer+connect:{out}", tls={
        "identity": {"certificate": str(seed.server_crt), "key": str(seed.server_key)},
        "peers": {"lookup_hash_directory": str(seed.hash_dir)}})
    with GatewayProcess("server", sconfig, tmp_path) as server:
        cconfig = client_config(f"router+bind:{into}", server.url, drain_timeout={
            "secs": 0, "nanos": 300_000_000}, tls={"root_certificate": str(seed.ca_crt)})
        with GatewayProcess("client", cconfig, tmp_path) as client, \
                sp.SavantWriter(f"dealer+connect:{into}") as writer:
            writer.send("cam-1", sp.user_data("cam-1"), b"x")
            wait_until(lambda: "delivery failed; retrying" in client.log()
                       and "TLS handshake rejected" in server.log(), timeout=20,
                       what="a TLS failure")
            stats = stop_client(client)
    # the client usually reads the server's alert ("TLS rejected by the server: ... alert
    # certificate required"); when the server's close overtakes it, a connection reset
    assert stats["read"] == 1 and stats["undelivered"] == 1 and stats["forwarded"] == 0


# ---- topic filters -----------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("reader_type, spec", [
    ("router", {"source_id": "cam-1"}),
    ("sub", {"prefix": "cam-"}),
])
def test_topic_prefix_spec_filters(tmp_path, reader_type, spec):
    into = endpoint("tcp", tmp_path, "in")
    config = client_config(f"{reader_type}+bind:{into}", "", wait_strategy="yield")
    config["in_stream"]["topic_prefix_spec"] = spec
    topics = ["cam-1", "other-1", "cam-2", "cam-1", "other-2", "cam-2"] * 3
    with UpstreamStub() as stub:
        config["url"] = stub.url
        with GatewayProcess("client", config, tmp_path) as client, \
                sp.SavantWriter(f"{WRITER_FOR[reader_type]}+connect:{into}") as writer:
            if reader_type == "sub":
                warm_up(writer, lambda: stub.accepted, topic="cam-warm-up")
            for i, topic in enumerate(topics):
                writer.send(topic, sp.user_data(topic), b"%d" % i)
            wanted = [(t, i) for i, t in enumerate(topics)
                      if (t == "cam-1" if "source_id" in spec else t.startswith("cam-"))]

            def got():
                return [(m.topic.decode(), int(m.data[0])) for m in list(stub.accepted)
                        if m.data[0] != b"probe"]
            wait_until(lambda: len(got()) >= len(wanted), what="the accepted messages")
            stats = stop_client(client)
    assert by_topic(got()) == by_topic(wanted)  # order holds per source
    assert stats["filtered"] == (len(topics) - len(wanted) if reader_type == "router" else 0)


# ---- graceful shutdown -------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_sigterm_delivers_everything_already_read_then_exits_0(tmp_path):
    into = endpoint("ipc", tmp_path, "in")
    with UpstreamStub(delay=0.1) as stub:  # slow server: messages pile up in the client
        config = client_config(f"rep+bind:{into}", stub.url, connections=1)
        with GatewayProcess("client", config, tmp_path) as client, \
                sp.SavantWriter(f"req+connect:{into}") as writer:
            for i in range(30):  # each ack means the client has read the message
                assert writer.send("cam-1", sp.user_data("cam-1"), b"%d" % i) == "ack"
            assert len(stub.accepted) < 30  # still in flight
            stats = stop_client(client)  # SIGTERM
    assert [int(m.data[0]) for m in stub.accepted] == list(range(30))
    assert stats["read"] == stats["forwarded"] == 30 and stats["undelivered"] == 0
    assert "messages not delivered" not in client.log()


@pytest.mark.timeout(60)
def test_sigterm_gives_up_after_the_drain_timeout_and_says_how_many(tmp_path):
    into = endpoint("ipc", tmp_path, "in")
    with UpstreamStub(lambda media, attempt: 503) as stub:
        config = client_config(f"rep+bind:{into}", stub.url,
                               drain_timeout={"secs": 0, "nanos": 500_000_000})
        with GatewayProcess("client", config, tmp_path) as client, \
                sp.SavantWriter(f"req+connect:{into}") as writer:
            for i in range(5):
                assert writer.send("cam-1", sp.user_data("cam-1"), b"%d" % i) == "ack"
            stub.wait_requests(2)
            started = time.monotonic()
            stats = stop_client(client)
            elapsed = time.monotonic() - started
    assert elapsed < scaled(5)
    assert stats["read"] == 5 and stats["undelivered"] == 5 and stats["forwarded"] == 0
    assert "msg=\"messages not delivered\" undelivered=5" in client.log()


# ---- start-up ----------------------------------------------------------------------------------

def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mgfast", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_config_error_exits_2_naming_file_and_field(tmp_path):
    config = client_config("router+bind:tcp://127.0.0.1:1", "http://127.0.0.1:1")
    config["in_stream"]["topic_prefix_spec"] = {"suffix": "x"}
    path = tmp_path / "client.json"
    path.write_text(json.dumps(config))
    result = run_cli("client", str(path))
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr and "topic_prefix_spec" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("what", ["port", "in_stream"])
def test_unusable_port_or_endpoint_exits_2(tmp_path, what):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        in_port = taken if what == "in_stream" else free_port()
        config = client_config(f"router+bind:tcp://127.0.0.1:{in_port}", "http://127.0.0.1:1")
        if what == "port":
            config["port"] = taken
        path = tmp_path / "client.json"
        path.write_text(json.dumps(config))
        result = run_cli("client", str(path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    if what == "port":
        assert f"127.0.0.1:{taken}" in result.stderr and "`port`" in result.stderr
    else:
        assert f"tcp://127.0.0.1:{taken}" in result.stderr and "in_stream.url" in result.stderr


def test_without_config_runs_on_the_embedded_default(tmp_path):
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle
        try:
            probe.bind(("127.0.0.1", 8081))
        except OSError:
            pytest.skip("port 8081 (the embedded default's) is in use on this machine")
    log_path = tmp_path / "client.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mgfast", "client"], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: b"msg=listening" in log_path.read_bytes() or proc.poll() is not None,
                   timeout=20, what="the client to listen")
        text = log_path.read_text()
        assert "embedded default" in text and "router+bind:ipc:///tmp/mgfast/client" in text
        assert "http://127.0.0.1:8080" in text
        conn = http.client.HTTPConnection("127.0.0.1", 8081, timeout=5)
        conn.request("GET", "/health")
        assert conn.getresponse().read() == b'{"status":"healthy"}'
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0


# ---- back-pressure -----------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_inflight_ops_bounds_what_is_read_and_the_producer_feels_it(tmp_path):
    """With the server failing, the client reads inflight_ops messages and no more, so the
    DEALER producer reaches its high-water mark: its sends start to wait out send_timeout.
    (savant-rs 0.3.0 then reports ``success`` although it gave up on the message: that loss is
    the producer's, as with any Savant reader that stops reading.) Once the server recovers,
    what the client read arrives, in order."""
    release = threading.Event()
    into = endpoint("ipc", tmp_path, "in")
    lanes = 64
    topics = []  # one topic per message, each on a lane of its own, so every message read is
    for n in range(1000):  # at the head of a lane and goes to the server at once
        if len(topics) < 12 and zlib.crc32(b"cam-%d" % n) % lanes not in {
                zlib.crc32(t.encode()) % lanes for t in topics}:
            topics.append(f"cam-{n}")
    with UpstreamStub(lambda media, attempt: 200 if release.is_set() else 503) as stub:
        config = client_config(f"router+bind:{into}", stub.url, connections=lanes)
        config["in_stream"].update(inflight_ops=5, receive_hwm=1)
        with GatewayProcess("client", config, tmp_path) as client, \
                sp.SavantWriter(f"dealer+connect:{into}", send_hwm=1, send_timeout=0.1,
                                send_retries=1) as writer:
            extra = os.urandom(256 * 1024)  # large enough that socket buffers hold only a few
            durations = []
            for i, topic in enumerate(topics):
                started = time.monotonic()
                writer.send(topic, sp.user_data(topic), b"%02d:" % i + extra)
                durations.append(time.monotonic() - started)
            wait_until(lambda: len(stub.attempts) >= 5, what="five messages at the server")
            attempted = {m.data[0][:2] for m in list(stub.attempts)}
            release.set()
            stub.wait_accepted(5)
            stats = stop_client(client)
    assert attempted == {b"00", b"01", b"02", b"03", b"04"}  # the window, and only it
    assert max(durations[-4:]) >= 0.09, durations  # the producer was held at its HWM
    numbers = sorted(int(m.data[0][:2]) for m in stub.accepted)
    assert numbers[:5] == [0, 1, 2, 3, 4] and len(numbers) == len(set(numbers))
    assert stats["read"] == stats["forwarded"] == len(numbers) < 12


# ---- the HTTP client connection, against scripted raw servers ----------------------------------



async def scripted_server(answers: list):
    """A raw TCP server: for each request it reads, it writes the next answer (bytes), or
    closes the connection (None), or stays silent ("silent"). Returns (server, port, requests)."""
    requests: list[bytes] = []
    script = list(answers)

    async def handle(reader, writer):
        try:
            while script:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                requests.append(head + body)
                answer = script.pop(0)
                if answer is None:
                    break
                if answer == "silent":
                    await asyncio.sleep(5)
                    break
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer.lower() or b"content-length" not in \
                        answer.lower() and b"chunked" not in answer.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], requests


def test_http_client_keep_alive_chunked_interim_and_connection_close():

    async def body():
        server, port, requests = await scripted_server([
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
            b"X-Mgfast-Batch: 1\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy",
            b"HTTP/1.0 200 OK\r\n\r\nuntil eof",
        ])
        connection = cc.HttpClientConnection("127.0.0.1", port)
        first = await connection.request(b"POST", b"/", b"host: x\r\n", b"12345")
        assert (first.status, first.body, first.headers[b"x-mgfast-batch"]) == (200, b"ok", b"1")
        second = await connection.request(b"GET", b"/health", b"host: x\r\n")
        assert (second.status, second.body) == (200, b"abcde")
        third = await connection.request(b"POST", b"/", b"", b"x" * 100_000)
        assert (third.status, third.body, third.keep_alive) == (503, b"busy", False)
        assert connection.connects == 1 and not connection.connected
        fourth = await connection.request(b"GET", b"/", b"")
        assert (fourth.status, fourth.body) == (200, b"until eof")
        assert connection.connects == 2
        assert requests[0] == b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n12345"
        assert requests[2].endswith(b"x" * 100_000)
        connection.close()
        server.close()

    arun(body())


def test_http_client_failures_say_whether_the_request_may_have_been_processed():

    async def body():
        server, port, _ = await scripted_server([None, "silent", b"HTTP/1.1 20x\r\n\r\n"])
        connection = cc.HttpClientConnection("127.0.0.1", port, response_timeout=0.3)
        with pytest.raises(cc.ConnectionLost) as lost:
            await connection.request(b"POST", b"/", b"", b"a")
        assert lost.value.sent
        with pytest.raises(cc.ResponseTimeout) as timeout:
            await connection.request(b"POST", b"/", b"", b"b")
        assert timeout.value.sent and not connection.connected
        with pytest.raises(cc.BadResponse):
            await connection.request(b"POST", b"/", b"", b"c")
        server.close()
        await server.wait_closed()
        refused = cc.HttpClientConnection("127.0.0.1", free_port())
        with pytest.raises(cc.ConnectFailed) as failed:
            await refused.request(b"POST", b"/", b"", b"d")
        assert not failed.value.sent and refused.connect_failures == 1

    arun(body())


def test_http_client_replaces_a_connection_idle_past_idle_reuse():

    async def body():
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        server, port, requests = await scripted_server([ok, ok, ok])
        connection = cc.HttpClientConnection("127.0.0.1", port, idle_reuse=0.1)
        await connection.request(b"GET", b"/", b"")
        await connection.request(b"GET", b"/", b"")
        assert connection.connects == 1
        await asyncio.sleep(0.2)
        await connection.request(b"GET", b"/", b"")
        assert connection.connects == 2 and len(requests) == 3
        connection.close()
        server.close()

    arun(body())


# ---- upstream statistics --------------------------------------------------------------------

UPSTREAM_FRAME_LINE = re.compile(
    r"Frame-based FPS counter triggered: FPS = (inf|[0-9]+\.[0-9]{2}), OPS = (NaN|0\.00), "
    r"frame_delta = [0-9]+, time_delta = [0-9.]+ sec, period=\[[0-9]+, [0-9]+\] ms")

@pytest.mark.timeout(60)
def test_statistics_frame_period_logs_fps_lines(tmp_path):
    out = endpoint("ipc", tmp_path, "out")
    into = endpoint("ipc", tmp_path, "in")
    with sp.SavantReader(f"router+bind:{out}") as final, \
            GatewayProcess("server", one_worker_server(f"dealer+connect:{out}"), tmp_path) as server:
        config = client_config(f"router+bind:{into}", server.url,
                               statistics={"frame_period": 2})
        with GatewayProcess("client", config, tmp_path) as client, \
                sp.SavantWriter(f"dealer+connect:{into}") as writer:
            writer.send("cam-1", sp.video_frame("cam-1"), b"a")
            final.wait_for(1)
            assert "FPS counter" not in client.log()  # 1 message of 2 (upstream: a frame each)
            writer.send("cam-1", sp.user_data("cam-1"), b"b")
            wait_until(lambda: "Frame-based FPS counter triggered" in client.log(),
                       what="the FPS line")
            line = next(l for l in client.log().splitlines() if "Frame-based" in l)
            assert UPSTREAM_FRAME_LINE.search(line), line
            assert "frame_delta = 2," in line
            stop_client(client)
