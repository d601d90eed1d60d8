"""The forward cache's callback lane for misses (`ResponseCache.miss` with `notify`,
what the UDP listener uses instead of a Future) and the TCP pool learning a server's
queries-per-connection limit, against real upstreams on loopback."""

from __future__ import annotations

import asyncio

import dns.rcode

from clusterdns.cache.cache import LATER
from clusterdns.forward.table import ForwardZone
from clusterdns.forward.upstream import UpstreamSpec
from components import cache_options, make_forwarder
from fakedns import addresses, decode, question, ttls
from test_tcp_pipelining import PipeServer, ask_all, check, forwarder, names

WWW = "www.example.test. 300 IN A 192.0.2.1"


def zone_for(port: int, **cache: object) -> ForwardZone:
    return ForwardZone(".", make_forwarder([UpstreamSpec("127.0.0.1", port)], read_timeout=0.3,
                                      timeout=0.6, health_interval=0.05, max_concurrent=2), cache_options(**cache))


async def test_a_miss_with_notify_gives_later_and_each_waiter_its_reply_once(fake) -> None:
    """Two clients miss on one name: one upstream query (single flight), LATER for both,
    and each callback gets its own reply (its ID) exactly once, after `miss` returned."""
    up = await fake(WWW)
    z = zone_for(up.port)
    assert z.cache is not None
    try:
        got: list[tuple[str, bytes]] = []
        (q1, _), (q2, _) = question("www.example.test"), question("www.example.test")
        assert z.cache.miss(q1, None, lambda r: got.append(("a", r))) is LATER
        assert z.cache.miss(q2, None, lambda r: got.append(("b", r))) is LATER
        assert got == []  # never before `miss` returns
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(got) == 2:
                break
        await asyncio.sleep(0.05)  # no second call
        assert sorted(k for k, _ in got) == ["a", "b"]
        for k, reply in got:
            msg = decode(reply)
            assert msg.id == (q1.id if k == "a" else q2.id)
            assert addresses(msg) == ["192.0.2.1"]
        assert up.count() == 1 and z.cache.coalesced == 1
    finally:
        z.close()


async def test_a_miss_refused_at_once_returns_the_reply_and_never_calls_notify(fake) -> None:
    """Over max_concurrent the fetch fails inside `miss`: the REFUSED reply comes back
    as bytes and the callback is never called (no answer sent twice)."""
    up = await fake(WWW, delay=0.3)
    z = zone_for(up.port)
    assert z.cache is not None
    try:
        called: list[bytes] = []
        for i in range(2):  # fill max_concurrent=2 with slow questions
            q, _ = question(f"slow{i}.example.test")
            assert z.cache.miss(q, None, called.append) is LATER
        q, _ = question("www.example.test")
        reply = z.cache.miss(q, None, lambda r: called.append(b"refused-callback"))
        assert isinstance(reply, bytes)
        assert decode(reply).rcode() == dns.rcode.REFUSED
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(called) == 2:
                break
        await asyncio.sleep(0.05)
        assert b"refused-callback" not in called and len(called) == 2
    finally:
        z.close()


async def test_a_slow_upstream_with_notify_gets_the_stale_answer_once(fake) -> None:
    """Serve-stale through the callback lane: an expired entry goes out after
    stale_answer_timeout, and the late upstream answer is not handed over a second time."""
    up = await fake("www.example.test. 1 IN A 192.0.2.1")
    z = zone_for(up.port, min_ttl=1, max_ttl=1, serve_stale=60.0, stale_answer_timeout=0.05)
    assert z.cache is not None
    try:
        q, _ = question("www.example.test")
        await z.resolve(q, None)
        await asyncio.sleep(1.1)  # expired (the cache's own clock)
        up.delay = 0.3
        got: list[bytes] = []
        q2, _ = question("www.example.test")
        assert z.cache.miss(q2, None, got.append) is LATER
        await asyncio.sleep(0.15)
        assert len(got) == 1 and ttls(decode(got[0])) == {z.cache.stale_ttl}
        await asyncio.sleep(0.4)  # the upstream's answer has landed meanwhile
        assert len(got) == 1 and up.count() == 2
    finally:
        z.close()


async def test_a_server_closing_after_n_queries_gets_at_most_n_per_connection_once_learned() -> None:
    """Each connection is closed by the server after 40 answers: after two such closes
    the pool sends no more than 40 on a connection, so a second wave is answered in
    full with nothing sent twice and no failure."""
    async with PipeServer(batch=1000, wait=0.02, close_after=40) as srv:
        fwd = forwarder(srv.port, read_timeout=3.0, timeout=3.0)
        try:
            await ask_all(fwd, names(200, "w"))  # the first wave teaches the limit
            pool = fwd.upstreams[0].tcp
            assert pool.per_conn_limit == 40
            failures, sent = fwd.stats.failures, srv.queries
            qnames = names(200, "v")
            answers = await ask_all(fwd, qnames)
            for n, a in zip(qnames, answers, strict=True):
                assert isinstance(a, bytes), a
                check(n, a)
            assert fwd.stats.failures == failures
            assert srv.queries - sent == 200  # none resent
        finally:
            fwd.close()


async def test_a_single_mid_flight_close_teaches_no_limit() -> None:
    """One connection closed by the server mid-flight (a restart, say) is no limit: the
    pool goes on sending as many as it likes on the next connection."""
    async with PipeServer(batch=1000, wait=0.02, close_after=50, close_conns=1) as srv:
        fwd = forwarder(srv.port)
        try:
            answers = await ask_all(fwd, names(300))
            assert all(isinstance(a, bytes) for a in answers)
            assert fwd.upstreams[0].tcp.per_conn_limit == 0
        finally:
            fwd.close()
