"""Pooled upstream UDP sockets (forward/udppool.py) and the Task-free miss path, against
real servers on loopback."""

from __future__ import annotations

import asyncio
import itertools

import dns.message
import dns.rcode
import pytest

from clusterdns.forward.forwarder import ForwardError
from clusterdns.forward.forwarding import Forwarding
from clusterdns.forward.table import build_forward_table
from clusterdns.forward.upstream import UpstreamSpec
from clusterdns.wire.question import parse
from components import cache_options, forwarder_options, make_forwarder
from fakedns import Dnsmasq, addresses, decode, question

WWW = "www.example.test. 300 IN A 192.0.2.1"


def name(text: str) -> bytes:
    return question(text)[0].name


class FixedIds:
    """A stand-in for the pool's random ID source that repeats IDs on purpose."""

    def __init__(self, *ids: int) -> None:
        self._ids = itertools.cycle(ids)

    def next(self) -> int:
        return next(self._ids)


async def test_one_socket_carries_many_queries(fake) -> None:
    """Sequential queries share one socket (one source port) until rotation is due."""
    up = await fake(WWW)
    ports: list[int] = []
    original = up.udp_received
    up.udp_received = lambda data, addr: (ports.append(addr[1]), original(data, addr))  # type: ignore[method-assign]
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port)])
    try:
        for _ in range(fwd.upstreams[0].pool.rotate_queries):  # 16 by default (udppool.py)
            assert addresses(decode(await fwd.query(name("www.example.test"), 1))) == ["192.0.2.1"]
        pool = fwd.upstreams[0].pool
        assert pool.opened == 1 and len(set(ports)) == 1 and ports[0] == pool.port
        assert pool.in_flight == 0
    finally:
        fwd.close()


async def test_socket_rotates_after_some_seconds(fake) -> None:
    """An idle-ish socket is still replaced after udp_rotate_seconds; the old one closes
    once its queries are done."""
    up = await fake(WWW)
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port)])
    fwd.upstreams[0].pool.rotate_seconds = 0.2
    try:
        pool = fwd.upstreams[0].pool
        await fwd.query(name("www.example.test"), 1)
        first = pool.port
        await fwd.query(name("www.example.test"), 1)
        assert pool.port == first and pool.opened == 1
        await asyncio.sleep(0.25)
        await fwd.query(name("www.example.test"), 1)
        assert pool.opened == 2 and pool.port != first
        assert not pool._retired  # the old socket had nothing in flight: closed
    finally:
        fwd.close()


async def test_rotation_keeps_the_old_socket_until_its_answers_arrive(fake) -> None:
    """Queries in flight when the socket rotates are still answered on the old socket."""
    records = [f"r{i}.example.test. 300 IN A 192.0.2.{i + 1}" for i in range(12)]
    up = await fake(*records, delay=0.2)
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port)])
    fwd.upstreams[0].pool.rotate_queries = 4
    try:
        answers = await asyncio.gather(*(fwd.query(name(f"r{i}.example.test"), 1) for i in range(12)))
        assert [addresses(decode(a)) for a in answers] == [[f"192.0.2.{i + 1}"] for i in range(12)]
        pool = fwd.upstreams[0].pool
        assert pool.opened == 3 and not pool._retired and pool.in_flight == 0
        assert fwd.stats.spoofed == 0 and fwd.stats.failures == 0
    finally:
        fwd.close()


async def test_concurrent_queries_never_share_an_id(fake) -> None:
    """The ID source repeats itself; queries in flight together still get distinct IDs,
    and each answer reaches its own query."""
    up = await fake("a.example.test. 300 IN A 192.0.2.1", "b.example.test. 300 IN A 192.0.2.2",
                    "c.example.test. 300 IN A 192.0.2.3", delay=0.1)
    ids: list[int] = []
    original = up.udp_received
    up.udp_received = lambda data, addr: (ids.append(int.from_bytes(data[:2], "big")),  # type: ignore[method-assign]
                                          original(data, addr))
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port)])
    fwd.upstreams[0].pool._ids = FixedIds(5, 5, 5, 9, 9, 5, 11)  # type: ignore[assignment]
    try:
        answers = await asyncio.gather(*(fwd.query(name(f"{x}.example.test"), 1) for x in "abc"))
        assert [addresses(decode(a)) for a in answers] == [["192.0.2.1"], ["192.0.2.2"], ["192.0.2.3"]]
        assert sorted(ids) == [5, 9, 11]
    finally:
        fwd.close()


async def test_late_answer_is_dropped_counted_and_its_id_not_reused(fake) -> None:
    """An answer that arrives after its query timed out is counted as late (not spoofed),
    changes nothing, and the timed-out ID is not given to the next query on the socket."""
    up = await fake(WWW, delay=0.3)
    ids: list[int] = []
    original = up.udp_received
    up.udp_received = lambda data, addr: (ids.append(int.from_bytes(data[:2], "big")),  # type: ignore[method-assign]
                                          original(data, addr))
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port)], read_timeout=0.1, timeout=0.15)
    fwd.upstreams[0].pool._ids = FixedIds(7, 7, 8)  # type: ignore[assignment]
    try:
        with pytest.raises(ForwardError):
            await fwd.query(name("www.example.test"), 1)
        assert fwd.stats.failures == 1
        await asyncio.sleep(0.35)  # the late answer comes in now
        assert fwd.stats.late == 1 and fwd.stats.spoofed == 0
        up.delay = 0.0
        assert addresses(decode(await fwd.query(name("www.example.test"), 1))) == ["192.0.2.1"]
        assert ids == [7, 8]  # ID 7 still belongs to the late answer
    finally:
        fwd.close()


async def test_answer_with_another_querys_id_is_spoofed(fake) -> None:
    """A datagram carrying an in-flight ID but another question is dropped and counted;
    the real answer still arrives."""
    up = await fake(WWW, spoof=("question",))
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port)])
    try:
        answers = await asyncio.gather(*(fwd.query(name("www.example.test"), 1) for _ in range(5)))
        assert all(addresses(decode(a)) == ["192.0.2.1"] for a in answers)
        assert fwd.stats.spoofed == 5 and fwd.stats.late == 0
    finally:
        fwd.close()


async def test_timeout_fails_over_and_the_pooled_sockets_stay_usable(fake) -> None:
    """A silent upstream costs read_timeout per question, then the next one answers; the
    pool to the silent one keeps one socket and nothing stays in flight."""
    silent = await fake(WWW, udp_silent=True)
    good = await fake(WWW)
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", silent.port), UpstreamSpec("127.0.0.1", good.port)],
                    policy="sequential", read_timeout=0.15, max_fails=100)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        answers = await asyncio.gather(*(fwd.query(name("www.example.test"), 1) for _ in range(3)))
        took = loop.time() - t0
        assert all(addresses(decode(a)) == ["192.0.2.1"] for a in answers)
        assert 0.14 < took < 1.0  # the three timed out together, not one after another
        assert silent.count("www.example.test") == 3 and good.count("www.example.test") == 3
        assert fwd.stats.failures == 3 and fwd.in_flight == 0
        pools = [u.pool for u in fwd.upstreams]
        assert [p.opened for p in pools] == [1, 1] and [p.in_flight for p in pools] == [0, 0]
    finally:
        fwd.close()


async def test_close_fails_questions_in_flight(fake) -> None:
    """Closing the forwarder ends the questions it still has out (ForwardError), at once."""
    up = await fake(WWW, delay=2.0)
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port)])
    pending = asyncio.ensure_future(fwd.query(name("www.example.test"), 1))
    await asyncio.sleep(0.05)
    fwd.close()
    with pytest.raises(ForwardError):
        await asyncio.wait_for(pending, 0.5)
    assert fwd.in_flight == 0


async def test_many_concurrent_misses_are_answered_through_futures() -> None:
    """Forwarding.handle returns a plain Future for a miss (no coroutine, no Task); 300
    concurrent misses (some repeated: single flight) all get their own right answer."""
    n = 300
    hosts = [f"--host-record=h{i}.example.test,10.9.{i // 250}.{i % 250 + 1}" for i in range(n)]
    with Dnsmasq(*hosts) as dm:
        table = build_forward_table([UpstreamSpec("127.0.0.1", dm.port)], {}, cache_opts=cache_options(),
                                    forward_opts=forwarder_options())
        fw = Forwarding(table, local_zones=(), fallthrough=())
        try:
            queries = [dns.message.make_query(f"H{i}.example.test", "A", use_edns=0)
                       for i in list(range(n)) + list(range(0, n, 10))]
            replies = [fw.handle(parse(q.to_wire()), q.to_wire(), False) for q in queries]
            assert all(type(r) is asyncio.Future for r in replies)
            done = await asyncio.wait_for(asyncio.gather(*replies), 5)  # type: ignore[arg-type]
            for q, wire in zip(queries, done, strict=True):
                reply = decode(wire)
                i = int(q.question[0].name.labels[0][1:])
                assert reply.id == q.id and reply.rcode() == dns.rcode.NOERROR
                assert reply.question[0].name == q.question[0].name  # case echoed
                assert addresses(reply) == [f"10.9.{i // 250}.{i % 250 + 1}"]
            cache = table.zones[0].cache
            assert cache.misses == n + n // 10 and cache.coalesced >= 1
            fwd = table.zones[0].forwarder
            assert fwd.stats.spoofed == 0 and fwd.in_flight == 0
            pool = fwd.upstreams[0].pool
            assert pool.in_flight == 0
            assert pool.opened >= 3  # at most 128 in flight per socket: its answers fit its buffer
        finally:
            fw.close()


async def test_miss_future_turns_upstream_failure_into_servfail() -> None:
    """The Future of a miss never fails: an unreachable upstream gives SERVFAIL."""
    from fakedns import free_port

    table = build_forward_table([UpstreamSpec("127.0.0.1", free_port())], {}, cache_opts=cache_options(),
                                forward_opts=forwarder_options(read_timeout=0.2, timeout=0.3))
    fw = Forwarding(table, local_zones=(), fallthrough=())
    try:
        q = dns.message.make_query("www.example.test", "A")
        fut = fw.handle(parse(q.to_wire()), q.to_wire(), False)
        assert isinstance(fut, asyncio.Future)
        reply = decode(await asyncio.wait_for(fut, 2))
        assert reply.id == q.id and reply.rcode() == dns.rcode.SERVFAIL
    finally:
        fw.close()
