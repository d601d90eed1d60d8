"""Hypothesis feeds the real forwarder (Forwarding -> cache -> Forwarder -> UdpPool) broken
upstream answers from a real loopback UDP server: record data that lies, bad compression
pointers, counts that lie, rdlength past the end, wrong ID, wrong question, truncated,
oversized, opcode not QUERY, QR unset, TC set.

Each answer is built from the very query the upstream received (its ID and question),
then broken as drawn. Checked for every one: the client's reply parses with dnspython
and answers the client's question; an answer that is not an answer to our query, or
that dnspython cannot parse, becomes SERVFAIL and is never cached (the same question
again reaches the upstream again: the server counts what it received); a well-formed
one is relayed record for record, or (only when something was broken) refused as
SERVFAIL; an unbroken positive answer is cached.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from clusterdns.forward.forwarding import Forwarding
from clusterdns.forward.table import build_forward_table
from clusterdns.forward.upstream import UpstreamSpec
from clusterdns.wire.names import name_end, to_wire
from clusterdns.wire.question import parse
from components import cache_options, forwarder_options
from fakedns import LoopbackUdp

QNAME = "www.example.test"
TIMEOUT = 0.15  # the forwarder's read timeout: a dropped answer costs this much; 50 ms let a valid
# answer from a loaded machine (a parallel test run) miss it and be counted as refused by us
OPAQUE = 65280  # a private-use type: any rdata goes (RFC 3597)
TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28,
         "SRV": 33, "OPAQUE": OPAQUE}


# -- what hypothesis draws ---------------------------------------------------------------

@dataclass
class Rec:
    section: int  # 0 answer, 1 authority, 2 additional
    owner: str  # "q": pointer to the question's name, "lit": a literal name
    rtype: str
    ttl: int
    blob: bytes  # random material for the rdata
    rdata: bytes | None = None  # "rdata" mutation: these bytes instead (rdlength follows)
    owner_ptr: int | None = None  # "pointer" mutation: owner is a pointer to this offset


@dataclass
class Plan:
    rcode: int
    aa: bool
    records: list[Rec]
    opt: bool
    big: int  # 0, or the rdlength of an extra opaque answer record (oversized answers)
    muts: list[tuple] = field(default_factory=list)  # in-place damage, in order

    @property
    def broken(self) -> bool:
        return bool(self.muts) or any(r.rdata is not None or r.owner_ptr is not None
                                      for r in self.records)


def _rec() -> st.SearchStrategy[Rec]:
    return st.builds(Rec, st.integers(0, 2), st.sampled_from(["q", "lit"]),
                     st.sampled_from(sorted(TYPES)), st.integers(0, 2**32 - 1),
                     st.binary(min_size=24, max_size=24))


def _damaged(r: Rec) -> st.SearchStrategy[Rec]:
    return st.one_of(
        st.just(r),
        st.builds(lambda b: Rec(r.section, r.owner, r.rtype, r.ttl, r.blob, rdata=b),
                  st.binary(max_size=40)),
        st.builds(lambda p: Rec(r.section, r.owner, r.rtype, r.ttl, r.blob, owner_ptr=p),
                  st.integers(0, 700)),
    )


_MUTS = st.one_of(
    st.tuples(st.just("rdlength"), st.integers(0, 9), st.integers(-6, 300)),
    st.tuples(st.just("count"), st.sampled_from([4, 6, 8, 10]), st.integers(0, 12)),
    st.tuples(st.just("id"), st.integers(1, 0xFFFF)),
    st.tuples(st.just("question"), st.integers(0, 40), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 2000)),
    st.tuples(st.just("trailing"), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("opcode"), st.integers(1, 15)),
    st.tuples(st.just("qr")),
    st.tuples(st.just("tc")),
)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    records = draw(st.lists(_rec(), max_size=6))
    records.sort(key=lambda r: r.section)
    if draw(st.booleans()):
        records = [draw(_damaged(r)) for r in records]
    return Plan(rcode=draw(st.sampled_from([0, 0, 0, 3, 2, 5, 1])), aa=draw(st.booleans()),
                records=records, opt=draw(st.booleans()),
                big=draw(st.sampled_from([0, 0, 0, 1400, 3000, 4500])),
                muts=draw(st.lists(_MUTS, max_size=3)))


# -- the answer built from the real query ------------------------------------------------

def _rdata(r: Rec, lit: int) -> bytes:
    """Well-formed rdata of r's type from its random bytes; names are literal or point to
    the question's name or to the literal owner at `lit`."""
    b = r.blob
    name = to_wire(f"n{b[0] % 5}.example.test") if b[1] & 1 else struct.pack("!H", 0xC000 | lit)
    t = r.rtype
    if t == "A":
        return b[:4]
    if t == "AAAA":
        return b[:16]
    if t in ("NS", "CNAME", "PTR"):
        return name
    if t == "MX":
        return b[2:4] + name
    if t == "SRV":
        return b[2:8] + name
    if t == "SOA":
        return b"\xc0\x0c" + name + b[4:24]
    if t == "TXT":
        k = b[2] % 3 + 1
        return b"".join(bytes([len(b[3 + i:6 + i])]) + b[3 + i:6 + i] for i in range(k))
    return b[: b[3] % 20]


def build_answer(plan: Plan, query: bytes) -> bytes:
    qend = name_end(query, 12) + 4
    out = bytearray(query[:2])
    out += bytes([0x80 | (0x04 if plan.aa else 0) | (query[2] & 0x01), 0x80 | plan.rcode])
    counts = [0, 0, 0]
    recs = list(plan.records)
    if plan.big:
        recs.insert(0, Rec(0, "q", "OPAQUE", 60, b"\x00" * 24, rdata=b"\x07" * plan.big))
    out += b"\x00\x01" + b"\x00" * 6
    out += query[12:qend]
    lit = 12  # where a literal owner name was written (pointers may aim at it)
    rdlen_at: list[int] = []
    for r in recs:
        counts[r.section] += 1
        if r.owner_ptr is not None:
            out += struct.pack("!H", 0xC000 | (r.owner_ptr & 0x3FFF))
        elif r.owner == "lit":
            lit = len(out)
            out += to_wire(f"o{r.blob[4] % 3}.example.test")
        else:
            out += b"\xc0\x0c"
        rdata = r.rdata if r.rdata is not None else _rdata(r, lit)
        rdlen_at.append(len(out) + 8)
        out += struct.pack("!HHIH", TYPES[r.rtype], 1, r.ttl, len(rdata)) + rdata
    if plan.opt:
        counts[2] += 1
        out += b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    struct.pack_into("!HHH", out, 6, *counts)
    for m in plan.muts:
        kind = m[0]
        if kind == "rdlength" and rdlen_at:
            at = rdlen_at[m[1] % len(rdlen_at)]
            if at + 2 <= len(out):
                value = max(0, struct.unpack_from("!H", out, at)[0] + m[2])
                struct.pack_into("!H", out, at, value)
        elif kind == "count" and len(out) >= 12:
            struct.pack_into("!H", out, m[1], m[2])
        elif kind == "id" and len(out) >= 2:
            struct.pack_into("!H", out, 0, struct.unpack_from("!H", out, 0)[0] ^ m[1])
        elif kind == "question" and qend > 12:
            pos = 12 + m[1] % (qend - 12)
            if pos < len(out) and out[pos] != m[2]:
                out[pos] = m[2]
        elif kind == "truncate" and out:
            del out[m[1] % len(out):]
        elif kind == "trailing":
            out += m[1]
        elif kind == "opcode" and len(out) > 2:
            out[2] = (out[2] & 0x87) | (m[1] << 3)
        elif kind == "qr" and len(out) > 2:
            out[2] &= 0x7F
        elif kind == "tc" and len(out) > 2:
            out[2] |= 0x02
    return bytes(out)


def classify(answer: bytes, query: bytes) -> str:
    """What the forwarder must make of `answer`: "dropped" (not an answer to our query),
    "malformed", "tc" (a TCP retry, which fails: nobody listens on TCP), "big" (longer
    than a receive slot: dropped or taken), "valid"."""
    question = query[12:name_end(query, 12) + 4]
    if (len(answer) < 12 + len(question) or answer[:2] != query[:2] or not answer[2] & 0x80
            or answer[4:6] != b"\x00\x01" or answer[12:12 + len(question)] != question):
        return "dropped"
    if answer[2] & 0x78:
        return "malformed"  # opcode other than QUERY
    try:
        dns.message.from_wire(answer)
    except (dns.exception.DNSException, ValueError):
        return "malformed"
    if answer[2] & 0x02:
        return "tc"
    return "big" if len(answer) > 4096 else "valid"


# -- the real upstream -------------------------------------------------------------------

class ScriptedUpstream(LoopbackUdp):
    """UDP on 127.0.0.1: answers each query with `plan` applied to it; keeps the queries
    and the answers it sent."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.queries: list[bytes] = []
        self.answers: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.queries.append(data)
        answer = build_answer(self.plan, data)
        self.answers.append(answer)
        if answer:
            assert self.transport is not None
            self.transport.sendto(answer, addr)


def _records(m: dns.message.Message) -> tuple[list, list, list]:
    return list(m.answer), list(m.authority), list(m.additional)


async def scenario(plan: Plan, cached: bool, edns: bool, qcase: str) -> None:
    up = ScriptedUpstream(plan)
    port = await up.start()
    table = build_forward_table(
        [UpstreamSpec("127.0.0.1", port)], {}, cache_opts=cache_options() if cached else None,
        forward_opts=forwarder_options(read_timeout=TIMEOUT, timeout=TIMEOUT, max_fails=10**6))
    fw = Forwarding(table, local_zones=(), fallthrough=())
    try:
        replies = []
        for _ in range(2):
            q = dns.message.make_query(qcase, "A", use_edns=0 if edns else False)
            wire = q.to_wire()
            r = fw.handle(parse(wire), wire, False)
            assert r is not None
            r = getattr(r, "reply", r)  # a cache hit (cache.Hit) carries the reply
            if not isinstance(r, bytes | bytearray):
                assert isinstance(r, asyncio.Future) or asyncio.iscoroutine(r), type(r)
                r = await asyncio.wait_for(r, 1.0)
            replies.append((q, r))
        # uncached: each question asks the upstream once; cached: the second may be a hit
        assert len(up.queries) == 2 if not cached else 1 <= len(up.queries) <= 2
        kind = classify(up.answers[0], up.queries[0])
        event(f"{kind}, {'broken' if plan.broken else 'intact'}")
        limit = 1232 if edns else 512
        for q, r in replies:
            m = dns.message.from_wire(r)  # whatever we relay must parse
            assert m.id == q.id and m.flags & 0x8000 and m.opcode() == dns.opcode.QUERY
            assert m.question == q.question and str(m.question[0].name) == str(q.question[0].name)
            if kind in ("dropped", "malformed", "tc"):
                assert m.rcode() == dns.rcode.SERVFAIL, (kind, m)
                assert not (m.answer or m.authority or m.additional), (kind, m)
                continue
            upm = dns.message.from_wire(up.answers[0])
            if m.flags & dns.flags.TC:  # too long for this client over UDP: empty, TC
                assert m.rcode() == upm.rcode() and len(up.answers[0]) + 11 > limit
                assert not any(_records(m))
                continue
            if m.rcode() == dns.rcode.SERVFAIL and not any(_records(m)):
                if upm.rcode() == dns.rcode.SERVFAIL and not any(_records(upm)):
                    continue  # the upstream's own empty SERVFAIL
                # refused by us: allowed only for damaged or oversized answers
                assert plan.broken or kind == "big", (kind, up.answers[0].hex())
                continue
            assert m.rcode() == upm.rcode()
            assert _records(m) == _records(upm), (m, upm)
        if kind in ("dropped", "malformed", "tc"):
            assert len(up.queries) == 2  # never cached: the second question went upstream
        elif (cached and not plan.broken and kind == "valid" and plan.rcode == 0
              and dns.message.from_wire(up.answers[0]).answer):
            assert len(up.queries) == 1  # a good positive answer is cached
    finally:
        fw.close()
        up.close()


@settings(max_examples=250, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(plans(), st.booleans(), st.booleans(),
       st.sampled_from([QNAME, "WwW.Example.TEST", "www.EXAMPLE.test"]))
def test_broken_upstream_answers_never_cached_never_relayed(plan: Plan, cached: bool, edns: bool,
                                                            qcase: str) -> None:
    asyncio.run(scenario(plan, cached, edns, qcase))


def test_the_generator_makes_every_kind() -> None:
    """The oracle is not vacuous: hand-picked plans land in each class."""
    q = dns.message.make_query(QNAME, "A").to_wire()
    good = Plan(0, False, [Rec(0, "q", "A", 60, bytes(range(24)))], True, 0)
    assert classify(build_answer(good, q), q) == "valid"
    assert classify(build_answer(Plan(0, False, [], True, 0, [("id", 1)]), q), q) == "dropped"
    assert classify(build_answer(Plan(0, False, [], True, 0, [("qr",)]), q), q) == "dropped"
    bad_a = Plan(0, False, [Rec(0, "q", "A", 60, bytes(24), rdata=b"abc")], True, 0)
    assert classify(build_answer(bad_a, q), q) == "malformed"
    assert classify(build_answer(Plan(0, False, [], True, 0, [("tc",)]), q), q) == "tc"
    assert classify(build_answer(Plan(0, False, [], True, 4500), q), q) == "big"


def _answer(*records: str, rtype: str = "A") -> bytes:
    import dns.rrset

    m = dns.message.make_response(dns.message.make_query(QNAME, rtype, use_edns=0))
    for text in records:
        owner, ttl, rdclass, t, rdata = text.split(" ", 4)
        m.answer.append(dns.rrset.from_text(owner, int(ttl), rdclass, t, rdata))
    return m.to_wire()


def test_scan_takes_well_formed_compressed_answers() -> None:
    """dnspython compresses every name it can: scan_response reads them all."""
    from clusterdns.wire import scan as W

    wire = _answer(f"{QNAME}. 60 IN CNAME edge.example.net.", "edge.example.net. 60 IN A 192.0.2.1",
                   "edge.example.net. 60 IN AAAA 2001:db8::1", "edge.example.net. 60 IN MX 10 mx.example.net.",
                   "edge.example.net. 60 IN SRV 1 2 53 mx.example.net.", 'edge.example.net. 60 IN TXT "a" ""',
                   "edge.example.net. 60 IN HINFO cpu os", "example.net. 60 IN SOA a.example.net. b. 1 2 3 4 5",
                   "edge.example.net. 60 IN TYPE65280 \\# 3 010203")
    s = W.scan_response(wire)
    assert s.ancount == 9 and len(s.ttl_offsets) == 9


@pytest.mark.parametrize("case", ["pointer into header", "forward pointer", "self pointer",
                                  "A of 3 bytes", "AAAA of 4 bytes", "CNAME of garbage",
                                  "MX without name", "TXT string past rdata", "opcode NOTIFY",
                                  "OPT owner not root", "OPT option past rdata", "label type 0x40",
                                  "CH A of 4 bytes", "CH A name compressed", "pointer into its own name"])
def test_scan_refuses_what_a_client_cannot_parse(case: str) -> None:
    """Each of these once reached clients (or the cache) through scan_response."""
    from clusterdns.wire import scan as W
    from clusterdns.wire.names import Malformed

    q = dns.message.make_query(QNAME, "A").to_wire()
    qend = name_end(q, 12) + 4
    head = q[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, 1, 0, 0)

    def rr(owner: bytes, rtype: int, rdata: bytes) -> bytes:
        return owner + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata

    body = {
        "pointer into header": rr(b"\xc0\x04", 1, b"\x01\x02\x03\x04"),
        "forward pointer": rr(b"\xc0\x40", 1, b"\x01\x02\x03\x04"),
        "self pointer": rr(b"\xc0" + bytes([qend]), 1, b"\x01\x02\x03\x04"),
        "A of 3 bytes": rr(b"\xc0\x0c", 1, b"\x01\x02\x03"),
        "AAAA of 4 bytes": rr(b"\xc0\x0c", 28, b"\x01\x02\x03\x04"),
        "CNAME of garbage": rr(b"\xc0\x0c", 5, b"\x05ab"),
        "MX without name": rr(b"\xc0\x0c", 15, b"\x00\x0a"),
        "TXT string past rdata": rr(b"\xc0\x0c", 16, b"\x05abc"),
        "opcode NOTIFY": rr(b"\xc0\x0c", 1, b"\x01\x02\x03\x04"),
        "OPT owner not root": rr(b"\xc0\x0c", 41, b""),
        "OPT option past rdata": rr(b"\x00", 41, b"\x00\x08\x00\x09\x00"),
        "label type 0x40": rr(b"\x41a\x00", 1, b"\x01\x02\x03\x04"),
        # a client reads a Chaosnet A as a name and an address (bench/fuzz.py found it relayed)
        "CH A of 4 bytes": b"\xc0\x0c" + struct.pack("!HHIH", 1, 3, 60, 4) + b"\x01\x02\x03\x04",
        "CH A name compressed": b"\xc0\x0c" + struct.pack("!HHIH", 1, 3, 60, 4) + b"\xc0\x0c\x00\x7f",
        # the second owner points one byte back, to a label running over the pointer itself
        # and the record's class and TTL (bench/fuzz.py found it relayed)
        "pointer into its own name": rr(b"\xc0\x0c", OPAQUE, b"\x05")
        + rr(b"\xc0" + bytes([qend + 12]), 1, b"\x01\x02\x03\x04"),
    }[case]
    wire = bytearray(head + q[12:qend] + body)
    if case == "opcode NOTIFY":
        wire[2] |= 4 << 3
    if case == "pointer into its own name":
        struct.pack_into("!H", wire, 6, 2)
    if case.startswith("OPT"):
        struct.pack_into("!HHH", wire, 6, 0, 0, 1)  # the OPT record in the additional section
    if case in ("pointer into header", "opcode NOTIFY"):
        # dnspython reads these (the header byte at 4 is a root label), but `render`
        # rewrites the header, and only a QUERY answers our QUERY
        dns.message.from_wire(bytes(wire))
    else:
        with pytest.raises(dns.exception.DNSException):
            dns.message.from_wire(bytes(wire))
    with pytest.raises(Malformed):
        W.scan_response(bytes(wire))


def test_scan_takes_a_chaos_a_record_as_a_name_and_an_address() -> None:
    """Class CH type A has its own layout (a name, then a 16-bit Chaosnet address)."""
    from clusterdns.wire import scan as W

    q = dns.message.make_query(QNAME, "A").to_wire()
    qend = name_end(q, 12) + 4
    rdata = to_wire("ch.example.test") + b"\x00\x7f"
    wire = (q[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, 1, 0, 0) + q[12:qend]
            + b"\xc0\x0c" + struct.pack("!HHIH", 1, 3, 60, len(rdata)) + rdata)
    assert dns.message.from_wire(wire).answer[0][0].address == 0o177
    s = W.scan_response(wire)
    assert s.ancount == 1 and len(s.ttl_offsets) == 1


class _FixedUpstream(LoopbackUdp):
    """Answers every query with one A record whose rdata is `rdata` (3 bytes: malformed)."""

    def __init__(self, rdata: bytes) -> None:
        self.rdata, self.queries = rdata, 0

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.queries += 1
        qend = name_end(data, 12) + 4
        head = data[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00"
        record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x1e" + struct.pack("!H", len(self.rdata)) + self.rdata
        assert self.transport is not None
        self.transport.sendto(head + data[12:qend] + record, addr)


async def test_a_malformed_answer_fails_over_to_the_next_upstream() -> None:
    bad, good = _FixedUpstream(b"\x0a\x00\x00"), _FixedUpstream(b"\x0a\x00\x00\x07")
    table = build_forward_table(
        [UpstreamSpec("127.0.0.1", await bad.start()), UpstreamSpec("127.0.0.1", await good.start())],
        {}, cache_opts=None,
        forward_opts=forwarder_options(read_timeout=0.5, timeout=1.0, policy="sequential"))
    fw = Forwarding(table, local_zones=(), fallthrough=())
    try:
        q = dns.message.make_query(QNAME, "A")
        wire = q.to_wire()
        r = fw.handle(parse(wire), wire, False)
        r = getattr(r, "reply", r)
        if not isinstance(r, bytes | bytearray):
            r = await asyncio.wait_for(r, 2.0)
        m = dns.message.from_wire(r)
        assert m.rcode() == dns.rcode.NOERROR and [str(a) for a in m.answer[0]] == ["10.0.0.7"]
        assert bad.queries == 1 and good.queries == 1
    finally:
        fw.close()
        bad.close()
        good.close()
