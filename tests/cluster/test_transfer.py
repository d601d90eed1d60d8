"""The zone transfer stream (cluster/transfer.py), in-process: SOA first and last, every
compiled owner and RRset, no pod names, messages within their size, compression, one
snapshot while changes arrive, the reverse zones, IXFR answered in full, the allow-list,
and a 10,000-service zone in bounded messages."""

from __future__ import annotations

import io
import tracemalloc

import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from clusterdns.app.cluster import build_cluster
from clusterdns.cluster.transfer import AllowList, axfr, client_problem, transfer_apex
from clusterdns.cluster.zone import ClusterZone
from clusterdns.kube.manifests import load_manifests
from clusterdns.kube.objects import Endpoint, EndpointSlice, Port, Service
from clusterdns.kube.store import ClusterStore
from clusterdns.server.handler import Handler
from clusterdns.settings.schema import ServeConfig
from clusterdns.wire import question as Q
from clusterdns.wire.constants import MAX_TCP
from clusterdns.wire.names import to_wire
from helpers import DEMO, TEST_CLUSTER

MANIFESTS = [str(DEMO), str(TEST_CLUSTER)]
ZONE = dns.name.from_text("cluster.local.")


def fresh() -> tuple[ClusterStore, Handler]:
    objects, skipped = load_manifests(MANIFESTS)
    assert not skipped
    store, handler = build_cluster(ServeConfig(manifests=MANIFESTS, listen=["127.0.0.1:0"]))
    store.load(objects)
    return store, handler


@pytest.fixture(scope="module")
def handler() -> Handler:
    return fresh()[1]


def zone_of(handler: Handler) -> ClusterZone:
    assert handler.zone is not None
    return handler.zone


def start(
    zone: ClusterZone,
    qname: str = "cluster.local.",
    rdtype: str = "AXFR",
    limit: int = MAX_TCP,
    authority: list[dns.rrset.RRset] | None = None,
    **kw,
):
    q = dns.message.make_query(qname, dns.rdatatype.from_text(rdtype), **kw)
    q.authority = authority or []
    query = Q.parse(q.to_wire())
    apex = transfer_apex(zone, query.name)
    assert apex is not None
    return q, axfr(zone, query, apex, limit)


def messages(
    zone: ClusterZone,
    qname: str = "cluster.local.",
    rdtype: str = "AXFR",
    limit: int = MAX_TCP,
    authority: list[dns.rrset.RRset] | None = None,
    **kw,
) -> tuple[list[bytes], list[dns.message.Message]]:
    q, stream = start(zone, qname, rdtype, limit, authority, **kw)
    wires = list(stream)
    parsed = [dns.message.from_wire(w, one_rr_per_rrset=True) for w in wires]
    for m in parsed:
        assert m.id == q.id and m.rcode() == 0 and m.flags & dns.flags.AA and m.flags & dns.flags.QR
        assert m.question[0].name == q.question[0].name
    return wires, parsed


def records(parsed: list[dns.message.Message]) -> list[dns.rrset.RRset]:
    return [rr for m in parsed for rr in m.answer]


def as_lines(rrs: list[dns.rrset.RRset]) -> list[str]:
    return [" ".join(rr.to_text().split()) for rr in rrs]


def test_soa_comes_first_and_last_with_one_serial(handler: Handler) -> None:
    rrs = records(messages(zone_of(handler))[1])
    assert rrs[0].rdtype == rrs[-1].rdtype == dns.rdatatype.SOA
    assert rrs[0].name == rrs[-1].name == ZONE
    assert rrs[0][0].serial == rrs[-1][0].serial
    assert [rr.rdtype for rr in rrs].count(dns.rdatatype.SOA) == 2
    assert rrs[1].rdtype == dns.rdatatype.NS and rrs[1].name == ZONE, "the apex NS right after the SOA"


def test_every_compiled_owner_and_rrset_is_transferred_as_the_zone_answers_it(handler: Handler) -> None:
    zone = zone_of(handler)
    got = records(messages(zone)[1])[:-1]
    owners = {rr.name for rr in got}
    compiled = {
        dns.name.from_wire(name, 0)[0]
        for name, entry in zone.names.items()
        if name.endswith(zone.zone_wire) and (isinstance(entry, bytes) or entry.types())
    }
    assert owners == compiled
    for want in ("httpd-svc.default.svc", "_https._tcp.my-nginx.default.svc", "ns.dns", "dns-version"):
        assert dns.name.from_text(want, ZONE) in owners, want
    # each RRset is what a query for it answers
    by_key: dict[tuple[dns.name.Name, int], list[str]] = {}
    for rr in got:
        by_key.setdefault((rr.name, rr.rdtype), []).append(" ".join(rr.to_text().split()))
    for (name, rdtype), lines in by_key.items():
        q = dns.message.make_query(name, rdtype)
        reply = handler.handle(q.to_wire(), True)
        assert isinstance(reply, bytes)
        answer = dns.message.from_wire(reply, one_rr_per_rrset=True).answer
        assert sorted(lines) == sorted(as_lines([a for a in answer if a.name == name])), (name, rdtype)


def test_externalname_cname_and_headless_endpoints_are_in_the_zone(handler: Handler) -> None:
    lines = as_lines(records(messages(zone_of(handler))[1]))
    assert "alias.team.svc.cluster.local. 5 IN CNAME my-nginx.default.svc.cluster.local." in lines
    assert "db-0.db.team.svc.cluster.local. 5 IN A 10.244.5.1" in lines
    assert 'dns-version.cluster.local. 28800 IN TXT "1.1.0"' in lines


def test_no_pod_names_are_enumerated(handler: Handler) -> None:
    pod = dns.name.from_text("pod", ZONE)
    for rr in records(messages(zone_of(handler))[1]):
        assert not rr.name.is_subdomain(pod), rr.name
        assert "pod.cluster.local" not in rr.to_text()


def test_small_messages_split_the_same_records_and_stay_within_the_limit(handler: Handler) -> None:
    zone = zone_of(handler)
    big_wires, big = messages(zone)
    small_wires, small = messages(zone, limit=512)
    assert len(big_wires) == 1 and len(small_wires) > 20
    assert all(len(w) <= 512 for w in small_wires)
    assert as_lines(records(small)) == as_lines(records(big))


def test_names_are_compressed_within_each_message(handler: Handler) -> None:
    wires, parsed = messages(zone_of(handler))
    uncompressed = 0
    for rr in records(parsed):
        out = io.BytesIO()
        rr.to_wire(out)  # no compression table: every name in full
        uncompressed += len(out.getvalue())
    assert len(wires[0]) < uncompressed * 0.7
    # a PTR target (an RDATA name) is compressed too; SRV targets never are (RFC 2782)
    ptr_wires, _ = messages(zone_of(handler), "in-addr.arpa.")
    assert b"\x09httpd-svc\x07default\x03svc\x07cluster\x05local\x00" not in ptr_wires[0]
    assert b"\x03svc\x07cluster\x05local\x00" in wires[0]


def test_question_in_another_case_is_echoed_but_not_pointed_at(handler: Handler) -> None:
    _, parsed = messages(zone_of(handler), "Cluster.LOCAL.")
    assert parsed[0].question[0].name.to_text() == "Cluster.LOCAL."
    assert all(rr.name.to_text().islower() for rr in records(parsed))


def test_edns_query_gets_an_opt_in_every_message(handler: Handler) -> None:
    _, parsed = messages(zone_of(handler), limit=2048, use_edns=0)
    assert len(parsed) > 1 and all(m.edns == 0 for m in parsed)
    _, plain = messages(zone_of(handler), limit=2048)
    assert all(m.edns == -1 for m in plain)


def test_the_transfer_is_one_snapshot_while_changes_arrive() -> None:
    store, handler = fresh()
    zone = zone_of(handler)
    before = as_lines(records(messages(zone)[1]))
    _, stream = start(zone, limit=600)
    first = next(stream)
    # changes arrive mid-transfer: a Service added, one removed, the serial moves
    store.upsert(Service("default", "late", "ClusterIP", ("10.96.7.7",), False, None, (), False))
    store.delete("Service", "default", "httpd-svc")
    rest = list(stream)
    during = as_lines(records([dns.message.from_wire(w, one_rr_per_rrset=True) for w in [first, *rest]]))
    assert during == before
    after = as_lines(records(messages(zone)[1]))
    assert "late.default.svc.cluster.local. 5 IN A 10.96.7.7" in after
    assert not any(line.startswith("httpd-svc.default.") for line in after)
    assert after[0] != before[0], "the new transfer has the new serial"


def test_reverse_zones_hold_the_ptrs_under_their_apex(handler: Handler) -> None:
    for apex in ("in-addr.arpa.", "ip6.arpa."):
        rrs = records(messages(zone_of(handler), apex)[1])
        origin = dns.name.from_text(apex)
        assert rrs[0].rdtype == rrs[-1].rdtype == dns.rdatatype.SOA and rrs[0].name == origin
        assert all(rr.name.is_subdomain(origin) for rr in rrs)
        assert sum(rr.rdtype == dns.rdatatype.PTR for rr in rrs) > 0
    lines = as_lines(records(messages(zone_of(handler), "in-addr.arpa.")[1]))
    assert "179.229.99.10.in-addr.arpa. 5 IN PTR httpd-svc.default.svc.cluster.local." in lines


def test_ixfr_is_answered_with_the_whole_zone(handler: Handler) -> None:
    zone = zone_of(handler)
    soa = dns.rrset.from_text("cluster.local.", 0, "IN", "SOA", "ns. host. 1 7200 1800 86400 5")
    _, ixfr = messages(zone, rdtype="IXFR", authority=[soa])
    _, full = messages(zone)
    assert as_lines(records(ixfr)) == as_lines(records(full))
    assert ixfr[0].question[0].rdtype == dns.rdatatype.IXFR


def test_only_zone_apexes_are_transferable(handler: Handler) -> None:
    zone = zone_of(handler)
    assert transfer_apex(zone, to_wire("cluster.local")) == to_wire("cluster.local")
    for name in ("default.svc.cluster.local", "10.in-addr.arpa", "example.com", "local"):
        assert transfer_apex(zone, to_wire(name)) is None, name


def test_allow_list_takes_addresses_cidrs_and_any() -> None:
    allow = AllowList(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])
    assert allow.allows("127.0.0.1") and allow.allows("10.1.2.3") and allow.allows("fd00::53")
    assert allow.allows("::ffff:10.9.9.9"), "a dual-stack socket's IPv4 peer"
    assert not allow.allows("127.0.0.2") and not allow.allows("192.0.2.1") and not allow.allows("::1")
    assert not allow.allows("") and not AllowList([])
    assert AllowList(["*"]).allows("203.0.113.9")
    assert client_problem("10.0.0.0/8") is None and client_problem("*") is None and client_problem("::1") is None
    assert client_problem("example.com") and client_problem("10.0.0.0/33")


def ten_thousand_services() -> ClusterStore:
    """10,000 ClusterIP Services in 100 namespaces, each with a named port and one endpoint."""
    store = ClusterStore()
    objs: list = []
    port = (Port("http", "tcp", 80),)
    for i in range(10_000):
        ns, name = f"ns{i % 100}", f"svc-{i}"
        ip = f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        objs.append(Service(ns, name, "ClusterIP", (ip,), False, None, port, False))
        ep = f"10.200.{(i // 256) % 256}.{i % 256}"
        objs.append(EndpointSlice(ns, f"{name}-x", name, "IPv4", (Endpoint((ep,), True, None, None),), port))
    store.load(objs)
    return store


def test_a_10000_service_zone_streams_in_bounded_messages() -> None:
    from clusterdns.cluster.compile import ZoneSettings

    zone = ClusterZone(ten_thousand_services(), ZoneSettings())
    query = Q.parse(dns.message.make_query("cluster.local.", "AXFR").to_wire())
    stream = axfr(zone, query, zone.zone_wire)  # the snapshot is taken here
    tracemalloc.start()
    try:
        sizes = [len(wire) for wire in stream]  # each message dropped once measured
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert max(sizes) <= MAX_TCP and len(sizes) > 20
    assert sum(sizes) > 20 * MAX_TCP, "the zone is far bigger than any one message"
    assert peak < 8 * MAX_TCP, f"memory while streaming peaked at {peak} bytes: more than a few messages"
    total, owners = 0, set()
    for wire in axfr(zone, query, zone.zone_wire):
        m = dns.message.from_wire(wire, one_rr_per_rrset=True)
        total += len(m.answer)
        owners.update(rr.name for rr in m.answer if rr.rdtype == dns.rdatatype.A)
    # each Service: its A and SRV, an endpoint name, a _http._tcp SRV; then SOA twice, NS and
    # dns-version (no kube-dns Service and no listen address: ns.dns has no address)
    assert total == 4 * 10_000 + 4
    assert dns.name.from_text("svc-9999.ns99.svc", ZONE) in owners
    assert len(owners) == 2 * 10_000
