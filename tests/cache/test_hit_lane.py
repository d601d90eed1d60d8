"""Forward-cache hits on the listeners' plain lane (`Handler.cached`, inlined in the UDP
listener): looked up by the parser's key, answered from the entry's bytes with the ID,
TTLs and the client's question patched in, counted on the entry, the TTL counting down
from the entry's stored time; and the typed `Answer` of the general path.
Real sockets, a real upstream on loopback."""

from __future__ import annotations

import asyncio

import dns.flags
import dns.message
import pytest

from clusterdns.cache.cache import Hit
from clusterdns.forward.forwarding import Forwarding
from clusterdns.forward.table import ForwardTable, ForwardZone
from clusterdns.forward.upstream import UpstreamSpec
from clusterdns.server import handler as handler_mod
from clusterdns.server.handler import KEY_BITS, Handler
from clusterdns.wire import question as Q
from components import cache_options, make_forwarder
from fakedns import FakeUpstream, question
from helpers import UDPClient, udp_listener

WWW = "www.example.test. 300 IN A 192.0.2.1"


def node_handler(up: FakeUpstream, **cache: object) -> Handler:
    table = ForwardTable()
    table.add(ForwardZone(".", make_forwarder([UpstreamSpec("127.0.0.1", up.port)], read_timeout=0.5), cache_options(**cache)))
    return Handler(None, forwarding=Forwarding(table))


def close(handler: Handler) -> None:
    for z in handler.forwarding.table.zones:  # type: ignore[union-attr]
        z.close()


def ttl_of(reply: bytes | None) -> int:
    assert reply is not None
    return dns.message.from_wire(reply).answer[0].ttl


def plain_key(data: bytes) -> bytes:
    """The key the plain lane builds from the bytes (as `Handler.cached` does)."""
    n = len(data)
    edns = data[11] == 1
    end = n - 15 if edns else n - 4
    do = edns and bool(data[n - 4] & 0x80)
    return data[12:end].lower() + data[end:end + 4] + KEY_BITS[(do << 1) | ((data[3] >> 4) & 1)]


@pytest.mark.parametrize("make", [
    dict(name="www.example.test."),
    dict(name="WwW.ExAmPlE.TeSt.", use_edns=0),
    dict(name="www.EXAMPLE.test.", use_edns=0, want_dnssec=True),
    dict(name="www.example.test.", rdtype="AAAA", use_edns=0, payload=4096),
])
def test_the_plain_lane_uses_the_parsers_key(make: dict) -> None:  # type: ignore[type-arg]
    msg = dns.message.make_query(make.pop("name"), make.pop("rdtype", "A"), **make)
    for cd in (False, True):
        if cd:
            msg.flags |= dns.flags.CD
        data = msg.to_wire()
        assert plain_key(data) == Q.parse(data).key


async def test_plain_lane_reply_is_the_general_paths_reply(fake) -> None:
    """Byte for byte what `ResponseCache.lookup` renders, for RD on/off, with and without
    EDNS and DO, in the client's case; and counted on the entry once per answer."""
    up = await fake(WWW)
    handler = node_handler(up, min_ttl=0)
    try:
        for make in (dict(), dict(use_edns=0), dict(use_edns=0, want_dnssec=True)):
            q = dns.message.make_query("www.example.test.", "A", **make)  # type: ignore[arg-type]
            first = handler.answer(q.to_wire(), False)
            assert first is not None
            if not isinstance(first.reply, bytes):  # a miss (EDNS without DO shares the plain key)
                await first.reply
            for rd in (True, False):
                m = dns.message.make_query("WWW.example.TEST.", "A", **make)  # type: ignore[arg-type]
                if not rd:
                    m.flags &= ~dns.flags.RD
                data = m.to_wire()
                cache = handler.forwarding.table.zones[0].cache  # type: ignore[union-attr]
                before = cache.hits
                lane = handler.cached(data, 0, 0)
                general = cache.lookup(Q.parse(data), 512)
                assert isinstance(general, Hit) and lane is not None
                assert lane == general.reply
                assert cache.hits == before + 2 and general.entry.hits >= 2
    finally:
        close(handler)


async def test_hit_lane_remembers_routes_of_names_that_hit_only(fake) -> None:
    """A flood of names that are not cached leaves the lane's route memo empty; a name is
    remembered once it hits."""
    up = await fake(WWW)
    handler = node_handler(up, min_ttl=0)
    forwarding = handler.forwarding
    assert forwarding is not None
    try:
        for i in range(500):
            junk = dns.message.make_query(f"junk{i}.example.test.", "A").to_wire()
            assert handler.cached(junk, 0, 0) is None
        assert forwarding.caches == {}
        first = handler.answer(dns.message.make_query("www.example.test.", "A").to_wire(), False)
        assert first is not None and not isinstance(first.reply, bytes)
        await first.reply
        assert forwarding.caches == {}  # a miss is not a hit
        hit = handler.cached(dns.message.make_query("www.example.test.", "A").to_wire(), 0, 0)
        assert hit is not None and list(forwarding.caches) == [b"\x03www\x07example\x04test\x00"]
    finally:
        close(handler)


async def test_answer_is_typed_and_names_the_plugin(fake) -> None:
    """No attribute to read after the call: the Answer says who answered and, for a hit,
    which entry (already counted)."""
    up = await fake(WWW)
    handler = node_handler(up)
    try:
        data = dns.message.make_query("www.example.test.", "A").to_wire()
        miss = handler.answer(data, False)
        assert miss is not None and miss.plugin == "forward" and miss.entry is None
        await miss.reply  # type: ignore[misc]
        hit = handler.answer(data, False)
        assert hit is not None and hit.plugin == "cache" and isinstance(hit.reply, bytes)
        assert hit.entry is not None and hit.entry.hits == 1
        assert not hasattr(handler, "plugin") and not hasattr(handler.forwarding, "last_hit")
        refused = handler.answer(dns.message.make_query("x.test.", "AXFR").to_wire(), False)
        assert refused is not None and refused.plugin == ""
    finally:
        close(handler)


async def test_hit_lane_counts_its_ttl_down_without_the_general_path(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    up = await fake(WWW)
    handler = node_handler(up)
    listener = udp_listener(handler)
    c = UDPClient(listener.sockname())
    slow: list[bytes] = []
    real = handler_mod.Handler.answer
    monkeypatch.setattr(handler_mod.Handler, "answer", lambda self, data, tcp, notify=None: slow.append(data) or real(self, data, tcp, notify))
    q = dns.message.make_query("www.example.test.", "A").to_wire()
    try:
        first = ttl_of(await c.ask(q))  # miss: fetched
        second = ttl_of(await c.ask(q))  # a hit: the plain lane
        await asyncio.sleep(2.1)  # the TTL ticks twice
        later = ttl_of(await c.ask(q))
        again = ttl_of(await c.ask(q))
    finally:
        c.close()
        listener.close()
        close(handler)
    assert len(slow) == 1, "hits answered without the general path"
    assert first == 300 and second in (299, 300)
    assert second - 3 <= later <= second - 2 and again == later
    assert up.count("www.example.test") == 1
    entry = next(iter(handler.forwarding.table.zones[0].cache._entries.values()))  # type: ignore[union-attr]
    assert entry.hits == 3


async def test_hit_lane_stops_when_the_entry_expires(fake) -> None:
    up = await fake("www.example.test. 2 IN A 192.0.2.1")
    handler = node_handler(up, min_ttl=0)
    listener = udp_listener(handler)
    c = UDPClient(listener.sockname())
    q = dns.message.make_query("www.example.test.", "A").to_wire()
    try:
        assert ttl_of(await c.ask(q)) == 2
        assert ttl_of(await c.ask(q)) in (1, 2)  # a hit
        await asyncio.sleep(2.2)
        assert ttl_of(await c.ask(q)) == 2  # expired: asked upstream again
    finally:
        c.close()
        listener.close()
        close(handler)
    assert up.count("www.example.test") == 2


async def test_hit_lane_leaves_prefetch_to_the_general_path(fake) -> None:
    """In the prefetch window the plain lane steps aside so the refresh starts."""
    up = await fake("www.example.test. 2 IN A 192.0.2.1")
    handler = node_handler(up, min_ttl=0, prefetch=1, prefetch_percentage=100)
    try:
        data = dns.message.make_query("www.example.test.", "A").to_wire()
        await handler.answer(data, False).reply  # type: ignore[misc, union-attr]
        assert handler.cached(data, 0, 0) is None
        hit = handler.answer(data, False)
        assert hit is not None and hit.plugin == "cache"
        assert handler.forwarding.table.zones[0].cache.prefetches == 1  # type: ignore[union-attr]
    finally:
        close(handler)


def test_question_helper_builds_parser_queries() -> None:
    q, msg = question("www.example.test")
    assert q.key == plain_key(msg.to_wire())
