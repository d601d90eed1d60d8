"""The listeners' operating switches, in-process: UDP through a real listener on
loopback in the test's event loop, TCP with a recording transport (uvicorn's habit): counting per listener slot on the hot and slow paths, the query log turned on
and off without touching the hot path, and draining (no new queries, answers in flight
still sent)."""

from __future__ import annotations

import asyncio
import io

import dns.edns
import dns.message
import pytest

from clusterdns.app.cluster import build_cluster
from clusterdns.kube.manifests import load_manifests
from clusterdns.obs import logs
from clusterdns.obs.logs import QueryLog, parse_common
from clusterdns.server.handler import Answer
from clusterdns.server.tcp import TCPLimits, TCPProtocol
from clusterdns.settings.schema import ServeConfig
from helpers import DEMO, UDPClient, udp_listener

NAME = "httpd-svc.default.svc.cluster.local."


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False
        self.paused = False

    def sendto(self, data: bytes, addr: object = None) -> None:
        self.sent.append(data)

    def write(self, data: bytes) -> None:
        self.sent.append(data[2:])

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 4242) if name == "peername" else None


@pytest.fixture
def handler():
    store, handler = build_cluster(ServeConfig(manifests=[str(DEMO)]))
    store.load(load_manifests([str(DEMO)])[0])
    handler.stats.add_listener("127.0.0.1", 53)
    handler.stats.add_listener("::1", 53)
    return handler


def wire(name: str = NAME) -> bytes:
    return dns.message.make_query(name, "A").to_wire()


async def test_hot_and_slow_answers_count_at_their_slot(handler) -> None:
    v4 = udp_listener(handler, 0)
    v6 = udp_listener(handler, 1, host="::1")
    c4, c6 = UDPClient(v4.sockname()), UDPClient(v6.sockname())
    try:
        for _ in range(4):
            assert await c4.ask(wire())  # compiled: the hot path, first time included
        assert await c6.ask(wire())
        cookie = dns.message.make_query(NAME, "A", use_edns=0, options=[dns.edns.GenericOption(10, b"12345678")])
        assert await c4.ask(cookie.to_wire())  # an EDNS option: the general path
    finally:
        for x in (c4, c6, v4, v6):
            x.close()
    hot = [c for k, c in handler.stats.classes.items() if k[1]]
    slow = [c for k, c in handler.stats.classes.items() if not k[1]]
    assert hot == [[4, 1]] and slow == [[1, 0]]


@pytest.mark.parametrize("io", ["mmsg", "plain"])
async def test_short_packets_and_responses_are_counted_as_dropped(handler, io: str) -> None:
    p = udp_listener(handler, io=io)
    c = UDPClient(p.sockname())
    try:
        c.send(b"\x00" * 5)
        response = bytearray(wire())
        response[2] |= 0x80
        c.send(bytes(response))
        c.send(b"")  # an empty datagram
        assert await c.ask(wire()) is not None  # the socket still answers, and only this
        assert await c.recv(0.2) is None
    finally:
        c.close()
        p.close()
    assert handler.stats.dropped == {(0, False, "short"): 2, (0, False, "response"): 1}


async def test_query_log_switches_on_and_off_without_a_hot_path_check(handler) -> None:
    out = io.StringIO()
    logs.setup("info", "text", 10.0, out)
    p = udp_listener(handler)
    clients = [UDPClient(p.sockname()) for _ in range(3)]
    try:
        assert p._reader == p._read  # off: the plain hot path
        p.set_query_log(QueryLog())
        assert p._reader == p._read_logged
        assert await clients[0].ask(wire())  # slow
        assert await clients[1].ask(wire(NAME.upper()))  # hot
        p.set_query_log(None)
        assert p._reader == p._read
        assert await clients[2].ask(wire())
        ports = [c.sock.getsockname()[1] for c in clients]
        lines = [parse_common(x) for x in out.getvalue().splitlines()]
        assert [x["port"] for x in lines] == ports[:2]
    finally:
        for x in (*clients, p):
            x.close()
        logs.reset()


async def test_udp_drain_drops_new_queries_but_sends_answers_in_flight(handler) -> None:
    p = udp_listener(handler)
    c = UDPClient(p.sockname())
    gate = asyncio.get_running_loop().create_future()

    async def slow_answer() -> bytes:
        return await gate

    try:
        handler.answer = lambda data, tcp, notify=None: Answer(slow_answer(), "forward")  # a forwarded question in flight
        c.send(wire("x.example."))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if p.pending:
                break
        assert p.pending == 1
        p.stop_reading()
        c.send(wire())  # after the close: dropped
        await asyncio.sleep(0.05)
        gate.set_result(b"\x00\x01\x81\x80" + b"\x00" * 8)
        assert await c.recv() == b"\x00\x01\x81\x80" + b"\x00" * 8
        assert await c.recv(0.2) is None
        assert p.pending == 0
    finally:
        c.close()
        p.close()
    assert handler.stats.dropped == {(0, False, "shutting_down"): 1}


async def test_tcp_drain_closes_after_the_last_pending_answer(handler) -> None:
    limits = TCPLimits()
    p = TCPProtocol(handler, limits, 0)
    t = RecordingTransport()
    p.connection_made(t)  # type: ignore[arg-type]
    gate = asyncio.get_running_loop().create_future()

    async def slow_answer() -> bytes:
        return await gate

    handler.answer = lambda data, tcp, notify=None: Answer(slow_answer(), "forward")
    q = wire("x.example.")
    p.data_received(len(q).to_bytes(2, "big") + q)
    p.stop_reading()
    assert t.paused and not t.closed
    gate.set_result(b"\x00\x01\x81\x80" + b"\x00" * 8)
    for _ in range(10):
        await asyncio.sleep(0)
    assert t.sent and t.closed
    p.connection_lost(None)


def test_idle_tcp_connection_closes_at_once_on_drain(handler) -> None:
    p = TCPProtocol(handler, TCPLimits(), 0)
    t = RecordingTransport()
    p.transport = t  # type: ignore[assignment]
    p.stop_reading()
    assert t.closed


def test_connection_cap_is_counted(handler) -> None:
    limits = TCPLimits(max_connections=0)
    p = TCPProtocol(handler, limits, 0)
    t = RecordingTransport()
    p.connection_made(t)  # type: ignore[arg-type]
    assert t.closed and limits.refused == 1
