"""The server's process model: workers on one port, the egress, restarts, draining, order."""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time

import pytest

from mgfast.media import encode_media
from tests import savant_peers as sp
from tests.gateway_process import GatewayProcess, server_config
from tests.util import free_port, wait_until


def live_children(server: GatewayProcess) -> dict[str, int]:
    """{child name: pid} of the server's children that are alive (not zombies)."""
    return {name: pid for name, pid in server.children().items()
            if os.path.exists(f"/proc/{pid}")
            and "Z" not in open(f"/proc/{pid}/stat").read().split(")")[1].split()[0]}


def post(port: int, topic: str, message, *extra: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST", "/", body=encode_media(topic.encode(), sp.to_bytes(message), list(extra)),
                 headers={"Content-Type": "application/protobuf"})
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.fixture
def served(tmp_path):
    """A 2-worker server on tcp, and a savant-rs sub reader connected to it."""
    where = f"tcp://127.0.0.1:{free_port()}"
    config = server_config(f"pub+bind:{where}", workers=2)
    with GatewayProcess("server", config, tmp_path) as server:
        with sp.SavantReader(f"sub+connect:{where}") as reader:
            wait_until(lambda: post(config["port"], "warm-up", sp.user_data("warm-up")) == 200
                       and reader.messages, what="the subscription")
            yield server, reader


def test_two_workers_and_an_egress_run_and_a_dead_worker_is_replaced(served):
    server, reader = served
    assert "workers=2" in server.log()
    kids = live_children(server)
    assert sorted(kids) == ["egress", "worker-0", "worker-1"]
    victim = kids["worker-1"]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: "worker-1" not in live_children(server), what="the worker to die")
    # The other worker keeps serving while the dead one is restarted. A connection the kernel
    # had already queued on the dying socket is reset; like any client, retry it once.
    port = server.config["port"]
    resets = 0
    for _ in range(20):
        try:
            status = post(port, "cam-1", sp.user_data("cam-1"))
        except ConnectionResetError:
            resets += 1
            status = post(port, "cam-1", sp.user_data("cam-1"))
        assert status == 200
    assert resets <= 2
    wait_until(lambda: live_children(server).get("worker-1") not in (None, victim),
               timeout=20, what="the worker to be restarted")


def test_a_dead_egress_is_restarted_and_the_stream_goes_on(served):
    server, reader = served
    port = server.config["port"]
    egress = live_children(server)["egress"]
    os.kill(egress, signal.SIGKILL)
    wait_until(lambda: live_children(server).get("egress") not in (None, egress),
               timeout=20, what="the egress to be restarted")
    # The restarted egress binds the out_stream again; the reader reconnects by itself.
    wait_until(lambda: post(port, "after", sp.user_data("after")) == 200
               and any(m.topic == b"after" for m in reader.messages),
               timeout=20, what="messages to flow again")


@pytest.fixture
def served_connecting(tmp_path):
    """A 2-worker server whose out_stream connects: the egress owns it all the same."""
    where = f"tcp://127.0.0.1:{free_port()}"
    with sp.SavantReader(f"router+bind:{where}") as reader:
        config = server_config(f"dealer+connect:{where}", workers=2)
        with GatewayProcess("server", config, tmp_path) as server:
            assert sorted(live_children(server)) == ["egress", "worker-0", "worker-1"]
            yield server, reader


def test_connections_moving_between_workers_lose_nothing_for_a_router_consumer(
        served_connecting):
    """A savant-rs ROUTER reader drops a source whose messages come from a new ZeroMQ peer.
    Every message here comes on a new connection, which SO_REUSEPORT spreads over both
    workers: the consumer must still see one peer, and get every message in order."""
    server, reader = served_connecting
    port = server.config["port"]
    sources, per_source = ["cam-a", "cam-b"], 40
    for seq in range(per_source):
        for source in sources:  # post() opens a new connection each time
            assert post(port, source, sp.user_data(source), seq.to_bytes(4, "big")) == 200
    got = reader.wait_for(per_source * len(sources),
                          where=lambda m: m.topic in (b"cam-a", b"cam-b"), timeout=20)
    for source in sources:
        seqs = [int.from_bytes(m.extra[0], "big") for m in got if m.topic == source.encode()]
        assert seqs == list(range(per_source))


@pytest.mark.parametrize("layout", ["served", "served_connecting"])
def test_order_per_connection_holds_across_workers_and_the_egress(layout, request):
    server, reader = request.getfixturevalue(layout)
    port = server.config["port"]
    per_source = 200
    sources = [f"cam-{i}" for i in range(4)]
    errors: list[str] = []

    def stream(source: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        for seq in range(per_source):
            body = encode_media(source.encode(), sp.to_bytes(sp.user_data(source)),
                                [seq.to_bytes(4, "big")])
            conn.request("POST", "/", body=body, headers={"Content-Type": "application/protobuf"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors.append(f"{source}#{seq}: {response.status}")

    threads = [threading.Thread(target=stream, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    got = reader.wait_for(per_source * len(sources), where=lambda m: m.topic.startswith(b"cam-"),
                          timeout=30)
    for source in sources:
        seqs = [int.from_bytes(m.extra[0], "big") for m in got if m.topic == source.encode()]
        assert seqs == list(range(per_source))


def test_sigterm_answers_requests_in_flight_and_exits_0(tmp_path):
    where = f"tcp://127.0.0.1:{free_port()}"
    # A req out_stream whose reader answers slowly keeps a request in flight during SIGTERM.
    config = server_config(f"req+bind:{where}", workers=1)
    with GatewayProcess("server", config, tmp_path) as server:
        import zmq
        ctx = zmq.Context()
        rep = ctx.socket(zmq.REP)
        rep.connect(where)
        result: dict = {}
        message = sp.user_data("cam-1")  # here, not in the thread: without savant-rs it skips

        def request() -> None:
            result["status"] = post(config["port"], "cam-1", message)

        t = threading.Thread(target=request)
        t.start()
        assert rep.poll(10_000), "the message did not reach the out_stream"
        parts = rep.recv_multipart()
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "msg=stopping" in server.log(), what="the drain to begin")
        rep.send(b"OK")
        t.join(20)
        assert result["status"] == 200 and parts[0] == b"cam-1"
        assert server.proc.wait(30) == 0
        rep.close(0)
        ctx.term()
    assert "stopped" in server.log()


class Poster(threading.Thread):
    """Posts numbered messages of one source on one keep-alive connection, one after another,
    until stopped; records each answer's status and when it came."""

    def __init__(self, port: int, source: str) -> None:
        super().__init__(daemon=True)
        self.port, self.source = port, source
        self.answers: list[tuple[int, int, float]] = []  # (seq, status, monotonic time)
        self.stopping = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        seq = 0
        while not self.stopping.is_set():
            body = encode_media(self.source.encode(), sp.to_bytes(sp.user_data(self.source)),
                                [seq.to_bytes(4, "big")])
            conn.request("POST", "/", body=body, headers={"Content-Type": "application/protobuf"})
            response = conn.getresponse()
            response.read()
            self.answers.append((seq, response.status, time.monotonic()))
            if response.status == 200:
                seq += 1
            if response.getheader("connection") == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.close()

    def accepted(self) -> list[int]:
        return [seq for seq, status, _ in self.answers if status == 200]


@pytest.mark.parametrize("writer, reader_type", [("req", "rep"), ("dealer", "router")])
def test_a_killed_egress_costs_the_sources_only_its_restart(tmp_path, writer, reader_type):
    """SIGKILL the egress under a steady stream: the workers see it go at once and send what
    it had not answered to its successor, so no request waits for the (long) reply timeout
    and none gets an error. What arrives is in order per source (a repeat only of what the
    dead egress held). With a REQ out_stream (200 = the consumer has it) every accepted
    message arrives; with DEALER (200 = queued in libzmq) what the dead egress's libzmq still
    held is lost, as the README says."""
    where = f"ipc://{tmp_path}/out"
    config = server_config(f"{writer}+connect:{where}", workers=2)
    for key in ("send_timeout", "receive_timeout"):  # a reply budget of 45 s
        config["out_stream"][key] = {"secs": 5, "nanos": 0}
    with sp.SavantReader(f"{reader_type}+bind:{where}") as reader, \
            GatewayProcess("server", config, tmp_path) as server:
        posters = [Poster(config["port"], f"cam-{n}") for n in range(2)]
        for poster in posters:
            poster.start()
        wait_until(lambda: all(len(p.accepted()) >= 30 for p in posters), timeout=20,
                   what="the stream to flow")
        egress = live_children(server)["egress"]
        os.kill(egress, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: live_children(server).get("egress") not in (None, egress),
                   timeout=20, what="the egress to be restarted")
        wait_until(lambda: all(p.answers[-1][2] > killed + 0.2 and len(p.accepted()) > 60
                               for p in posters), timeout=15,
                   what="every source to flow again (not waiting for the 45 s reply timeout)")
        for poster in posters:
            poster.stopping.set()
            poster.join(60)
        assert "sending again what it had not answered" in server.log()
        for poster in posters:
            assert {status for _, status, _ in poster.answers} == {200}
            want = [seq.to_bytes(4, "big") for seq in poster.accepted()]
            if writer == "req":
                got = wait_until(lambda: _arrived(reader, poster.source, want), timeout=10,
                                 what=f"every accepted message of {poster.source}")
            else:
                wait_until(lambda: _received(reader, poster.source)[-1:] == want[-1:],
                           timeout=10, what=f"the last message of {poster.source}")
                got = _received(reader, poster.source)
            assert_in_order_with_repeats(got, want, complete=writer == "req")


def _received(reader: sp.SavantReader, source: str) -> list[bytes]:
    return [m.extra[0] for m in list(reader.messages) if m.topic == source.encode()]


def _arrived(reader: sp.SavantReader, source: str, want: list[bytes]) -> list[bytes] | None:
    got = _received(reader, source)
    return got if set(want) <= set(got) else None


def assert_in_order_with_repeats(got: list[bytes], want: list[bytes], complete: bool) -> None:
    """New items of ``got`` come in ``want``'s order (with ``complete``, none skipped); a
    repeat is only of an earlier one."""
    order = {item: i for i, item in enumerate(want)}
    newest = -1
    seen: set[bytes] = set()
    for item in got:
        if item not in order:
            continue  # sent, not yet answered when the poster stopped
        at = order[item]
        if at <= newest:
            assert item in seen, f"{at} after {newest}: out of order"
        elif complete:
            assert at == newest + 1, f"{at} after {newest}: {newest + 1} skipped"
        seen.add(item)
        newest = max(newest, at)
    assert newest == len(want) - 1


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_delivers_what_was_answered_200_to_a_consumer_that_is_slow(tmp_path, workers):
    """The consumer stalls until the out_stream is full, and the server is stopped: every
    message it answered 200 still reaches the consumer once it reads again, within the send
    budget (ZeroMQ's linger on close is that budget, not Savant's 100 ms)."""
    where = f"ipc://{tmp_path}/out"
    config = server_config(f"dealer+connect:{where}", workers=workers)
    config["out_stream"].update(send_hwm=4, send_timeout={"secs": 1, "nanos": 500_000_000},
                             send_retries=1)  # a send budget of 3 s
    big = b"x" * 256 * 1024  # a few fill the socket buffers between the two processes
    with sp.SavantReader(f"router+bind:{where}", receive_hwm=2) as reader:
        server = GatewayProcess("server", config, tmp_path)
        try:
            wait_until(lambda: post(config["port"], "warm-up", sp.user_data("warm-up")) == 200
                       and reader.messages, what="the consumer to connect")
            reader.pause()
            accepted = []
            conn = http.client.HTTPConnection("127.0.0.1", config["port"], timeout=30)
            for seq in range(200):
                body = encode_media(b"cam", sp.to_bytes(sp.user_data("cam")),
                                    [seq.to_bytes(4, "big"), big])
                conn.request("POST", "/", body=body,
                             headers={"Content-Type": "application/protobuf"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    assert response.status == 504
                    break
                accepted.append(seq.to_bytes(4, "big"))
            conn.close()
            assert 0 < len(accepted) < 200, "the out_stream never filled up"
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)  # the consumer is still stalled while the server stops
            reader.resume()
            assert server.proc.wait(30) == 0
        finally:
            server.stop()
        got = wait_until(lambda: _arrived(reader, "cam", accepted), timeout=10,
                         what="every message answered 200")
    assert [e for e in got if e in set(accepted)] == accepted


def test_with_pub_a_message_is_answered_once_the_egress_has_it_up_to_inflight_ops(tmp_path):
    """PUB writes cannot fail, so a worker answers 200 as soon as it handed a message to the
    egress, without waiting for the egress's confirmation, for up to inflight_ops messages
    not yet confirmed; past that, requests wait. Here the egress is frozen (SIGSTOP): three
    messages are answered, the fourth waits, and once the egress runs again all four reach
    the subscriber in order."""
    where = f"tcp://127.0.0.1:{free_port()}"
    config = server_config(f"pub+bind:{where}", workers=2)
    config["out_stream"]["inflight_ops"] = 3
    with GatewayProcess("server", config, tmp_path) as server, \
            sp.SavantReader(f"sub+connect:{where}") as reader:
        wait_until(lambda: post(config["port"], "warm-up", sp.user_data("warm-up")) == 200
                   and reader.messages, what="the subscription")
        egress = live_children(server)["egress"]
        conn = http.client.HTTPConnection("127.0.0.1", config["port"], timeout=1.0)
        os.kill(egress, signal.SIGSTOP)
        try:
            for seq in range(4):
                body = encode_media(b"cam", sp.to_bytes(sp.user_data("cam")),
                                    [seq.to_bytes(4, "big")])
                conn.request("POST", "/", body=body,
                             headers={"Content-Type": "application/protobuf"})
                if seq < 3:
                    response = conn.getresponse()
                    response.read()
                    assert response.status == 200
                else:
                    with pytest.raises(TimeoutError):
                        conn.getresponse()
            assert not any(m.topic == b"cam" for m in reader.messages)
        finally:
            os.kill(egress, signal.SIGCONT)
        got = reader.wait_for(4, where=lambda m: m.topic == b"cam", timeout=10)
        assert [int.from_bytes(m.extra[0], "big") for m in got] == [0, 1, 2, 3]
