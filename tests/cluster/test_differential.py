"""The server's cluster answers equal the frozen oracle's (oracle.py), whatever the cluster.

Random clusters, random questions, random changes, one store read by both sides. Replies
are compared parsed, record by record, never as bytes: the compiled zone may compress
names differently. Over UDP they are compared only when the oracle's full answer fits,
because truncation changed on purpose (the last property says how: whole records, TC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dns.flags
import dns.message
import dns.rdatatype
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from clusterdns.app.cluster import build_cluster
from clusterdns.settings.schema import ServeConfig
from clusters import Question, apply_change, big_answers, changes, clusters, objects_of, questions
from oracle import CLASSIC_UDP, oracle_answer

FLAGS = dns.flags.QR | dns.flags.AA | dns.flags.TC | dns.flags.RD | dns.flags.RA | dns.flags.CD | dns.flags.AD
# listen addresses, and the ones ns.dns.<zone> names when there is no kube-dns Service
LISTEN = ((("0.0.0.0:53",), ()), (("127.0.0.1:5353", "[::1]:5353"), ("127.0.0.1", "::1")),
          (("10.96.0.10:53", "[::]:53"), ("10.96.0.10",)))
# No shrinking: each step rebuilds a cluster, and shrinking one failure outlasts the suite's
# 120 s timeout. A failure names its question; Hypothesis prints every draw (options,
# cluster, changes, questions) of the failing example.
PROPERTY = settings(deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass(frozen=True)
class Options:
    zone: str = "cluster.local"
    ttl: int = 5
    pods: str = "insecure"
    ignore_empty_service: bool = False
    endpoint_pod_names: bool = False
    max_udp: int = 1232
    listen: tuple[str, ...] = ("0.0.0.0:53",)
    ns_addresses: tuple[str, ...] = ()


@st.composite
def options(draw: st.DrawFn) -> Options:
    listen, own = draw(st.sampled_from(LISTEN))
    return Options(draw(st.sampled_from(("cluster.local", "k8s.test", "Cluster.Local."))),
                   draw(st.sampled_from((5, 30, 0, 600))), draw(st.sampled_from(("insecure", "verified", "disabled"))),
                   draw(st.booleans()), draw(st.booleans()), draw(st.sampled_from((1232, 512, 4096))), listen, own)


def records(section: list[Any]) -> list[tuple[str, int, int, int, str]]:
    """(owner, type, class, TTL, data) in order. Names compare case-insensitively (RFC 4343),
    also inside rdata: today's renderer compresses them against the client's 0x20 question
    bytes, so their case is the client's; TXT data is not a name and keeps its case."""
    return [(rr.name.to_text().lower(), rr.rdtype, rr.rdclass, rr.ttl,
             rr[0].to_text() if rr.rdtype == dns.rdatatype.TXT else rr[0].to_text().lower()) for rr in section]


def view(wire: bytes | None) -> dict[str, Any] | None:
    """What a client sees in a reply, independent of name compression."""
    if wire is None:
        return None
    m = dns.message.from_wire(wire, one_rr_per_rrset=True)
    return {"id": m.id, "opcode": m.opcode(), "rcode": m.rcode(), "flags": m.flags & FLAGS,
            "question": [(q.name.to_text(), q.rdtype, q.rdclass) for q in m.question],
            "edns": (m.edns, bool(m.ednsflags & dns.flags.DO), m.payload) if m.edns >= 0 else None,
            "answer": records(m.answer), "authority": records(m.authority), "additional": records(m.additional)}


class Pair:
    """The server under test and the oracle, reading one store."""

    def __init__(self, opts: Options, objs: list[Any], synced: bool = True) -> None:
        self.opts = opts
        self.store, self.handler = build_cluster(ServeConfig(
            manifests=[], zone=opts.zone, ttl=opts.ttl, pods=opts.pods, ignore_empty_service=opts.ignore_empty_service,
            endpoint_pod_names=opts.endpoint_pod_names, max_udp=opts.max_udp, listen=list(opts.listen)))
        if synced:
            self.store.load(objs)
        else:
            for o in objs:
                self.store.upsert(o)

    def sut(self, wire: bytes, tcp: bool) -> bytes | None:
        reply = self.handler.handle(wire, tcp)
        assert reply is None or isinstance(reply, bytes), "no forwarding: every reply is immediate"
        return reply

    def oracle(self, wire: bytes, tcp: bool) -> bytes | None:
        o = self.opts
        return oracle_answer(self.store, wire, tcp=tcp, zone=o.zone, ttl=o.ttl, pods=o.pods,
                             ignore_empty_service=o.ignore_empty_service, ns_addresses=o.ns_addresses,
                             max_udp=o.max_udp)

    def udp_limit(self, q: Question) -> int:
        return CLASSIC_UDP if q.edns is None else max(CLASSIC_UDP, min(q.payload, self.opts.max_udp))

    def check(self, q: Question) -> None:
        wire = q.wire()
        full = self.oracle(wire, tcp=True)
        expected = view(full)
        assert view(self.sut(wire, tcp=True)) == expected, f"TCP {q}"
        udp, limit = self.sut(wire, tcp=False), self.udp_limit(q)
        assert udp is None or len(udp) <= limit, f"UDP reply over {limit} bytes: {q}"
        if full is None or len(full) <= limit:  # then today's UDP reply is the full one
            assert view(udp) == expected, f"UDP {q}"


@settings(PROPERTY, max_examples=150)
@given(st.data())
def test_answers_equal_the_oracles_before_during_and_after_changes(data: st.DataObject) -> None:
    """Asked after the load, after each change and after all of them, the same store gives
    the same answers through both paths: the compiled zone must follow every change."""
    opts = data.draw(options(), "options")
    objs = data.draw(clusters(opts.zone), "cluster")
    pair = Pair(opts, objs)
    asked = data.draw(st.lists(questions(opts.zone, objs, opts.ns_addresses), min_size=3, max_size=10), "questions")
    for q in asked:
        pair.check(q)
    for change in data.draw(changes(opts.zone, objs), "changes"):
        apply_change(pair.store, change)
        now = objects_of(pair.store)
        for q in data.draw(st.lists(questions(opts.zone, now, opts.ns_addresses), max_size=2), "asked meanwhile"):
            pair.check(q)
    later = data.draw(st.lists(questions(opts.zone, objects_of(pair.store), opts.ns_addresses), min_size=3,
                               max_size=8), "questions after the changes")
    for q in asked + later:  # the first questions again: nothing stale may survive a change
        pair.check(q)


@settings(PROPERTY, max_examples=15)
@given(st.data())
def test_before_the_first_sync_answers_equal_the_oracles(data: st.DataObject) -> None:
    """Not synced yet: a missing name is SERVFAIL, never NXDOMAIN, in both."""
    opts = data.draw(options(), "options")
    objs = data.draw(clusters(opts.zone), "cluster")
    pair = Pair(opts, objs, synced=False)
    for q in data.draw(st.lists(questions(opts.zone, objs, opts.ns_addresses), min_size=5, max_size=20), "questions"):
        pair.check(q)


@settings(PROPERTY, max_examples=30)
@given(big_answers("cluster.local"))
def test_udp_answer_too_big_keeps_as_many_whole_records_as_fit(case: tuple[list[Any], Question]) -> None:
    """Over UDP an answer that does not fit first loses its additional section (no TC,
    RFC 2181 9); if the answer still does not fit, it keeps the longest prefix of whole
    records that fits, with TC (what clients that never retry over TCP need)."""
    objs, q = case
    pair = Pair(Options(), objs)
    wire = q.wire()
    full, limit = pair.oracle(wire, tcp=True), pair.udp_limit(q)
    assert full is not None
    if len(full) <= limit:
        return
    got = pair.sut(wire, tcp=False)
    assert got is not None and len(got) <= limit
    m = dns.message.from_wire(got, one_rr_per_rrset=True)
    whole = dns.message.from_wire(full, one_rr_per_rrset=True)
    have, want = records(m.answer), records(whole.answer)
    if not m.flags & dns.flags.TC:
        assert have == want and not m.additional and whole.additional, "only the additional section may go without TC"
        return
    assert have == want[: len(have)], "the answer is a prefix of the full answer"
    if len(have) < len(want):
        before = len(m.to_wire())
        m.answer.append(whole.answer[len(have)])
        assert len(got) + len(m.to_wire()) - before > limit, "the next record would have fit"
