"""Parsing queries and rendering answers: the only module that imports dnslib.

This is the slow path. The hot path (server/table.py) replays bytes rendered here,
so rendering is deterministic: the question is packed lowercased and the client's own
question bytes are spliced back in (0x20 case randomisation keeps working).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import AAAA as RD_AAAA
from dnslib import CNAME as RD_CNAME
from dnslib import NS as RD_NS
from dnslib import PTR as RD_PTR
from dnslib import RR, SOA as RD_SOA, SRV as RD_SRV, TXT as RD_TXT
from dnslib import A as RD_A
from dnslib import DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from clusterdns.wire import records as R
from clusterdns.wire.records import Answer, Record

HEADER = 12
CLASSIC_UDP = 512  # RFC 1035 limit without EDNS
DEFAULT_EDNS_UDP = 1232  # DNS flag day 2020 default


class FormError(ValueError):
    """The packet has a header but its body cannot be read."""


@dataclass(slots=True)
class Edns:
    udp_size: int
    version: int
    do: bool
    has_options: bool


@dataclass(slots=True)
class Query:
    raw: bytes
    id: int
    opcode: int
    rd: bool
    cd: bool
    qname: str  # as sent (case kept), no trailing dot
    labels: tuple[bytes, ...]  # the name's labels exactly as sent
    qtype: int
    qclass: int
    edns: Edns | None
    question_end: int  # offset just past the question in `raw`
    plain_question: bool  # the question's name has no compression pointers

    @property
    def name(self) -> str:
        """The name lowercased: what every comparison uses (RFC 4343)."""
        return self.qname.lower()


def question_end(data: bytes) -> tuple[int, bool]:
    """Offset just past the first question, and whether its name is pointer-free."""
    i, n, plain = HEADER, len(data), True
    total = 0
    while True:
        if i >= n:
            raise FormError("question name runs past the packet")
        ln = data[i]
        if ln == 0:
            i += 1
            break
        if ln & 0xC0 == 0xC0:
            plain = False
            i += 2
            break
        if ln > 63:
            raise FormError("label longer than 63 bytes")
        total += ln + 1
        if total > 254:
            raise FormError("name longer than 255 bytes")
        i += ln + 1
    if i + 4 > n:
        raise FormError("question type and class missing")
    return i + 4, plain


def parse(data: bytes) -> Query:
    """Read a query; raises FormError on anything malformed (caller answers FORMERR)."""
    if len(data) < HEADER:
        raise FormError("shorter than a header")
    try:
        rec = DNSRecord.parse(data)
    except Exception as exc:  # dnslib raises DNSError and, on odd input, others (dnslib#43)
        raise FormError(str(exc)) from None
    h = rec.header
    if len(rec.questions) != 1:
        raise FormError("QDCOUNT is not 1")
    q = rec.questions[0]
    edns = None
    opts = [rr for rr in rec.ar if rr.rtype == R.OPT]
    if len(opts) > 1:
        raise FormError("more than one OPT record")  # RFC 6891 6.1.1
    if opts:
        opt = opts[0]
        if len(opt.rname.label) != 0:
            raise FormError("OPT owner is not the root")
        edns = Edns(opt.rclass, (opt.ttl >> 16) & 0xFF, bool(opt.ttl & 0x8000), bool(opt.rdata))
    try:
        labels = [lab.decode("ascii") for lab in q.qname.label]
    except UnicodeDecodeError:
        labels = [lab.decode("latin-1") for lab in q.qname.label]
    end, plain = question_end(data)
    return Query(data, h.id, h.opcode, bool(h.rd), bool(h.cd), ".".join(labels),
                 tuple(q.qname.label), q.qtype, q.qclass, edns, end, plain)


def header_reply(data: bytes, rcode: int) -> bytes | None:
    """An answer built from the header alone (FORMERR, NOTIMP); None if no header."""
    if len(data) < HEADER:
        return None
    flags = 0x8000 | (data[2] & 0x79) << 8 | rcode  # QR, opcode and RD copied
    return data[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)


def _rdata(rec: Record):  # noqa: ANN202 - dnslib rdata classes have no common type
    t, d = rec.rtype, rec.data
    if t == R.A:
        return RD_A(d)
    if t == R.AAAA:
        return RD_AAAA(d)
    if t == R.CNAME:
        return RD_CNAME(d + ".")
    if t == R.PTR:
        return RD_PTR(d + ".")
    if t == R.NS:
        return RD_NS(d + ".")
    if t == R.SRV:
        return RD_SRV(d[0], d[1], d[2], d[3] + ".")
    if t == R.TXT:
        return RD_TXT(d)
    if t == R.SOA:
        return RD_SOA(d[0] + ".", d[1] + ".", d[2:])
    raise ValueError(f"cannot render type {t}")


def _rr(rec: Record) -> RR:
    return RR(rec.name + ".", rec.rtype, rclass=rec.rclass, ttl=rec.ttl, rdata=_rdata(rec))


def _rrsets(records: list[Record]) -> list[list[Record]]:
    """Group consecutive records of one (name, type) into RRsets (truncation unit)."""
    sets: list[list[Record]] = []
    for rec in records:
        if sets and sets[-1][0].name == rec.name and sets[-1][0].rtype == rec.rtype:
            sets[-1].append(rec)
        else:
            sets.append([rec])
    return sets


def _pack(q: Query, ans: Answer, answer: list[Record], authority: list[Record],
          additional: list[Record], tc: bool, rcode: int) -> bytes:
    labels = tuple(lab.lower() for lab in q.labels) if q.plain_question else q.labels
    hdr = DNSHeader(id=q.id, qr=1, opcode=0, aa=int(ans.aa), tc=int(tc), rd=int(q.rd), ra=0,
                    rcode=rcode & 0xF)
    hdr.cd = int(q.cd)
    msg = DNSRecord(hdr, q=DNSQuestion(DNSLabel(labels), q.qtype, q.qclass))
    msg.rr = [_rr(r) for r in answer]
    msg.auth = [_rr(r) for r in authority]
    msg.ar = [_rr(r) for r in additional]
    wire = bytes(msg.pack())
    if q.edns is not None:
        ext = (rcode >> 4) & 0xFF
        ttl = (ext << 24) | (0x8000 if q.edns.do else 0)
        wire = wire[:10] + struct.pack("!H", len(msg.ar) + 1) + wire[12:]
        wire += b"\x00" + struct.pack("!HHIH", R.OPT, DEFAULT_EDNS_UDP, ttl, 0)
    return wire


def udp_limit(q: Query, max_udp: int = DEFAULT_EDNS_UDP) -> int:
    """The largest UDP answer this client takes: 512 without EDNS, else its size capped."""
    if q.edns is None:
        return CLASSIC_UDP
    return max(CLASSIC_UDP, min(q.edns.udp_size, max_udp))


def render(q: Query, ans: Answer, limit: int | None) -> bytes:
    """Wire bytes for `ans`, fitted to `limit` bytes (None: TCP, no limit).

    Too big for UDP: first the additional section goes (no TC, RFC 2181 9), then whole
    RRsets from the end of the answer, with TC set; question and OPT always stay.
    """
    rcode = ans.rcode
    wire = _pack(q, ans, ans.answer, ans.authority, ans.additional, False, rcode)
    if limit is None or len(wire) <= limit:
        return _splice(q, wire)
    wire = _pack(q, ans, ans.answer, ans.authority, [], False, rcode)
    if len(wire) <= limit:
        return _splice(q, wire)
    sets = _rrsets(ans.answer)
    while sets:
        sets.pop()
        wire = _pack(q, ans, [r for s in sets for r in s], [], [], True, rcode)
        if len(wire) <= limit:
            break
    else:
        wire = _pack(q, ans, [], [], [], True, rcode)
    return _splice(q, wire)


def _splice(q: Query, wire: bytes) -> bytes:
    """Put the client's question bytes back (byte for byte, case included)."""
    if not q.plain_question:
        return wire
    end = q.question_end
    return wire[:HEADER] + q.raw[HEADER:end] + wire[end:]


def badvers(q: Query) -> bytes:
    """RFC 6891 6.1.3: a version we do not speak gets BADVERS and an OPT of version 0."""
    return render(q, Answer(rcode=R.BADVERS, aa=False), None)
