"""HttpServerProtocol fed bytes directly (in one piece and byte by byte) on a fake transport."""

from __future__ import annotations

import asyncio

import pytest

from mgfast._zmq_io import ZERO_COPY_MIN, SendBuffer
from mgfast.config.model import HttpLimits
from mgfast.http import responses
from mgfast.http.server_protocol import HttpServerProtocol, Request


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name, default=None):
        return default


class EchoApp:
    """Answers with the method, path and body it got; POST /slow answers later."""

    def __init__(self) -> None:
        self.seen: list[Request] = []

    def handle(self, request: Request):
        self.seen.append(request)
        body = request.method + b" " + request.path + b" " + bytes(request.body)
        if request.path == b"/slow":
            async def later():
                await asyncio.sleep(0.01)
                return responses.Response(200, body)
            return later()
        return responses.Response(200, body)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def feed(data: bytes, *, bytewise: bool, limits: HttpLimits = HttpLimits(), settle=0.05,
               app=None):
    app = app if app is not None else EchoApp()
    protocol = HttpServerProtocol(app, limits)
    transport = FakeTransport()
    protocol.connection_made(transport)
    chunks = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        protocol.data_received(chunk)
    await asyncio.sleep(settle)
    return app, protocol, transport


POST = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize("bytewise", [False, True])
def test_request_is_parsed_the_same_in_one_piece_and_byte_by_byte(bytewise):
    app, _, transport = run(feed(POST, bytewise=bytewise))
    assert transport.out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.out.endswith(b"POST /x hello")
    assert not transport.closed


@pytest.mark.parametrize("bytewise", [False, True])
def test_pipelined_requests_are_answered_in_order(bytewise):
    slow = b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n1"
    app, _, transport = run(feed(slow + POST + slow, bytewise=bytewise))
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in transport.out.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"POST /slow 1", b"POST /x hello", b"POST /slow 1"]


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize("bad", [
    b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 99\r\n\r\n" + b"x" * 99,
    b"NOT HTTP AT ALL\r\n\r\n"])
def test_a_rejection_behind_pipelined_requests_is_answered_after_them(bytewise, bad):
    """A pipelining client matches answers to requests by order: a 413 (or 400) for the third
    request comes after the first two answers, then the connection closes unread."""
    slow = b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n1"
    limits = HttpLimits(max_body_size=50)
    app, _, transport = run(feed(slow + POST + bad + POST, bytewise=bytewise, limits=limits))
    answers = transport.out.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"200", b"413" if b"big" in bad else b"400"]
    assert answers[0].endswith(b"POST /slow 1") and answers[1].endswith(b"POST /x hello")
    assert b"connection: close" in answers[2] and transport.closed
    assert [r.path for r in app.seen] == [b"/slow", b"/x"]


def test_chunked_body_is_reassembled():
    data = (b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    _, _, transport = run(feed(data, bytewise=True))
    assert transport.out.endswith(b"POST /c abcde")


def test_malformed_request_gets_400_and_close():
    _, _, transport = run(feed(b"NOT HTTP AT ALL\r\n\r\n", bytewise=False))
    assert transport.out.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in transport.out
    assert transport.closed


def test_body_over_limit_by_content_length_gets_413_without_reading_it():
    limits = HttpLimits(max_body_size=4)
    app, _, transport = run(feed(POST, bytewise=False, limits=limits))
    assert transport.out.startswith(b"HTTP/1.1 413 ")
    assert b"http.max_body_size" in transport.out
    assert transport.closed and not app.seen


def test_chunked_body_over_limit_gets_413():
    limits = HttpLimits(max_body_size=4)
    data = (b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    app, _, transport = run(feed(data, bytewise=False, limits=limits))
    assert transport.out.startswith(b"HTTP/1.1 413 ")
    assert not app.seen


def test_expect_100_continue_is_answered_before_the_body():
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    _, _, transport = run(feed(head, bytewise=False))
    assert transport.out == responses.CONTINUE


def test_http10_without_keep_alive_closes_after_the_response():
    _, _, transport = run(feed(b"GET /health HTTP/1.0\r\n\r\n", bytewise=False))
    assert b"connection: close" in transport.out and transport.closed


def test_silent_connection_is_closed_after_the_header_timeout():
    limits = HttpLimits(header_timeout=0.05, idle_timeout=5)
    _, _, transport = run(feed(b"", bytewise=False, limits=limits, settle=0.2))
    assert transport.closed and transport.out == b""


def test_slow_headers_get_408():
    limits = HttpLimits(header_timeout=0.05)
    _, _, transport = run(feed(b"GET /health HTTP/1.1\r\nHo", bytewise=False, limits=limits,
                               settle=0.2))
    assert transport.out.startswith(b"HTTP/1.1 408 ") and transport.closed


def test_slow_body_gets_408():
    limits = HttpLimits(body_timeout=0.05)
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe"
    _, _, transport = run(feed(head, bytewise=False, limits=limits, settle=0.2))
    assert transport.out.startswith(b"HTTP/1.1 408 ") and transport.closed


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout():
    limits = HttpLimits(idle_timeout=0.05, header_timeout=5)
    _, _, transport = run(feed(GET_HEALTH, bytewise=False, limits=limits, settle=0.2))
    assert transport.out.startswith(b"HTTP/1.1 200 ") and transport.closed


def test_pipelining_pauses_reading_when_the_queue_is_full():
    slow = b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n1"

    async def scenario():
        protocol = HttpServerProtocol(EchoApp(), HttpLimits())
        transport = FakeTransport()
        protocol.connection_made(transport)
        protocol.data_received(slow * 40)
        paused = transport.paused
        deadline = asyncio.get_running_loop().time() + 5
        while transport.out.count(b"HTTP/1.1 200") < 40:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        return paused, transport.paused

    paused_then, paused_after = run(scenario())
    assert paused_then and not paused_after


class GroupApp(EchoApp):
    """Handles pipelined POSTs together, as GatewayApp does; a body "fail" answers 504+close."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[list[bytes]] = []

    @staticmethod
    def groupable(request: Request) -> bool:
        return request.method == b"POST" and request.keep_alive

    def handle_group(self, requests):
        self.groups.append([bytes(r.body) for r in requests])
        answers = []
        for request in requests:
            if bytes(request.body) == b"fail":
                answers.append(responses.text(504, "send timeout", close=True))
            else:
                answers.append(responses.Response(200, bytes(request.body)))

        async def later():
            await asyncio.sleep(0.01)
            return answers
        return later()


def post(body: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_pipelined_posts_are_handled_together_and_answered_in_order():
    app, _, transport = run(feed(post(b"a") + post(b"b") + post(b"c") + GET_HEALTH,
                                 bytewise=False, settle=0.1, app=GroupApp()))
    assert app.groups == [[b"a", b"b", b"c"]]  # one group, not one call per request
    answers = transport.out.split(b"HTTP/1.1 ")[1:]
    assert [a.rsplit(b"\r\n\r\n", 1)[1] for a in answers[:3]] == [b"a", b"b", b"c"]
    assert answers[3].endswith(b"GET /health ") and not transport.closed


def test_a_failure_inside_a_group_closes_after_its_answer_and_nothing_after_is_answered():
    _, _, transport = run(feed(post(b"a") + post(b"fail") + post(b"c"), bytewise=False,
                               settle=0.1, app=GroupApp()))
    answers = transport.out.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"504"]
    assert b"connection: close" in answers[1] and transport.closed


# ---- limits and hostile input ---------------------------------------------------------------

SMALL = HttpLimits(max_body_size=1000, max_line_size=100, max_header_size=300)


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize("request_bytes, status, names", [
    (b"GET /" + b"a" * 120 + b" HTTP/1.1\r\n\r\n", 414, b"max_line_size"),
    (b"GET / HTTP/1.1\r\nX: " + b"v" * 120 + b"\r\n\r\n", 431, b"max_line_size"),
    (b"GET / HTTP/1.1\r\n" + b"a: b\r\n" * 60 + b"\r\n", 431, b"max_header_size"),
])
def test_head_limits_answer_414_or_431_and_close(bytewise, request_bytes, status, names):
    app, protocol, transport = run(feed(request_bytes, bytewise=bytewise, limits=SMALL))
    assert transport.out.startswith(b"HTTP/1.1 %d " % status) and names in transport.out
    assert transport.closed and not app.seen


def test_an_unfinished_header_is_refused_once_it_spills_past_the_block_limit():
    async def go():
        app, protocol, transport = await feed(b"GET / HTTP/1.1\r\nX: ", bytewise=False,
                                              limits=SMALL)
        for _ in range(5):  # reads that end inside the header line, unseen by callbacks
            protocol.data_received(b"v" * 90)
        return transport
    transport = run(go())
    assert transport.out.startswith(b"HTTP/1.1 431 ") and transport.closed


def test_requests_right_at_the_limits_pass():
    line = b"GET /" + b"a" * 80 + b" HTTP/1.1\r\n"
    header = b"X: " + b"v" * 90 + b"\r\n"
    app, protocol, transport = run(feed(line + header * 2 + b"\r\n", bytewise=True, limits=SMALL))
    assert transport.out.startswith(b"HTTP/1.1 200 ")


def _rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_body_costs_memory_as_it_arrives_not_as_it_is_announced():
    async def go():
        limits = HttpLimits(max_body_size=1 << 30)
        before = _rss_bytes()
        app, protocol, transport = await feed(
            b"POST /x HTTP/1.1\r\nContent-Length: 500000000\r\n\r\nab", bytewise=False,
            limits=limits)
        protocol.data_received(b"cd")
        return protocol, _rss_bytes() - before
    protocol, grown = run(go())
    body = protocol.request.body
    assert body.filled == 4 and bytes(memoryview(body)[:4]) == b"abcd"
    assert grown < 16 << 20  # of the 500 MB announced


@pytest.mark.parametrize("pieces", [1, 7, 500])
def test_bodies_arrive_whole_whatever_their_size_framing_and_pieces(pieces):
    large = bytes(range(256)) * (ZERO_COPY_MIN // 256 + 3)
    data = (b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /b HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(large) + large +
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nde\r\n1\r\nf\r\n0\r\n\r\n")

    async def go():
        app = EchoApp()
        protocol = HttpServerProtocol(app, HttpLimits())
        protocol.connection_made(FakeTransport())
        step = len(data) // pieces + 1
        for i in range(0, len(data), step):
            protocol.data_received(data[i:i + step])
        return app
    app = run(go())
    assert [bytes(r.body) for r in app.seen] == [b"abc", large, b"def"]
    assert type(app.seen[1].body) is SendBuffer  # its frames go to libzmq uncopied


def test_head_gets_the_headers_of_get_without_the_body():
    data = b"HEAD /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n"
    app, protocol, transport = run(feed(data, bytewise=False))
    head, get = transport.out.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert b"content-length: 8\r\n" in head and head.endswith(b"\r\n\r\n")
    assert get.endswith(b"GET /y ")


@pytest.mark.parametrize("data", [
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + b"x" * 1024 + b"\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 500\r\n\r\n" + b"x" * 300,
])
def test_a_closed_or_rejected_connection_holds_no_request(data):
    async def go():
        app, protocol, transport = await feed(data, bytewise=False, limits=SMALL)
        protocol.connection_lost(None)
        return protocol
    protocol = run(go())
    assert protocol.request is None and protocol.parser is None and not protocol.queue


def test_while_the_client_does_not_read_its_answers_nothing_more_is_answered_or_read():
    async def go():
        app, protocol, transport = await feed(b"", bytewise=False)
        protocol.pause_writing()
        assert transport.paused
        protocol.data_received(GET_HEALTH * 3)
        await asyncio.sleep(0.01)
        held = bytes(transport.out)
        protocol.resume_writing()
        await asyncio.sleep(0.01)
        return held, transport
    held, transport = run(go())
    assert held == b"" and transport.out.count(b"HTTP/1.1 200") == 3 and not transport.paused


from hypothesis import given, settings, strategies as st  # noqa: E402

PIECES = [POST, GET_HEALTH, b"\r\n", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n",
          b"5\r\nhello\r\n0\r\n\r\n", b"HEAD /health HTTP/1.1\r\n", b"Expect: 100-continue\r\n",
          b"GET /" + b"a" * 150, b"X: " + b"v" * 150, b"\x00\xff", b"HTTP/1.0\r\n"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=40)), max_size=12),
       st.integers(1, 64))
def test_no_input_makes_the_protocol_raise(parts, chunk):
    """Whatever arrives, split however: an answer or a close, never an exception."""
    data = b"".join(parts)

    async def go():
        protocol = HttpServerProtocol(EchoApp(), SMALL)
        transport = FakeTransport()
        protocol.connection_made(transport)
        for i in range(0, len(data), chunk):
            protocol.data_received(data[i:i + chunk])
        protocol.eof_received()
        await asyncio.sleep(0)
        protocol.connection_lost(None)
    asyncio.run(go())


# ---- requests that repeat a learnt head (mgfast/http/repeated_head.py) ------------------------

def _post(path: bytes, body: bytes, headers: bytes = b"Content-Type: application/protobuf\r\n"
          ) -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: a\r\n%sContent-Length: %d\r\n\r\n%s"
            % (path, headers, len(body), body))


def test_a_repeated_head_is_learnt_only_where_repeating_it_means_the_same():
    from mgfast.http.repeated_head import RepeatedHead

    def learn(request: bytes, body: int):
        return RepeatedHead.learn(request, body)

    head = learn(_post(b"/", b"abc"), 3)
    assert head is not None and head.prefix.endswith(b"Content-Length: ")
    assert head.suffix == b"\r\n\r\n"
    two = _post(b"/", b"abc") + _post(b"/", b"de")
    assert head.match(two, 0, 100) == (len(_post(b"/", b"")), len(_post(b"/", b"abc")))
    assert head.match(two, len(_post(b"/", b"abc")), 100)[1] == len(two)
    assert head.match(two, 0, 2) is None  # over the length limit: the parser answers it
    assert head.match(two[:-1], len(_post(b"/", b"abc")), 100) is None  # cut by the read
    assert head.match(_post(b"/other", b"abc"), 0, 100) is None
    assert head.match(_post(b"/", b"abc").replace(b": 3", b": +3"), 0, 100) is None
    assert head.match(_post(b"/", b"x" * 10**9).replace(b"x" * 10**9, b""), 0, 10**10) is None
    for unsafe in (b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n",
                   b"Content-Length: 3\r\n", b"Upgrade: h2c\r\n"):
        assert learn(_post(b"/", b"abc", unsafe), 3) is None, unsafe
    assert learn(_post(b"/", b"abc").replace(b"Length: 3", b"Length:3"), 3) is None
    assert learn(_post(b"/", b"abc") + b"\r\n\r\n", 3) is None  # not one request


@pytest.mark.parametrize("split", [None, 1, 7, 50])
def test_requests_repeating_a_learnt_head_reach_the_app_as_the_parser_reads_them(split):
    """The same bytes through a protocol that learns a head and one that never does give the
    app the same requests in the same order, whatever the reads' boundaries."""
    first = _post(b"/", b"first")
    stream = b"".join([
        _post(b"/", b"a"), _post(b"/", b""), _post(b"/", b"b" * 1000),
        _post(b"/", b"c", b"Content-Type: other\r\n"),  # another head: parsed
        _post(b"/", b"d"), _post(b"/", b"L" * ZERO_COPY_MIN),  # large: a SendBuffer
        _post(b"/", b"e"), b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n", _post(b"/", b"f"),
        _post(b"/", b"g" * 20), _post(b"/", b"h"),
    ])

    async def body(learn: bool):
        app = EchoApp()
        protocol = HttpServerProtocol(app, HttpLimits())
        if not learn:
            protocol.learn_tries = 0
        transport = FakeTransport()
        protocol.connection_made(transport)
        protocol.data_received(first)
        assert (protocol.repeated is not None) == learn
        step = split or len(stream)
        for at in range(0, len(stream), step):
            protocol.data_received(memoryview(stream)[at:at + step])
        await asyncio.sleep(0.01)
        return ([(r.method, r.path, r.content_type, bytes(r.body), r.keep_alive,
                  r.content_length) for r in app.seen], bytes(transport.out))

    learnt, parsed = run(body(True)), run(body(False))
    assert learnt == parsed
    assert len(learnt[0]) == 12 and learnt[0][-1][3] == b"h"
    assert learnt[1].count(b"HTTP/1.1 200 OK") == 12


def test_repeated_requests_still_pause_reading_when_too_many_are_pipelined():
    async def body():
        app = EchoApp()
        protocol = HttpServerProtocol(app, HttpLimits())
        transport = FakeTransport()
        protocol.connection_made(transport)
        protocol.data_received(_post(b"/slow", b"x"))  # learnt; answered later
        assert protocol.repeated is not None and protocol.busy
        protocol.data_received(_post(b"/slow", b"y") * 40)
        assert transport.paused and len(protocol.queue) == 40
        while transport.out.count(b"HTTP/1.1 200 OK") < 41:
            await asyncio.sleep(0.01)
        assert not transport.paused and len(app.seen) == 41
        return bytes(transport.out)

    out = run(body())
    assert out.count(b"HTTP/1.1 200 OK") == 41 and out.endswith(b"POST /slow y")
