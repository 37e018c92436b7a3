"""The server's in-process parts without sockets or processes: GatewayApp on a scripted
writer, the supervisor's restart backoff on an injected clock, and the process helper's
fail-fast wait (the worker-egress wire: test_egress_wire.py)."""

from __future__ import annotations

import asyncio
import inspect
import sys
import time

import orjson
import pytest

from mgfast.config.loader import load_server_config
from mgfast.http.server_protocol import Request
from mgfast.media import decode_media_batch, encode_media, encode_media_batch
from mgfast.server.app import GatewayApp
from mgfast.server.main import default_workers
from mgfast.server.stats import WorkerStats
from mgfast.server.supervisor import BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER, Child, Supervisor
from mgfast.zmq.sockets import StreamClosed
from mgfast.zmq.writer import WriteResult
from tests.gateway_process import LoggedProcess
from tests.savant_proto import savant_message, serialize
from tests.util import ProcessExited, arun

MESSAGE = serialize(savant_message())


class ScriptedWriter:
    """Answers each write with the next scripted result (an exception is raised by submit
    if it is StreamClosed, else set on the future); records the frames written."""

    def __init__(self, *results) -> None:
        self.results = list(results)
        self.written: list[list[bytes]] = []

    def _future(self, value):
        future = asyncio.get_running_loop().create_future()
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)
        return future

    def submit(self, frames, *, eos):
        result = self.results.pop(0)
        if isinstance(result, StreamClosed):
            raise result
        self.written.append([bytes(f) for f in frames])
        return self._future(result)

    def submit_group(self, messages, eos):
        results = []
        for frames in messages:
            result = self.results.pop(0)
            results.append(result)
            self.written.append([bytes(f) for f in frames])
            if result not in (WriteResult.SUCCESS, WriteResult.ACK):
                break
        results += [WriteResult.NOT_ATTEMPTED] * (len(messages) - len(results))
        return self._future(results)

    def submit_batch(self, body):
        """As the writers: the items of a batch that is all valid as one group, else None."""
        items = decode_media_batch(body)
        if not all(isinstance(item, tuple) for item in items):
            return None
        messages = [[topic, message, *data] for topic, message, data, _ in items]
        size = sum(len(frame) for frames in messages for frame in frames)
        return len(messages), size, self.submit_group(messages, None)


def post(body: bytes, content_type: bytes = b"application/protobuf", path: bytes = b"/",
         method: bytes = b"POST") -> Request:
    request = Request()
    request.method, request.path, request.content_type, request.body = (
        method, path, content_type, body)
    return request


async def answer(app: GatewayApp, request: Request):
    """What the protocol does with handle()'s answer: a Response, or something to await."""
    response = app.handle(request)
    return await response if inspect.isawaitable(response) else response


@pytest.mark.parametrize("result, status", [
    (WriteResult.SUCCESS, 200), (WriteResult.ACK, 200), (WriteResult.SEND_TIMEOUT, 504),
    (WriteResult.ACK_TIMEOUT, 502), (StreamClosed("restarting"), 503),
    (RuntimeError("broken"), 500),
])
def test_each_writer_result_has_its_status(result, status) -> None:
    async def scenario() -> None:
        stats = WorkerStats()
        writer = ScriptedWriter(result)
        response = await answer(GatewayApp(writer, stats), post(encode_media(b"cam", MESSAGE,
                                                                             [b"x"])))
        assert response.status == status
        if status == 200:
            assert writer.written == [[b"cam", MESSAGE, b"x"]]
            assert stats.forwarded == 1 and stats.forwarded_bytes == 3 + len(MESSAGE) + 1
            assert len(stats.latencies) == 1
        else:
            assert stats.forwarded == 0

    arun(scenario())


def test_what_the_writer_takes_at_once_is_answered_at_once_and_the_rest_by_callback() -> None:
    """No awaitable (so no task or extra loop turn in the protocol) when the writer's future
    is done on return, as an idle OutStreamWriter's is; one future otherwise."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        writer = ScriptedWriter(*[WriteResult.SUCCESS] * 4)  # the last one is replaced
        app = GatewayApp(writer)
        single = app.handle(post(encode_media(b"cam", MESSAGE, [])))
        batch = app.handle(post(encode_media_batch([(b"cam", MESSAGE, [])] * 2),
                                content_type=b"application/x-mgfast-batch"))
        assert single.status == 200 and batch.status == 200  # Responses, not awaitables

        pending = loop.create_future()
        writer._future = lambda value: pending  # the writer is busy: it answers later
        later = app.handle(post(encode_media(b"cam", MESSAGE, [])))
        assert isinstance(later, asyncio.Future) and not later.done()
        pending.set_result(WriteResult.SEND_TIMEOUT)
        assert (await later).status == 504

    arun(scenario())


def test_requests_the_app_refuses_never_reach_the_writer() -> None:
    async def scenario() -> None:
        writer = ScriptedWriter()
        app = GatewayApp(writer)
        cases = [
            (post(b"\xff\xff"), 400),  # not a Media
            (post(encode_media(b"cam", MESSAGE, []), content_type=b"text/plain"), 400),
            (post(b"", method=b"GET"), 405),
            (post(b"", path=b"/nowhere"), 404),
            (post(b"", path=b"/health", method=b"GET"), 200),
        ]
        for request, status in cases:
            assert (await answer(app, request)).status == status
        assert writer.written == []

    arun(scenario())


def test_a_batch_answers_per_item_and_stops_at_the_first_failed_write() -> None:
    async def scenario() -> None:
        writer = ScriptedWriter(WriteResult.SUCCESS, WriteResult.SEND_TIMEOUT)
        items = [(b"a", MESSAGE, []), (b"b", MESSAGE, []), (b"c", MESSAGE, [])]
        response = await answer(GatewayApp(writer), post(
            encode_media_batch(items), content_type=b"application/x-mgfast-batch"))
        assert response.status == 200
        assert orjson.loads(response.body)["results"] == [200, 504]
        assert [frames[0] for frames in writer.written] == [b"a", b"b"]

    arun(scenario())


def test_pipelined_requests_go_as_one_group_and_a_bad_one_is_answered_alone() -> None:
    async def scenario() -> None:
        writer = ScriptedWriter(WriteResult.SUCCESS, WriteResult.SUCCESS)
        app = GatewayApp(writer)
        requests = [post(encode_media(b"a", MESSAGE, [])), post(b"\xff"),
                    post(encode_media(b"c", MESSAGE, []))]
        assert all(app.groupable(r) for r in requests)
        answers = app.handle_group(requests)
        answers = await answers if inspect.isawaitable(answers) else answers
        assert [a.status for a in answers] == [200, 400, 200]
        assert [frames[0] for frames in writer.written] == [b"a", b"c"]

    arun(scenario())


def test_a_child_that_keeps_dying_backs_off_doubling_then_starts_over_once_stable() -> None:
    child = Child("worker-0", lambda: None, ())
    now = 100.0
    delays = []
    for _ in range(9):
        child.started = now  # restarted; dies at once
        delays.append(child.died(now))
        assert child.restart_at == now + delays[-1]
        now += delays[-1]
    assert delays == [min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** i) for i in range(9)]
    assert delays[-1] == BACKOFF_MAX
    child.started = now
    assert child.died(now + STABLE_AFTER + 1) == BACKOFF_FIRST  # lived long: no penalty


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_supervisor_keeps_time_by_its_injected_clock(tmp_path) -> None:
    clock = Clock()
    supervisor = Supervisor(load_server_config(None), 2, clock=clock)
    try:
        clock.now = 50.0
        supervisor.stop_signal_at = 49.5  # timeout(1)'s repeated SIGTERM within the window
        supervisor.wake_w.send(bytes([15]))  # SIGTERM, as the wakeup fd carries it
        assert supervisor._second_signal() is False
        clock.now = 51.0  # past REPEAT_WINDOW: a repeat is a second request
        supervisor.wake_w.send(bytes([15]))
        assert supervisor._second_signal() is True
    finally:
        supervisor.wake_r.close()
        supervisor.wake_w.close()


def test_waiting_on_a_process_that_exited_fails_at_once(tmp_path) -> None:
    proc = LoggedProcess("dies", [sys.executable, "-c", "print('bye'); raise SystemExit(3)"],
                         tmp_path)
    started = time.monotonic()
    with pytest.raises(ProcessExited, match="dies exited 3:\nbye"):
        proc.wait_log("never printed", timeout=30)
    assert time.monotonic() - started < 10
    assert proc.stop() == 3


def test_the_default_workers_leave_the_egress_a_cpu(monkeypatch) -> None:
    """Several workers bring the egress process: N CPUs get N - 1 workers, never fewer than 1
    (one worker writes the out_stream itself), counting the CPUs this process may run on."""
    assert [default_workers(cpus) for cpus in (1, 2, 3, 8, 64)] == [1, 1, 2, 7, 63]
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert default_workers() == 3
