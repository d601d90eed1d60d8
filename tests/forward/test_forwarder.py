"""The Forwarder against real servers on loopback: routing, failover, TC, TCP, caps."""

from __future__ import annotations

import asyncio
import socket

import dns.rcode
import pytest

from clusterdns.forward.forwarder import ForwardError, Guarded
from clusterdns.forward.table import ForwardZone, build_forward_table
from clusterdns.forward.upstream import UpstreamSpec, parse_hostport
from clusterdns.wire.constants import RRType
from components import cache_options, forwarder_options, make_forwarder
from fakedns import Dnsmasq, addresses, decode, free_port, question

WWW = "www.example.test. 300 IN A 192.0.2.1"


def dead_port() -> int:
    """A loopback port nobody listens on: UDP gets ICMP port unreachable, TCP a reset."""
    return free_port()


async def test_forwards_to_dnsmasq_over_udp_and_tcp() -> None:
    """A real upstream's answer comes back to the client, with the client's ID and case."""
    with Dnsmasq("--host-record=web.example.test,192.0.2.7") as dm:
        for force_tcp in (False, True):
            zone = ForwardZone(".", make_forwarder([UpstreamSpec("127.0.0.1", dm.port, force_tcp)]), None)
            q, msg = question("WEB.example.TEST", "A", use_edns=0)
            reply = decode(await zone.resolve(q, q.udp_limit()))
            zone.close()
            assert reply.id == msg.id
            assert reply.rcode() == dns.rcode.NOERROR
            assert reply.question[0].name.to_text() == "WEB.example.TEST."
            assert addresses(reply) == ["192.0.2.7"]


async def test_stub_domain_goes_to_its_own_servers(fake) -> None:
    """`--stub consul.local=...` sends that zone to its servers and only that zone."""
    default = await fake(WWW)
    with Dnsmasq("--host-record=db.consul.local,10.150.0.9") as stub:
        table = build_forward_table([UpstreamSpec("127.0.0.1", default.port)],
                                    {"consul.local": [UpstreamSpec("127.0.0.1", stub.port)]},
                                    cache_opts=cache_options(), forward_opts=forwarder_options())
        try:
            q, _ = question("db.consul.local")
            zone = table.route(q.name)
            assert zone is not None and zone.zone == "consul.local."
            assert addresses(decode(await zone.resolve(q, None))) == ["10.150.0.9"]
            q, _ = question("www.example.test")
            zone = table.route(q.name)
            assert zone is not None and zone.zone == "."
            assert addresses(decode(await zone.resolve(q, None))) == ["192.0.2.1"]
            assert default.count("db.consul.local") == 0
            # a label boundary matters: notconsul.local is not inside consul.local
            assert table.route(question("x.notconsul.local")[0].name).zone == "."
        finally:
            table.close()


async def test_failover_past_a_dead_upstream_and_mark_it_down(fake) -> None:
    """A dead upstream costs one try; after max_fails it is down and tried last."""
    good = await fake(WWW)
    dead = UpstreamSpec("127.0.0.1", dead_port())
    fwd = make_forwarder([dead, UpstreamSpec("127.0.0.1", good.port)], policy="sequential",
                    read_timeout=0.5, health_interval=0.05)
    try:
        for _ in range(3):
            q, _ = question("www.example.test")
            answer = await fwd.query(q.name, q.qtype)
            assert addresses(decode(answer)) == ["192.0.2.1"]
        assert not fwd.upstreams[0].healthy
        assert fwd.stats.failures == 2  # the third query skipped the down upstream
        # the health probe keeps failing while it stays dead
        await asyncio.sleep(0.3)
        assert fwd.stats.health_failures >= 2 and not fwd.upstreams[0].healthy
    finally:
        fwd.close()


async def test_down_upstream_is_probed_back_to_healthy(fake) -> None:
    """`. IN NS` probes bring an upstream back as soon as it answers again."""
    port = free_port()
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", port)], read_timeout=0.3, health_interval=0.05,
                    timeout=1.0)
    try:
        for _ in range(2):
            with pytest.raises(ForwardError):
                await fwd.query(question("www.example.test")[0].name, RRType.NS)
        assert not fwd.upstreams[0].healthy
        up = await fake(WWW, port=port)
        for _ in range(40):  # bounded: 2 s
            if fwd.upstreams[0].healthy:
                break
            await asyncio.sleep(0.05)
        assert fwd.upstreams[0].healthy
        assert up.count(".") >= 1  # the probe was `. IN NS`
    finally:
        fwd.close()


async def test_timeout_moves_on_to_the_next_upstream(fake) -> None:
    """An upstream that never answers (UDP silent) costs read_timeout, then the next answers."""
    silent = await fake(WWW, udp_silent=True)
    good = await fake(WWW)
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", silent.port), UpstreamSpec("127.0.0.1", good.port)],
                    policy="sequential", read_timeout=0.3)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        answer = await fwd.query(question("www.example.test")[0].name, 1)
        assert addresses(decode(answer)) == ["192.0.2.1"]
        assert 0.25 < loop.time() - t0 < 2.0
        assert silent.count("www.example.test") == 1 and good.count("www.example.test") == 1
    finally:
        fwd.close()


async def test_truncated_udp_answer_is_retried_over_tcp(fake) -> None:
    """TC over UDP means the full answer needs TCP (RFC 7766); the client gets it whole."""
    many = [f"big.example.test. 300 IN A 192.0.2.{i}" for i in range(1, 60)]
    up = await fake(*many, udp_tc=True)
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port)])
    try:
        answer = decode(await fwd.query(question("big.example.test")[0].name, 1))
        assert len(addresses(answer)) == 59
        assert not answer.flags & 0x0200  # no TC in what we return
        assert up.count("big.example.test", "udp") == 1 and up.count("big.example.test", "tcp") == 1
        assert fwd.stats.tc_retries == 1
    finally:
        fwd.close()


async def test_force_tcp_reuses_pooled_connections_and_expires_them(fake) -> None:
    """force_tcp never uses UDP; one connection carries many queries until idle expiry."""
    up = await fake(WWW)
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port, force_tcp=True)], expire=0.3)
    try:
        for _ in range(5):
            await fwd.query(question("www.example.test")[0].name, 1)
        assert up.count(proto="udp") == 0 and up.count(proto="tcp") == 5
        assert fwd.stats.conns_opened == 1 and fwd.stats.conns_reused == 4
        await asyncio.sleep(0.4)
        await fwd.query(question("www.example.test")[0].name, 1)
        assert fwd.stats.conns_opened == 2  # the idle one expired
    finally:
        fwd.close()


async def test_pooled_connection_closed_by_server_is_replaced(fake) -> None:
    """A pooled TCP connection the upstream closed (restart) is retried on a new one."""
    up = await fake(WWW)
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port, force_tcp=True)])
    try:
        await fwd.query(question("www.example.test")[0].name, 1)
        await up.stop()
        await up.start()  # same port; the pooled connection is dead now
        answer = await fwd.query(question("www.example.test")[0].name, 1)
        assert addresses(decode(answer)) == ["192.0.2.1"]
        assert fwd.stats.failures == 0
    finally:
        fwd.close()


async def test_in_flight_cap_refuses_instead_of_queueing(fake) -> None:
    """Over max_concurrent, new questions get REFUSED at once (memory stays flat)."""
    up = await fake(*[f"n{i}.example.test. 300 IN A 192.0.2.{i}" for i in range(8)], delay=0.5)
    zone = ForwardZone(".", make_forwarder([UpstreamSpec("127.0.0.1", up.port)], max_concurrent=3), cache_options())
    try:
        qs = [question(f"n{i}.example.test")[0] for i in range(8)]
        replies = [decode(r) for r in await asyncio.gather(*(zone.resolve(q, None) for q in qs))]
        rcodes = sorted(r.rcode() for r in replies)
        assert rcodes.count(dns.rcode.REFUSED) == 5
        assert rcodes.count(dns.rcode.NOERROR) == 3
        assert up.count() == 3 and zone.forwarder.stats.refused == 5
        assert zone.forwarder.in_flight == 0
    finally:
        zone.close()


async def test_cluster_zone_is_never_forwarded_upstream(fake) -> None:
    """The guard: a forwarder built with except_zones refuses to send them anywhere."""
    up = await fake(WWW)
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", up.port)], except_zones=["cluster.local"])
    try:
        with pytest.raises(Guarded):
            await fwd.query(question("kubernetes.default.svc.cluster.local")[0].name, 1)
        with pytest.raises(Guarded):
            await fwd.query(question("CLUSTER.LOCAL")[0].name, 1)
        await fwd.query(question("notcluster.local")[0].name, 1)  # only real subdomains
        assert up.count("kubernetes.default.svc.cluster.local") == 0
    finally:
        fwd.close()


@pytest.mark.parametrize("policy", ["random", "round_robin", "sequential"])
async def test_policy_spreads_or_pins_queries(fake, policy: str) -> None:
    """round_robin alternates, sequential sticks to the first, random uses both."""
    a, b = await fake(WWW), await fake(WWW)
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", a.port), UpstreamSpec("127.0.0.1", b.port)],
                    policy=policy)
    try:
        for _ in range(20):
            await fwd.query(question("www.example.test")[0].name, 1)
        counts = (a.count(), b.count())
        if policy == "round_robin":
            assert counts == (10, 10)
        elif policy == "sequential":
            assert counts == (20, 0)
        else:
            assert min(counts) >= 1  # chance of all 20 on one side: 2 in a million
    finally:
        fwd.close()


def test_upstream_addresses_parse_like_the_flags() -> None:
    """HOST, HOST:PORT, [v6]:PORT, bare v6, tcp:// ; names are rejected (no resolving)."""
    assert parse_hostport("10.0.0.1") == UpstreamSpec("10.0.0.1", 53)
    assert parse_hostport("10.0.0.1:5353") == UpstreamSpec("10.0.0.1", 5353)
    assert parse_hostport("[::1]:5300") == UpstreamSpec("::1", 5300)
    assert parse_hostport("::1") == UpstreamSpec("::1", 53)
    assert parse_hostport("tcp://10.0.0.1") == UpstreamSpec("10.0.0.1", 53, True)
    assert str(UpstreamSpec("::1", 53)) == "[::1]:53"
    with pytest.raises(ValueError):
        parse_hostport("dns.google")
    with pytest.raises(ValueError):
        parse_hostport("10.0.0.1:70000")


async def test_ipv6_upstream_on_loopback(fake) -> None:
    """[::1] upstreams work (family-aware sockets)."""
    if not socket.has_ipv6:
        pytest.fail("IPv6 loopback is required")
    up = await fake(WWW, host="::1")
    fwd = make_forwarder([UpstreamSpec("::1", up.port)])
    try:
        answer = await fwd.query(question("www.example.test")[0].name, 1)
        assert addresses(decode(answer)) == ["192.0.2.1"]
    finally:
        fwd.close()
