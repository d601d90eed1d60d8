"""ResponseCache in front of a real upstream, with a hand-moved clock."""

from __future__ import annotations

import asyncio
import time

import dns.flags
import dns.rcode
from dnslib import RR, DNSRecord

from clusterdns.cache.cache import ResponseCache
from clusterdns.forward.table import ForwardZone
from clusterdns.forward.upstream import UpstreamSpec
from clusterdns.wire.names import to_text
from clusterdns.wire.question import Query
from components import cache_options, make_forwarder
from fakedns import addresses, decode, question, ttls

WWW = "www.example.test. 300 IN A 192.0.2.1"


def zone_for(port: int, clock, **cache: object) -> ForwardZone:
    opts = cache_options(timer=clock, **cache)
    return ForwardZone(".", make_forwarder([UpstreamSpec("127.0.0.1", port)], read_timeout=0.3,
                                      timeout=0.6, health_interval=0.05), opts)


async def test_hit_counts_ttl_down_and_echoes_question_case(fake, clock) -> None:
    """The second query is served from cache with the TTL lowered by the time elapsed,
    the client's own ID and question case, and no second upstream query."""
    up = await fake(WWW)
    z = zone_for(up.port, clock, max_ttl=3600)
    try:
        q, _ = question("www.example.test")
        first = decode(await z.resolve(q, None))
        assert ttls(first) == {300}
        clock.advance(42.5)
        q2, msg2 = question("WwW.ExAmPlE.tEsT")
        hit = z.lookup(q2, 512)
        assert hit is not None
        second = decode(hit)
        assert second.id == msg2.id
        assert second.question[0].name.to_text() == "WwW.ExAmPlE.tEsT."
        assert ttls(second) == {258}
        assert addresses(second) == ["192.0.2.1"]
        assert up.count() == 1 and z.cache.hits == 1 and z.cache.misses == 1
    finally:
        z.close()


async def test_positive_ttl_is_capped_by_max_ttl_and_expires(fake, clock) -> None:
    """max_ttl caps how long an answer lives; after that the upstream is asked again."""
    up = await fake(WWW)
    z = zone_for(up.port, clock, max_ttl=30)
    try:
        q, _ = question("www.example.test")
        assert ttls(decode(await z.resolve(q, None))) == {30}
        clock.advance(29)
        assert ttls(decode(z.lookup(q, None))) == {1}
        clock.advance(1)
        assert z.lookup(q, None) is None
        await z.resolve(q, None)
        assert up.count() == 2
    finally:
        z.close()


async def test_nxdomain_and_nodata_cached_for_the_soa_minimum(fake, clock) -> None:
    """RFC 2308: negative answers live min(SOA TTL 120, MINIMUM 60) = 60 s, capped."""
    up = await fake(WWW)
    z = zone_for(up.port, clock, max_negative_ttl=1800)
    try:
        nx, _ = question("missing.example.test")
        nodata, _ = question("www.example.test", "AAAA")
        r1 = decode(await z.resolve(nx, None))
        r2 = decode(await z.resolve(nodata, None))
        assert r1.rcode() == dns.rcode.NXDOMAIN and r2.rcode() == dns.rcode.NOERROR
        assert ttls(r1) == {60} and ttls(r2) == {60}
        clock.advance(59)
        assert decode(z.lookup(nx, None)).rcode() == dns.rcode.NXDOMAIN
        assert decode(z.lookup(nodata, None)).answer == []
        assert up.count() == 2
        clock.advance(1)
        assert z.lookup(nx, None) is None and z.lookup(nodata, None) is None
    finally:
        z.close()


async def test_negative_ttl_is_capped_by_max_negative_ttl(fake, clock) -> None:
    """node-local-dns caps cluster denials at 5 s so new Services resolve quickly."""
    up = await fake(WWW)
    z = zone_for(up.port, clock, max_negative_ttl=5)
    try:
        nx, _ = question("missing.example.test")
        assert ttls(decode(await z.resolve(nx, None))) == {5}
        clock.advance(5)
        assert z.lookup(nx, None) is None
    finally:
        z.close()


async def test_negative_answer_without_soa_is_not_cached(fake, clock) -> None:
    """RFC 2308 5: no SOA, no negative caching (it could loop forever between caches)."""
    up = await fake(WWW, soa=False)
    z = zone_for(up.port, clock)
    try:
        nx, _ = question("missing.example.test")
        await z.resolve(nx, None)
        await z.resolve(nx, None)
        assert up.count() == 2 and len(z.cache) == 0
    finally:
        z.close()


def _static_fetch(wire: bytes, calls: list[int]):
    async def fetch(q: Query) -> bytes:
        calls.append(1)
        return wire
    return fetch


async def test_truncated_and_malformed_answers_are_never_cached(clock) -> None:
    """A TC answer is partial and a malformed one unreadable: neither may be replayed."""
    q, _ = question("www.example.test")
    tc = DNSRecord.question("www.example.test").reply()
    tc.header.tc = 1
    tc.add_answer(*RR.fromZone(WWW))
    for wire, rcode in ((tc.pack(), dns.rcode.NOERROR), (b"\x00\x00\x81\x80\x00\x01\x00\x05", dns.rcode.SERVFAIL)):
        calls: list[int] = []
        cache = ResponseCache(_static_fetch(wire, calls), **cache_options(timer=clock))
        first = decode(await cache.resolve(q, None))
        assert first.rcode() == rcode
        await cache.resolve(q, None)
        assert len(calls) == 2 and len(cache) == 0


async def test_servfail_is_cached_briefly(clock) -> None:
    """An upstream SERVFAIL is kept servfail_ttl (5 s) so a broken name is not hammered."""
    q, _ = question("www.example.test")
    sf = DNSRecord.question("www.example.test").reply()
    sf.header.rcode = 2
    calls: list[int] = []
    cache = ResponseCache(_static_fetch(sf.pack(), calls), **cache_options(timer=clock, servfail_ttl=5))
    assert decode(await cache.resolve(q, None)).rcode() == dns.rcode.SERVFAIL
    clock.advance(4)
    assert decode(await cache.resolve(q, None)).rcode() == dns.rcode.SERVFAIL
    assert len(calls) == 1
    clock.advance(1)
    await cache.resolve(q, None)
    assert len(calls) == 2


async def test_do_and_cd_bits_are_part_of_the_key(fake, clock) -> None:
    """A DNSSEC-OK query must not get the answer cached for a plain one (and vice versa)."""
    up = await fake(WWW)
    z = zone_for(up.port, clock)
    try:
        plain, _ = question("www.example.test", use_edns=0)
        do, _ = question("www.example.test", want_dnssec=True)
        await z.resolve(plain, None)
        assert z.lookup(do, None) is None
        reply = decode(await z.resolve(do, None))
        assert reply.ednsflags & dns.flags.DO
        assert up.count() == 2
    finally:
        z.close()


async def test_concurrent_identical_misses_make_one_upstream_query(fake, clock) -> None:
    """Single flight: 50 clients asking the same name at once cost one upstream query."""
    up = await fake(WWW, delay=0.2)
    z = zone_for(up.port, clock)
    try:
        qs = [question("www.example.test")[0] for _ in range(50)]
        replies = await asyncio.gather(*(z.resolve(q, None) for q in qs))
        assert up.count() == 1
        assert all(addresses(decode(r)) == ["192.0.2.1"] for r in replies)
        assert {decode(r).id for r in replies} == {q.id for q in qs}  # each its own ID
        assert z.cache.coalesced == 49
    finally:
        z.close()


async def test_plain_lane_steps_aside_when_a_popular_entry_enters_its_prefetch_window(fake, clock) -> None:
    """The plain lane reuses an entry's rendered pieces within a TTL second, yet hands the
    query to the general path (which starts the refresh) once the entry is popular and in
    its last 10%."""
    up = await fake("pop.example.test. 100 IN A 192.0.2.5")
    z = zone_for(up.port, clock, prefetch=3)
    try:
        q, _ = question("pop.example.test")
        await z.resolve(q, None)
        first = z.cache.hot(q.key)
        assert first is not None and z.cache.hot(q.key) is first and first.tail_ttl == 100
        clock.advance(89.5)  # 10.5 s left: not yet inside the last 10%
        assert z.cache.hot(q.key) is not None and first.tail_ttl == 11
        clock.advance(0.6)  # 9.9 s left, popular (3 hits): the general path must see it
        assert z.cache.hot(q.key) is None
        assert z.lookup(q, None) is not None
        for _ in range(40):
            if up.count() == 2:
                break
            await asyncio.sleep(0.025)
        assert up.count() == 2 and z.cache.prefetches == 1
    finally:
        z.close()


async def test_popular_entry_is_prefetched_before_it_expires(fake, clock) -> None:
    """Asked `prefetch` times, an entry is refreshed in the background in its last 10%,
    so clients never see the miss."""
    up = await fake("pop.example.test. 100 IN A 192.0.2.5")
    z = zone_for(up.port, clock, prefetch=3)
    try:
        q, _ = question("pop.example.test")
        await z.resolve(q, None)
        for _ in range(3):
            assert z.lookup(q, None) is not None
        assert up.count() == 1  # popular, but not near expiry yet
        clock.advance(91)  # 9 s left of 100: inside the last 10%
        assert z.lookup(q, None) is not None  # served from cache, refresh started
        for _ in range(40):
            if up.count() == 2:
                break
            await asyncio.sleep(0.025)
        assert up.count() == 2 and z.cache.prefetches == 1
        clock.advance(50)  # past the old expiry: the refreshed entry answers
        assert ttls(decode(z.lookup(q, None))) == {50}
        assert up.count() == 2
    finally:
        z.close()


async def test_serve_stale_when_upstream_is_down_then_recovers(fake, clock) -> None:
    """RFC 8767: with the upstream stopped an expired answer is served (TTL 30), and once
    the upstream is back, fresh data replaces it."""
    up = await fake(WWW)
    z = zone_for(up.port, clock, max_ttl=10, serve_stale=3600, stale_recheck=5,
                 stale_answer_timeout=1.0)
    try:
        q, _ = question("www.example.test")
        await z.resolve(q, None)
        await up.stop()
        clock.advance(600)
        stale = decode(await z.resolve(q, None))
        assert stale.rcode() == dns.rcode.NOERROR and addresses(stale) == ["192.0.2.1"]
        assert ttls(stale) == {30}
        assert z.cache.stale == 1
        up.records = ["www.example.test. 300 IN A 192.0.2.2"]
        await up.start()
        # within the failure recheck window it keeps serving stale without asking
        assert addresses(decode(await z.resolve(q, None))) == ["192.0.2.1"]
        clock.advance(5)
        fresh = decode(await z.resolve(q, None))
        assert addresses(fresh) == ["192.0.2.2"] and ttls(fresh) == {10}
    finally:
        z.close()


async def test_stale_is_limited_to_the_configured_staleness(fake, clock) -> None:
    """Past serve_stale seconds after expiry, an unreachable upstream means SERVFAIL."""
    up = await fake(WWW)
    z = zone_for(up.port, clock, max_ttl=10, serve_stale=60)
    try:
        q, _ = question("www.example.test")
        await z.resolve(q, None)
        await up.stop()
        clock.advance(71)
        assert decode(await z.resolve(q, None)).rcode() == dns.rcode.SERVFAIL
    finally:
        z.close()


async def test_stale_nxdomain_is_not_served_after_a_positive_answer(fake, clock) -> None:
    """coredns#3586: once the name has had a positive answer (here: its AAAA, after the
    A was NXDOMAIN), a stale NXDOMAIN must not pin it as missing."""
    up = await fake(WWW)
    z = zone_for(up.port, clock, max_negative_ttl=5, max_ttl=5, serve_stale=3600)
    try:
        a, _ = question("new.example.test", "A")
        aaaa, _ = question("new.example.test", "AAAA")
        assert decode(await z.resolve(a, None)).rcode() == dns.rcode.NXDOMAIN
        up.records = ["new.example.test. 300 IN AAAA 2001:db8::1"]
        clock.advance(1)
        assert decode(await z.resolve(aaaa, None)).rcode() == dns.rcode.NOERROR
        await up.stop()
        clock.advance(10)
        assert decode(await z.resolve(a, None)).rcode() == dns.rcode.SERVFAIL
        # without the positive answer the stale NXDOMAIN would have been served
        other, _ = question("gone.example.test", "A")
        await up.start()
        await z.resolve(other, None)
        await up.stop()
        clock.advance(10)
        assert decode(await z.resolve(other, None)).rcode() == dns.rcode.NXDOMAIN
    finally:
        z.close()


async def test_slow_upstream_gets_a_stale_answer_while_the_refresh_goes_on(fake, clock) -> None:
    """RFC 8767 5 client response timer: after stale_answer_timeout the stale answer goes
    out; the refresh still completes and is used next time."""
    up = await fake(WWW)
    z = zone_for(up.port, clock, max_ttl=10, serve_stale=3600, stale_answer_timeout=0.1)
    z.forwarder.read_timeout = z.forwarder.timeout = 2.0
    try:
        q, _ = question("www.example.test")
        await z.resolve(q, None)
        up.delay = 0.4
        up.records = ["www.example.test. 300 IN A 192.0.2.3"]
        clock.advance(20)
        t0 = time.monotonic()
        assert addresses(decode(await z.resolve(q, None))) == ["192.0.2.1"]
        assert time.monotonic() - t0 < 0.35
        await asyncio.sleep(0.5)
        assert addresses(decode(z.lookup(q, None))) == ["192.0.2.3"]
    finally:
        z.close()


async def test_cache_is_bounded_and_eviction_stays_cheap(clock) -> None:
    """Bounded by entries with O(1) LRU eviction: inserting into a full cache costs the
    same as into an empty one (dnsmasq collapses 250x when full)."""
    reply = DNSRecord.question("x.example.test").reply()
    reply.add_answer(*RR.fromZone("x.example.test. 300 IN A 192.0.2.1"))

    async def fetch(q: Query) -> bytes:
        r = DNSRecord.parse(reply.pack())
        r.q.qname = r.rr[0].rname = to_text(q.name)
        return r.pack()

    cache = ResponseCache(fetch, **cache_options(max_entries=2000, timer=clock))

    async def fill(start: int, n: int) -> float:
        t0 = time.perf_counter()
        for i in range(start, start + n):
            await cache.resolve(question(f"h{i}.example.test")[0], None)
        return time.perf_counter() - t0

    empty = await fill(0, 2000)
    full = await fill(2000, 2000)
    assert len(cache) == 2000 and cache.evictions == 2000
    assert full < empty * 3  # no collapse: same order of cost
    assert cache.lookup(question("h0.example.test")[0], None) is None  # LRU went first
    assert cache.lookup(question("h3999.example.test")[0], None) is not None


async def test_hits_and_evictions_are_split_into_success_and_denial(fake, clock) -> None:
    """coredns_cache_hits_total / _evictions_total carry type=success|denial: the cache
    counts denial hits apart, also on the listeners' plain lane (`ResponseCache.hot`), and
    each part counts the evictions of its own capacity."""
    up = await fake(WWW, "ftp.example.test. 300 IN A 192.0.2.2")
    z = zone_for(up.port, clock, max_entries=1, max_denial_entries=1)
    try:
        www, _ = question("www.example.test")
        nx, _ = question("missing.example.test")
        await z.resolve(www, None)
        await z.resolve(nx, None)
        assert z.lookup(www, None) is not None and z.lookup(nx, None) is not None
        assert (z.cache.hits, z.cache.denial_hits) == (2, 1)
        assert z.cache.hot(nx.key) is not None  # the plain lane's hit
        assert (z.cache.hits, z.cache.denial_hits) == (3, 2)
        other, _ = question("other.example.test")
        await z.resolve(other, None)  # a second denial in a 1-entry denial part
        assert z.cache.evictions_by_type == {"success": 0, "denial": 1}
        assert z.lookup(www, None) is not None and z.lookup(nx, None) is None
        ftp, _ = question("ftp.example.test")
        await z.resolve(ftp, None)  # a second positive in a 1-entry success part
        assert z.cache.evictions_by_type == {"success": 1, "denial": 1}
        assert z.cache.evictions == 2 and len(z.cache) == 2
    finally:
        z.close()


async def test_ttl_counts_down_from_the_stored_time_to_the_sub_second(fake, clock) -> None:
    """An entry stored with TTL 30 and read 7.5 s later says 23 (never 30, never 22
    before 8 s have gone), on the general path and on the plain lane alike; at 29.9 s it
    says 1 and at 30 s it is gone."""
    up = await fake(WWW)
    z = zone_for(up.port, clock, max_ttl=30)
    try:
        clock.advance(0.25)  # stored at a fraction of a second
        q, _ = question("www.example.test")
        assert ttls(decode(await z.resolve(q, None))) == {30}
        clock.advance(0.7)
        assert ttls(decode(z.lookup(q, None))) == {30}  # not a whole second yet
        clock.advance(7.5 - 0.7)
        assert ttls(decode(z.lookup(q, None))) == {23}
        e = z.cache.hot(q.key)
        assert e is not None and e.tail_ttl == 23
        clock.advance(0.49)  # 7.99 s
        assert ttls(decode(z.lookup(q, None))) == {23}
        clock.advance(0.02)  # 8.01 s
        assert ttls(decode(z.lookup(q, None))) == {22}
        e = z.cache.hot(q.key)
        assert e is not None and e.tail_ttl == 22
        clock.advance(29.9 - 8.01)
        assert ttls(decode(z.lookup(q, None))) == {1}
        clock.advance(0.1)
        assert z.lookup(q, None) is None and z.cache.hot(q.key) is None
    finally:
        z.close()
