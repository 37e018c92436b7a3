"""HTTP/1.1 pipelining with the upstream API: many requests in flight on one connection.

Against the upstream-behaving stub (answers in order, as actix-web) and against mgfast's server,
with savant-rs writers and readers; each test checks what arrived, per source and in order.
"""

from __future__ import annotations

import asyncio
import base64

import pytest

from mgfast.batching import all_accepted
from mgfast.http import client_connection as cc
from tests import savant_peers as sp
from tests.gateway_process import GatewayProcess, server_config
from tests.test_client import (_all_arrived, by_topic, client_config, payload, plan,
                               scripted_server, stop_client, user_message)
from tests.upstream_stub import CLOSE, DROP, UpstreamStub
from tests.util import arun, endpoint, wait_until


def frames(topic: str, extra: bytes) -> list[bytes]:
    return [topic.encode(), sp.to_bytes(user_message(topic, extra)), extra]


def send_all(writer: sp.SavantWriter, sent) -> None:
    for topic, extra in sent:
        assert writer.send(topic, user_message(topic, extra), extra) == "success"


@pytest.mark.timeout(60)
def test_pipelined_requests_are_exactly_upstreams_and_arrive_once_in_order(tmp_path):
    """One connection, slow answers: later requests are on the wire before earlier ones are
    answered, each is one upstream POST, and the stub gets every message once, in order."""
    sent = plan(sources=3, per_source=40)
    into = endpoint("tcp", tmp_path, "in")
    with UpstreamStub(delay=0.005) as stub:
        config = client_config(f"router+bind:{into}", stub.url, connections=1, pipeline=8,
                               auth={"basic": {"username": "edge-1", "password": "s3cret"}})
        with GatewayProcess("client", config, tmp_path) as client, \
                sp.SavantWriter(f"dealer+connect:{into}") as writer:
            send_all(writer, sent)
            accepted = stub.wait_accepted(len(sent))
            stats = stop_client(client)
    assert [m.frames for m in accepted] == [frames(t, e) for t, e in sent]
    posts = stub.posts()
    assert len(posts) == len(sent) and stub.connections == 1
    assert max(r.ahead for r in posts) > 0, "no request was written before the previous answer"
    for request in posts:
        assert request.path == "/" and request.headers["content-type"] == "application/protobuf"
        assert request.headers["authorization"] == "Basic " + base64.b64encode(
            b"edge-1:s3cret").decode()
    assert stats["forwarded"] == len(sent) and stats["requests"] == len(sent)
    assert stats["retried"] == stats["duplicates_possible"] == stats["rejected"] == 0


@pytest.mark.timeout(60)
def test_faults_in_the_middle_of_a_pipeline_lose_nothing(tmp_path):
    """A 400, a Connection: close, a dropped connection and a 503, each with requests pipelined
    behind it: the 400 alone is skipped, everything else arrives; what was written after a
    failure is resent in order, so each message's last copy comes in per-source order."""
    sent = plan(sources=3, per_source=30)
    script = {
        payload("cam-0", 5): [400],
        payload("cam-1", 8): [CLOSE],
        payload("cam-2", 12): [DROP, 200],
        payload("cam-0", 20): [503, 200],
    }

    def respond(media, attempt):
        answers = script.get(media.data[0], [200])
        return answers[min(attempt, len(answers)) - 1]

    into = endpoint("tcp", tmp_path, "in")
    with UpstreamStub(respond, delay=0.003) as stub:
        config = client_config(f"router+bind:{into}", stub.url, connections=1, pipeline=8)
        with GatewayProcess("client", config, tmp_path) as client, \
                sp.SavantWriter(f"dealer+connect:{into}") as writer:
            send_all(writer, sent)
            want = [(t, e) for t, e in sent if e != payload("cam-0", 5)]
            wait_until(lambda: {m.data[0] for m in stub.accepted} >= {e for _, e in want},
                       timeout=20, what="every message but the rejected one")
            stats = stop_client(client)
            accepted = list(stub.accepted)
    assert payload("cam-0", 5) not in {m.data[0] for m in accepted}
    assert stats["rejected"] == 1 and stats["undelivered"] == 0
    assert len(accepted) - len(set(accepted)) <= stats["duplicates_possible"]
    for topic, items in by_topic(want).items():
        mine = [m.data[0] for m in accepted if m.topic == topic.encode()]
        last = {extra: i for i, extra in enumerate(mine)}
        assert sorted(last, key=last.get) == [e for _, e in items]
    closed = next(r for r in stub.posts() if r.body and payload("cam-1", 8) in r.body)
    assert closed.ahead > 0  # requests were written after it; they came again later
    assert stub.connections >= 3  # the close, the drop, and the ones after them
    assert stats["retried"] > 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("batch", [1, 16])
def test_send_timeouts_mid_pipeline_keep_strict_order_through_mgfast(tmp_path, batch):
    """The consumer is late, so mgfast's server answers 504 while requests are pipelined behind:
    it closes the connection after each failure, and the savant-rs reader gets every message,
    the first copy of each in per-source order."""
    out = endpoint("ipc", tmp_path, "out")
    into = endpoint("tcp", tmp_path, "in")
    config = server_config(f"dealer+connect:{out}", workers=1)
    config["out_stream"].update(send_timeout={"secs": 0, "nanos": 50_000_000}, send_retries=1,
                                send_hwm=2)
    sent = plan(sources=3, per_source=60)
    with GatewayProcess("server", config, tmp_path) as server, \
            GatewayProcess("client", client_config(f"router+bind:{into}", server.url,
                                                   connections=2, batch=batch),
                           tmp_path) as client, \
            sp.SavantWriter(f"dealer+connect:{into}") as writer:
        send_all(writer, sent)
        wait_until(lambda: "HTTP 504" in client.log(), timeout=20, what="a 504")
        with sp.SavantReader(f"router+bind:{out}") as final:
            received = wait_until(lambda: _all_arrived(final, sent), timeout=40,
                                  what="every message")
        stats = stop_client(client)
    assert stats["retried"] > 0
    assert len(received) - len(set(received)) <= stats["duplicates_possible"]
    for topic, items in by_topic(sent).items():
        mine = [e for t, e in received if t == topic.encode()]
        first = list(dict.fromkeys(mine))
        assert first == [e for _, e in items]


# ---- the connection itself: many requests in flight, failures hand back the rest -------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def pipelined(script: list, count: int, **options):
    """Write ``count`` requests in one go; return (answered, failed, requests the server read)."""
    server, port, requests = await scripted_server(script)
    connection = cc.HttpClientConnection("127.0.0.1", port, **options)
    answered: list = []
    failed: list = []
    connection.on_response = lambda entry, response: answered.append((entry, response.status))
    connection.on_failure = lambda entries, error: failed.append((entries, error))
    await connection.connect()
    connection.send(list(range(count)),
                    [b"".join(cc.request_head(b"POST", b"/", b"", 1) + b"%d" % i
                              for i in range(count))])
    assert connection.in_flight == count
    deadline = asyncio.get_running_loop().time() + 5
    while len(answered) + sum(len(e) for e, _ in failed) < count:
        assert asyncio.get_running_loop().time() < deadline, (answered, failed)
        await asyncio.sleep(0.01)
    assert connection.in_flight == 0
    connection.close()
    server.close()
    return answered, failed, requests


def test_connection_answers_pipelined_requests_in_order():
    answered, failed, requests = arun(pipelined([OK] * 5, 5))
    assert answered == [(i, 200) for i in range(5)] and not failed
    assert [r[-1:] for r in requests] == [b"0", b"1", b"2", b"3", b"4"]


def test_connection_close_in_the_middle_hands_back_what_the_server_did_not_read():
    close = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    answered, failed, requests = arun(pipelined([OK, close], 5))
    assert answered == [(0, 200), (1, 200)] and len(requests) == 2
    [(entries, error)] = failed
    assert entries == [2, 3, 4] and isinstance(error, cc.ClosedByServer) and not error.sent


@pytest.mark.parametrize("fault, error_type", [
    (None, cc.ConnectionLost),  # the server closes without answering
    ("silent", cc.ResponseTimeout),  # no answer within response_timeout
    (b"HTTP/1.1 20x\r\n\r\n", cc.BadResponse),
])
def test_a_fault_mid_pipeline_fails_every_unanswered_request_at_once(fault, error_type):
    answered, failed, _ = arun(pipelined([OK, OK, fault], 6, response_timeout=0.3))
    assert answered == [(0, 200), (1, 200)]
    [(entries, error)] = failed
    assert entries == [2, 3, 4, 5] and isinstance(error, error_type) and error.sent


def test_a_server_that_closes_after_every_answer_is_backed_off_not_spun_on():
    """Batch negotiation on a server that closes each connection after one answer: the lane
    backs off between attempts instead of reconnecting as fast as it can."""
    from mgfast.client.lane import Lane
    from mgfast.zmq.reader import Message
    from mgfast.client.stats import ClientStats
    from mgfast.client.target import ServerTarget
    from mgfast.config.model import RetryStrategy

    async def body():
        connections = 0

        async def handle(reader, writer):
            nonlocal connections
            connections += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        lane = Lane(0, ServerTarget(f"http://127.0.0.1:{port}"), batch=16, pipeline=16,
                    retry=RetryStrategy(initial_delay=0.1, maximum_delay=0.1, multiplier=1),
                    stats=ClientStats(), release=lambda count: None)
        task = asyncio.ensure_future(lane.run())
        lane.submit_many([Message(b"cam", [b"cam", b"message"])])
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()
        return connections

    assert 2 <= arun(body()) <= 8  # about one per backoff delay, not hundreds


# ---- learnt answers: repeated 200s are answered without the parser -----------------------------

PLAIN = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class _Transport:
    def close(self) -> None:
        pass


class _CountingParser:
    """The protocol's httptools parser, counting the bytes it was given."""

    def __init__(self, parser) -> None:
        self.parser, self.fed = parser, 0

    def feed_data(self, data: bytes) -> None:
        self.fed += len(data)
        self.parser.feed_data(data)

    def __getattr__(self, name: str):
        return getattr(self.parser, name)


def fed_protocol(in_flight: int
                 ) -> tuple[cc.HttpClientConnection, cc._ResponseProtocol, _CountingParser]:
    """A connection's response protocol on a fake transport, fed by hand, with ``in_flight``
    requests (entries 0, 1, ...) unanswered; its parser counts what reaches it."""
    connection = cc.HttpClientConnection("127.0.0.1", 1)
    protocol = cc._ResponseProtocol(connection)
    protocol.transport = _Transport()  # type: ignore[assignment]
    protocol.parser = parser = _CountingParser(protocol.parser)
    connection._protocol = protocol
    connection.pending.extend([i, 0.0] for i in range(in_flight))
    return connection, protocol, parser


@pytest.mark.parametrize("chunk", [1, 5, len(PLAIN) - 1, len(PLAIN), len(PLAIN) + 3, 1000])
def test_runs_of_identical_plain_answers_keep_every_status_in_order(chunk):
    unavailable = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"
    with_body = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    dated = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ndate: x\r\n\r\n"  # not byte-identical
    answers = ([PLAIN] + [PLAIN] * 3 + [unavailable] + [PLAIN] * 2 + [with_body, dated]
               + [PLAIN] * 4)
    statuses = [int(a[9:12]) for a in answers]
    connection, protocol, parser = fed_protocol(len(answers))
    got: list = []
    connection.on_response = lambda entry, response: got.append((entry, response.status,
                                                                 response.body))
    protocol.data_received(answers[0])  # alone in its read: learnt
    assert list(protocol.learnt) == [PLAIN]
    stream = b"".join(answers[1:])
    for at in range(0, len(stream), chunk):
        protocol.data_received(stream[at:at + chunk])
    assert [(e, s) for e, s, _ in got] == list(enumerate(statuses))
    assert [b for _, s, b in got if s == 503] == [b"busy"] and got[7][2] == b"ok"
    assert not connection.pending and not protocol.closed
    if chunk > len(stream):  # one read: the run of plain answers it starts with skips llhttp
        assert parser.fed == len(PLAIN) + len(stream) - 3 * len(PLAIN)  # the first one learnt


def test_plain_answers_beyond_the_requests_in_flight_close_the_connection():
    connection, protocol, _ = fed_protocol(3)
    got: list = []
    connection.on_response = lambda entry, response: got.append(entry)
    protocol.data_received(PLAIN)
    protocol.data_received(PLAIN * 3)
    assert got == [0, 1, 2] and protocol.closed and not connection.connected


def test_a_plain_answer_that_changes_is_learnt_again():
    """Upstream's answers carry a Date header: the plain answer changes every second."""
    dated = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ndate: %s\r\n\r\n"
    first = dated % b"Mon, 07 Dec 2026 20:00:00 GMT"
    second = dated % b"Mon, 07 Dec 2026 20:00:01 GMT"
    connection, protocol, parser = fed_protocol(6)
    got: list = []
    connection.on_response = lambda entry, response: got.append((entry, response.status))
    protocol.data_received(first)
    protocol.data_received(second)  # not the learnt bytes: parsed, and learnt in their place
    assert second in protocol.learnt and parser.fed == len(first) + len(second)
    protocol.data_received(second * 4)
    assert parser.fed == len(first) + len(second)  # the run never reached llhttp
    assert got == [(i, 200) for i in range(6)] and not protocol.closed


@pytest.mark.parametrize("chunk", [1, 7, 60, 1000])
def test_learnt_batch_answers_of_any_count_are_matched_whole_and_others_parsed(chunk):
    """An mgfast server's batch answers differ by item count (and a partial one by its
    statuses, with the same length): each one learnt is matched byte for byte, never by its
    head alone."""
    def answer(body: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d"
                b"\r\n\r\n%s" % (len(body), body))
    two, three = all_accepted(2), all_accepted(3)
    partial = two.replace(b"200]", b"400]")  # as long as ``two``: the same head
    assert len(partial) == len(two) and partial != two
    connection, protocol, parser = fed_protocol(9)
    got: list = []
    connection.on_response = lambda entry, response: got.append((entry, response.body))
    protocol.data_received(answer(two))
    protocol.data_received(answer(three))
    assert len(protocol.learnt) == 2 and len(protocol.learnt_heads) == 2
    bodies = [three, two, partial, two, three, three, two]
    stream = b"".join(map(answer, bodies))
    fed = parser.fed
    for at in range(0, len(stream), chunk):
        protocol.data_received(stream[at:at + chunk])
    assert got == list(enumerate([two, three, *bodies]))
    if chunk == 1000:  # one read: only the partial answer (and what follows it) is parsed
        assert parser.fed - fed == len(stream) - len(answer(three) + answer(two))
    assert not connection.pending and not protocol.closed


def test_learnt_answers_are_bounded_and_learnt_afresh():
    dated = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ndate: %d\r\n\r\n"
    connection, protocol, _ = fed_protocol(cc.LEARNT_ANSWERS + 2)
    connection.on_response = lambda entry, response: None
    for i in range(cc.LEARNT_ANSWERS + 1):
        protocol.data_received(dated % i)
    assert list(protocol.learnt) == [dated % cc.LEARNT_ANSWERS]
    assert len(protocol.learnt_heads) == 1
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    protocol.data_received(chunked)  # its length is not in its head: never learnt
    assert chunked not in protocol.learnt and not protocol.closed
