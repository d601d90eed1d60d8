"""Forward-cache hits replayed by the UDP listener: the TTL still counts down each second
(renewed in place, without the slow path), and an expired answer is fetched again.
Real time (the replay path reads the monotonic clock), a real upstream on loopback."""

from __future__ import annotations

import asyncio

import dns.message
import pytest
from fakedns import FakeUpstream

from clusterdns.server import handler as handler_mod
from clusterdns.server.handler import Handler
from clusterdns.server.replay import ReplayTable
from clusterdns.forward.forwarder import Forwarder
from clusterdns.forward.forwarding import Forwarding
from clusterdns.forward.table import ForwardTable, ForwardZone
from clusterdns.forward.upstream import UpstreamSpec
from helpers import UDPClient, udp_listener

WWW = "www.example.test. 300 IN A 192.0.2.1"


def node_handler(up: FakeUpstream, **cache: object) -> Handler:
    table = ForwardTable()
    table.add(ForwardZone(".", Forwarder([UpstreamSpec("127.0.0.1", up.port)], read_timeout=0.5), cache))
    return Handler(None, ReplayTable(100), forwarding=Forwarding(table))


def close(handler: Handler) -> None:
    for z in handler.forwarding.table.zones:  # type: ignore[union-attr]
        z.close()


def ttl_of(reply: bytes | None) -> int:
    assert reply is not None
    return dns.message.from_wire(reply).answer[0].ttl


async def test_replayed_hit_counts_its_ttl_down_without_the_slow_path(fake, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    up = await fake(WWW)
    handler = node_handler(up)
    listener = udp_listener(handler)
    c = UDPClient(listener.sockname())
    slow: list[bytes] = []
    real = handler_mod.Handler.handle
    monkeypatch.setattr(handler_mod.Handler, "handle", lambda self, data, tcp: slow.append(data) or real(self, data, tcp))
    q = dns.message.make_query("www.example.test.", "A").to_wire()
    try:
        first = ttl_of(await c.ask(q))  # miss: fetched
        second = ttl_of(await c.ask(q))  # hit through the slow path: kept for replay
        assert len(slow) == 2
        await asyncio.sleep(2.1)  # the TTL ticks twice
        later = ttl_of(await c.ask(q))
        again = ttl_of(await c.ask(q))
    finally:
        c.close()
        listener.close()
        close(handler)
    assert len(slow) == 2, "the renewed replay answered without the slow path"
    assert first == 300 and second in (299, 300)
    assert second - 3 <= later <= second - 2 and again == later
    assert up.count("www.example.test") == 1


async def test_replay_stops_when_the_entry_expires(fake) -> None:  # noqa: ANN001
    up = await fake("www.example.test. 2 IN A 192.0.2.1")
    handler = node_handler(up, min_ttl=0)
    listener = udp_listener(handler)
    c = UDPClient(listener.sockname())
    q = dns.message.make_query("www.example.test.", "A").to_wire()
    try:
        assert ttl_of(await c.ask(q)) == 2
        assert ttl_of(await c.ask(q)) in (1, 2)  # replayable now
        await asyncio.sleep(2.2)
        assert ttl_of(await c.ask(q)) == 2  # expired: asked upstream again
    finally:
        c.close()
        listener.close()
        close(handler)
    assert up.count("www.example.test") == 2
