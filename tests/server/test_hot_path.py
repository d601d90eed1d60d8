"""Guards for the hot path: a cached answer never touches dnslib or the slow path, and a
store change drops exactly the answers that read it (no timing involved).

UDP goes through a real listener on loopback in the test's event loop, in both I/O modes
(batched recvmmsg/sendmmsg and one-by-one); TCP through its protocol with a recording
transport (uvicorn's habit).
"""

from __future__ import annotations

import dns.message
import dns.rrset
import pytest

from clusterdns.app import ServeOptions, build_cluster
from clusterdns.kube.manifests import load_manifests
from clusterdns.kube.objects import parse_object
from clusterdns.server import handler as handler_mod
from clusterdns.server.tcp import TCPLimits, TCPProtocol
from clusterdns.wire import message as message_mod
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
def cluster():  # noqa: ANN201
    store, handler = build_cluster(ServeOptions(manifests=[str(DEMO), str(TEST_CLUSTER)]))
    store.load(load_manifests([str(DEMO), str(TEST_CLUSTER)])[0])
    return store, handler


def _forbid_slow_path(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make dnslib and the slow path record every use (the listener's reader runs inside
    the event loop, where an exception would only be logged)."""
    used: list[str] = []

    def record(what: str):  # noqa: ANN202
        def boom(*a: object, **k: object) -> None:
            used.append(what)
            raise AssertionError(f"a cached answer went through {what}")
        return boom

    monkeypatch.setattr(message_mod.DNSRecord, "parse", record("dnslib parse"))
    monkeypatch.setattr(message_mod.DNSRecord, "pack", record("dnslib pack"))
    monkeypatch.setattr(handler_mod.Handler, "handle", record("the slow path"))
    return used


@pytest.mark.parametrize("io", ["mmsg", "plain"])
@pytest.mark.parametrize("edns", [-1, 0])
async def test_cached_udp_answer_skips_dnslib_and_slow_path(cluster, monkeypatch: pytest.MonkeyPatch, edns: int, io: str) -> None:  # noqa: ANN001
    _, handler = cluster
    listener = udp_listener(handler, io=io)
    client = UDPClient(listener.sockname())
    try:
        first = dns.message.make_query(NAME, "A", use_edns=edns)
        assert await client.ask(first.to_wire()) is not None
        used = _forbid_slow_path(monkeypatch)
        again = dns.message.make_query(NAME.upper(), "A", use_edns=edns)  # other ID, other case
        reply = await client.ask(again.to_wire())
    finally:
        client.close()
        listener.close()
    assert used == [] and reply is not None
    r = dns.message.from_wire(reply)
    assert r.id == again.id
    assert reply[12:12 + len(again.to_wire()) - 12 - (11 if edns == 0 else 0)] == \
        again.to_wire()[12:len(again.to_wire()) - (11 if edns == 0 else 0)]
    assert r.answer[0][0].address == "10.99.229.179"
    assert (r.edns == 0) == (edns == 0)


def test_cached_tcp_answer_skips_dnslib_and_slow_path(cluster, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    _, handler = cluster
    proto = TCPProtocol(handler, TCPLimits())
    t = RecordingTransport()
    proto.transport = t  # type: ignore[assignment]
    q = dns.message.make_query(NAME, "A").to_wire()
    proto._answer(q)
    _forbid_slow_path(monkeypatch)
    q2 = dns.message.make_query(NAME, "A").to_wire()
    proto._answer(q2)
    assert dns.message.from_wire(t.sent[1]).id == dns.message.from_wire(q2).id


async def test_negative_answers_are_cached_too(cluster, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    _, handler = cluster
    listener = udp_listener(handler)
    client = UDPClient(listener.sockname())
    try:
        q = dns.message.make_query("www.example.com.default.svc.cluster.local.", "A")
        assert await client.ask(q.to_wire()) is not None
        used = _forbid_slow_path(monkeypatch)
        reply = await client.ask(dns.message.make_query("www.example.com.default.svc.cluster.local.", "A").to_wire())
    finally:
        client.close()
        listener.close()
    assert used == [] and reply is not None
    assert dns.message.from_wire(reply).rcode() == 3


def test_store_change_drops_only_the_answers_that_read_it(cluster) -> None:  # noqa: ANN001
    store, handler = cluster
    table = handler.table
    q_changed = dns.message.make_query(NAME, "A").to_wire()
    q_other = dns.message.make_query("my-nginx.default.svc.cluster.local.", "A").to_wire()
    q_nx = dns.message.make_query("new-svc.default.svc.cluster.local.", "A").to_wire()
    for q in (q_changed, q_other, q_nx):
        handler.handle(q, False)
    assert all(table.lookup(q, False) for q in (q_changed, q_other, q_nx))
    store.upsert(parse_object({"apiVersion": "v1", "kind": "Service",
                               "metadata": {"name": "httpd-svc", "namespace": "default"},
                               "spec": {"clusterIP": "10.99.0.99"}}))
    store.upsert(parse_object({"apiVersion": "v1", "kind": "Service",
                               "metadata": {"name": "new-svc", "namespace": "default"},
                               "spec": {"clusterIP": "10.99.0.100"}}))
    assert table.lookup(q_changed, False) is None
    assert table.lookup(q_nx, False) is None, "a cached NXDOMAIN goes when the name appears"
    assert table.lookup(q_other, False) is not None, "unrelated answers stay"
    r = dns.message.from_wire(handler.handle(q_changed, False))
    assert r.answer[0][0].address == "10.99.0.99"
    assert dns.message.from_wire(handler.handle(q_nx, False)).answer[0][0].address == "10.99.0.100"


def test_ptr_answers_follow_the_cluster_ip(cluster) -> None:  # noqa: ANN001
    store, handler = cluster
    q = dns.message.make_query("179.229.99.10.in-addr.arpa.", "PTR").to_wire()
    assert dns.message.from_wire(handler.handle(q, False)).answer
    store.delete("Service", "default", "httpd-svc")
    assert handler.table.lookup(q, False) is None
    assert dns.message.from_wire(handler.handle(q, False)).rcode() == 3


async def test_warm_up_renders_common_answers_before_any_query(cluster) -> None:  # noqa: ANN001
    from clusterdns.server.warmup import warm

    store, handler = cluster
    names = [("httpd-svc.default.svc.cluster.local.", "A"), ("my-dual-service.default.svc.cluster.local.", "AAAA"),
             ("_pg._tcp.db.team.svc.cluster.local.", "SRV"), ("db-0.db.team.svc.cluster.local.", "A")]
    wires = []
    for name, rdtype in names:
        q = dns.message.make_query(name, rdtype, use_edns=-1)
        q.id = 0
        wires.append(q.to_wire())
    assert all(handler.table.lookup(w, False) is None for w in wires)
    assert await warm(handler, store, "cluster.local") > len(wires)
    for w in wires:
        assert handler.table.lookup(w, False) is not None, dns.message.from_wire(w).question
