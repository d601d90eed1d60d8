"""Guards for the hot path: a question never asked before is answered from the compiled
zone without dnslib, without the general path and without storing anything per question,
and a store change recompiles exactly the names it touches (no timing involved).

UDP goes through a real listener on loopback in the test's event loop, in both I/O modes
(batched recvmmsg/sendmmsg and one-by-one); TCP through its protocol with a recording
transport (uvicorn's habit).
"""

from __future__ import annotations

import dns.message
import dns.rrset
import dnslib
import pytest

from clusterdns.app.cluster import build_cluster
from clusterdns.cluster.compile import Node
from clusterdns.kube.manifests import load_manifests
from clusterdns.kube.objects import parse_object
from clusterdns.server import handler as handler_mod
from clusterdns.server.tcp import TCPLimits, TCPProtocol
from clusterdns.settings.schema import ServeConfig
from helpers import DEMO, TEST_CLUSTER, UDPClient, udp_listener

NAME = "httpd-svc.default.svc.cluster.local."


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data[2:])  # strip the TCP length prefix

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


@pytest.fixture
def cluster():
    store, handler = build_cluster(ServeConfig(manifests=[str(DEMO), str(TEST_CLUSTER)]))
    store.load(load_manifests([str(DEMO), str(TEST_CLUSTER)])[0])
    return store, handler


def _forbid_slow_path(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make dnslib and the slow path record every use (the listener's reader runs inside
    the event loop, where an exception would only be logged)."""
    used: list[str] = []

    def record(what: str):
        def boom(*a: object, **k: object) -> None:
            used.append(what)
            raise AssertionError(f"a plain query went through {what}")
        return boom

    monkeypatch.setattr(dnslib.DNSRecord, "parse", record("dnslib parse"))
    monkeypatch.setattr(dnslib.DNSRecord, "pack", record("dnslib pack"))
    monkeypatch.setattr(dnslib.DNSRecord, "__init__", record("a dnslib message"))
    monkeypatch.setattr(handler_mod.Handler, "handle", record("the slow path"))
    return used


FIRST_TIME = [
    (NAME, "A", 0), (NAME.upper(), "AAAA", 0),  # NODATA: v4-only
    ("_https._tcp.my-nginx.default.svc.cluster.local.", "SRV", 0),
    ("busybox-1.busybox-subdomain.default.svc.cluster.local.", "A", 0),
    ("www.example.com.default.svc.cluster.local.", "A", 3),  # search-path junk
    ("x1y2z3.httpd-svc.default.svc.cluster.local.", "A", 3),  # random subdomain
    ("179.229.99.10.in-addr.arpa.", "PTR", 0),
]


@pytest.mark.parametrize("io", ["mmsg", "plain"])
@pytest.mark.parametrize("edns", [-1, 0])
async def test_first_udp_question_skips_dnslib_and_the_general_path(cluster, monkeypatch: pytest.MonkeyPatch, edns: int, io: str) -> None:
    _, handler = cluster
    listener = udp_listener(handler, io=io)
    client = UDPClient(listener.sockname())
    used = _forbid_slow_path(monkeypatch)
    replies = []
    try:
        for name, rdtype, _ in FIRST_TIME:
            q = dns.message.make_query(name, rdtype, use_edns=edns)
            replies.append((q, await client.ask(q.to_wire())))
    finally:
        client.close()
        listener.close()
    assert used == []
    for (q, reply), (_, _, rcode) in zip(replies, FIRST_TIME, strict=True):
        assert reply is not None, q.question
        r = dns.message.from_wire(reply)
        assert r.id == q.id and r.rcode() == rcode, q.question
        wire = q.to_wire()
        qlen = len(wire) - 12 - (11 if edns == 0 else 0)
        assert reply[12:12 + qlen] == wire[12:12 + qlen], "the client's own question bytes (0x20)"
        assert (r.edns == 0) == (edns == 0)
    assert dns.message.from_wire(replies[0][1]).answer[0][0].address == "10.99.229.179"


def test_first_tcp_question_skips_dnslib_and_the_general_path(cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    _, handler = cluster
    proto = TCPProtocol(handler, TCPLimits())
    t = RecordingTransport()
    proto.transport = t  # type: ignore[assignment]
    used = _forbid_slow_path(monkeypatch)
    queries = [dns.message.make_query(name, rdtype) for name, rdtype, _ in FIRST_TIME]
    for q in queries:
        proto._answer(q.to_wire())
    assert used == []
    assert [dns.message.from_wire(w).id for w in t.sent] == [q.id for q in queries]
    assert [dns.message.from_wire(w).rcode() for w in t.sent] == [rc for _, _, rc in FIRST_TIME]


def test_never_asked_names_store_nothing_per_question(cluster) -> None:
    """A flood of unique names leaves the zone as it was: nothing to fill, evict or clear."""
    _store, handler = cluster
    zone = handler.zone
    before = dict(zone.names)
    for i in range(5000):
        junk = dns.message.make_query(f"j{i:05d}x.default.svc.cluster.local.", "A", use_edns=i % 2 - 1).to_wire()
        reply = handler.fast(junk, False, 0)
        assert reply is not None and dns.message.from_wire(reply).rcode() == 3
    assert zone.names == before and all(zone.names[k] is v for k, v in before.items())
    remembered = sum(len(p.classes or ()) for p in zone.nxdomain)
    assert remembered <= 4, "counters are kept per answer shape (size, EDNS), not per name"


def test_service_change_recompiles_only_its_names(cluster) -> None:
    store, handler = cluster
    zone = handler.zone
    before = dict(zone.names)
    q_changed = dns.message.make_query(NAME, "A").to_wire()
    q_new = dns.message.make_query("new-svc.default.svc.cluster.local.", "A").to_wire()
    assert dns.message.from_wire(handler.fast(q_new, False, 0)).rcode() == 3
    store.upsert(parse_object({"apiVersion": "v1", "kind": "Service",
                               "metadata": {"name": "httpd-svc", "namespace": "default"},
                               "spec": {"clusterIP": "10.99.0.99"}}))
    store.upsert(parse_object({"apiVersion": "v1", "kind": "Service",
                               "metadata": {"name": "new-svc", "namespace": "default"},
                               "spec": {"clusterIP": "10.99.0.100"}}))
    assert dns.message.from_wire(handler.fast(q_changed, False, 0)).answer[0][0].address == "10.99.0.99"
    assert dns.message.from_wire(handler.fast(q_new, False, 0)).answer[0][0].address == "10.99.0.100"
    changed = {k for k, v in zone.names.items() if before.get(k) is not v}
    svc = {k for k in changed if b"\x07default\x03svc" in k}
    assert svc == {k for k in changed if k.endswith(b"\x07default\x03svc\x07cluster\x05local\x00")
                   and (b"httpd-svc" in k or b"new-svc" in k)}
    rest = changed - svc
    # besides the two Services: their PTR names and the apexes (the SOA serial moved)
    assert all(k.endswith(b"in-addr\x04arpa\x00") or k in zone.apex_wires or k.startswith(b"\x02ns\x03dns")
               for k in rest), rest
    assert len(changed) < 12


def test_ptr_answers_follow_the_cluster_ip(cluster) -> None:
    store, handler = cluster
    q = dns.message.make_query("179.229.99.10.in-addr.arpa.", "PTR").to_wire()
    assert dns.message.from_wire(handler.fast(q, False, 0)).answer
    store.delete("Service", "default", "httpd-svc")
    r = handler.fast(q, False, 0) or handler.handle(q, False)
    assert dns.message.from_wire(r).rcode() == 3


def test_nodes_have_no_per_instance_dict(cluster) -> None:
    """Memory grows with the cluster: lone records are bare bytes, nodes are slotted,
    ENTs share one empty mapping."""
    _, handler = cluster
    entries = list(handler.zone.names.values())
    lone = [e for e in entries if isinstance(e, bytes)]
    nodes = [e for e in entries if not isinstance(e, bytes)]
    assert lone, "names with one record hold just its bytes"
    assert all(e[:2] == b"\xc0\x0c" for e in lone), "owned by the name asked"
    assert all(isinstance(n, Node) and not hasattr(n, "__dict__") for n in nodes)
    empties = [n for n in nodes if not n.types()]
    assert len({id(n.answers) for n in empties}) == 1


@pytest.mark.parametrize("io", ["mmsg", "plain"])
@pytest.mark.parametrize("edns", [False, True])
async def test_name_past_255_bytes_gets_formerr_without_a_walk_over_its_labels(
        cluster, monkeypatch: pytest.MonkeyPatch, io: str, edns: bool) -> None:
    """A junk flood of ~2,000 one-byte labels is told by its size: FORMERR with the
    query's ID, no walk of the name and no parse (either would cost ~1 us per label)."""
    from clusterdns.wire import question

    _, handler = cluster
    listener = udp_listener(handler, io=io)
    client = UDPClient(listener.sockname())
    walked: list[int] = []
    real_walk = question.question_name_end

    def counting_walk(data: bytes, i: int = 12) -> int:
        walked.append(len(data))
        return real_walk(data, i)

    monkeypatch.setattr(question, "question_name_end", counting_walk)
    monkeypatch.setattr("clusterdns.obs.counters.question_name_end", counting_walk, raising=False)
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" if edns else b""
    junk = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00" + (b"\x01" if edns else b"\x00") \
        + b"\x01a" * 2000 + b"\x00\x00\x01\x00\x01" + opt
    try:
        reply = await client.ask(junk)
        good = dns.message.make_query(NAME, "A")
        answer = await client.ask(good.to_wire())
    finally:
        client.close()
        listener.close()
    assert reply is not None and reply[:2] == b"\xbe\xef"
    assert reply[2] & 0x80 and reply[3] & 0x0F == 1, "QR set, FORMERR"
    assert not [n for n in walked if n > 1000], "the junk's labels were walked"
    assert answer is not None and dns.message.from_wire(answer).rcode() == 0
    assert handler.stats.classes, "the FORMERR was counted"


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR", "OPT", "ANY"])
def test_transfer_and_meta_types_for_a_missing_name_get_the_general_paths_answer(cluster, rdtype: str) -> None:
    """The compiled negative template is for data types only: AXFR/IXFR (REFUSED), OPT
    (FORMERR) and ANY under a name that does not exist go the general way, so the hot
    path never answers them differently (found by bench/fuzz.py)."""
    _, handler = cluster
    q = dns.message.make_query("nope.default.svc.cluster.local.", rdtype).to_wire()
    general = handler.answer(q, False)
    assert general is not None and isinstance(general.reply, bytes)
    assert handler.fast(q, 0, 0) in (None, general.reply)
    expected = {"AXFR": 5, "IXFR": 5, "OPT": 1, "ANY": 3}[rdtype]
    assert general.reply[3] & 0x0F == expected
