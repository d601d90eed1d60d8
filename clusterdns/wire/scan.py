"""Upstream answers read and replayed without dnslib: the forwarder's and the cache's wire.

The cache stores upstream answers as bytes and serves them by patching a few fields
(perf-anchors §6 item 6), so it needs only what this module reads: the header, the
question's extent, each record's TTL offset, the SOA MINIMUM and the OPT record.
Everything is bounds-checked; anything odd raises `Malformed` and is never cached.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from clusterdns.wire.constants import EDNS_UDP, HEADER, RRType
from clusterdns.wire.names import Malformed, name_end, read
from clusterdns.wire.question import Query

T_SOA, T_OPT = int(RRType.SOA), int(RRType.OPT)
_HDR = struct.Struct("!HBBHHHH")
_U16 = struct.Struct("!H")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_OPT_DO = 0x8000


def build_query(qid: int, name: bytes, qtype: int, qclass: int, *, do: bool = False,
                cd: bool = False) -> bytes:
    """An upstream query: RD set, CD copied, EDNS0 with our UDP size and the DO bit."""
    head = _HDR.pack(qid, 0x01, 0x10 if cd else 0x00, 1, 0, 0, 1)
    opt = b"\x00" + _RR_FIXED.pack(T_OPT, EDNS_UDP, _OPT_DO if do else 0, 0)
    return head + name + struct.pack("!HH", qtype, qclass) + opt


def is_answer_to(data: bytes, qid: int, question: bytes) -> bool:
    """Whether `data` answers our query: QR set, same ID, the very same question bytes.

    The question is compared byte for byte, case included: a reply that changed it is a
    spoof or a broken upstream either way (RFC 5452 9.1).
    """
    if len(data) < HEADER + len(question):
        return False
    if data[0] != qid >> 8 or data[1] != qid & 0xFF or not data[2] & 0x80:
        return False
    if data[4:6] != b"\x00\x01":
        return False
    return data[HEADER:HEADER + len(question)] == question


def error_reply(q: Query, rcode: int) -> bytes:
    """An empty answer with `rcode` to the client's question (echoed as sent)."""
    head = _HDR.pack(q.id, 0x80 | (0x01 if q.rd else 0), 0x80 | (0x10 if q.cd else 0) | rcode,
                     1, 0, 0, 1 if q.edns else 0)
    return head + q.qwire + (_opt(q.do) if q.edns else b"")


def _opt(do: bool) -> bytes:
    return b"\x00" + _RR_FIXED.pack(T_OPT, EDNS_UDP, _OPT_DO if do else 0, 0)


@dataclass(slots=True)
class Scan:
    """What the cache needs to know about an upstream answer (found once, at insert)."""

    wire: bytes  # the message with its OPT record removed (ARCOUNT adjusted)
    rcode: int
    tc: bool
    qend: int
    ancount: int
    ttl_offsets: tuple[int, ...]  # every record's TTL field, OPT excluded
    min_ttl: int | None  # smallest TTL over all records, None if there are none
    answer_min_ttl: int | None  # smallest TTL in the answer section
    negative_ttl: int | None  # min(SOA TTL, SOA MINIMUM) of the authority SOA (RFC 2308 5)


def scan_response(data: bytes) -> Scan:
    """Walk an answer once: TTL offsets, smallest TTLs, SOA minimum; strip the OPT record.

    The OPT record is hop-by-hop (RFC 6891 6.1.1): it is dropped here and rebuilt for each
    client. It must be the last record, which every server we know does; else Malformed.
    """
    if len(data) < HEADER:
        raise Malformed("shorter than a header")
    _id, b2, b3, qd, an, ns, ar = _HDR.unpack_from(data)
    if not b2 & 0x80 or qd != 1:
        raise Malformed("not an answer to one question")
    i = name_end(data, HEADER) + 4
    qend = i
    offsets: list[int] = []
    min_ttl = answer_min = neg = None
    opt_at = None
    n = len(data)
    for idx in range(an + ns + ar):
        start = i
        i = name_end(data, i)
        if i + 10 > n:
            raise Malformed("record header runs past the message")
        rtype, _rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, i)
        rdata = i + 10
        end = rdata + rdlen
        if end > n:
            raise Malformed("rdata runs past the message")
        if rtype == T_OPT:
            if idx != an + ns + ar - 1 or idx < an + ns or opt_at is not None:
                raise Malformed("OPT record is not the last additional record")
            opt_at = start
        else:
            if ttl & 0x80000000:
                ttl = 0  # RFC 2181 8: a TTL with the top bit set is read as zero
            offsets.append(i + 4)
            min_ttl = ttl if min_ttl is None else min(min_ttl, ttl)
            if idx < an:
                answer_min = ttl if answer_min is None else min(answer_min, ttl)
            elif idx < an + ns and rtype == T_SOA and neg is None:
                j = name_end(data, name_end(data, rdata))
                if j + 20 != end:
                    raise Malformed("SOA rdata has the wrong length")
                minimum = struct.unpack_from("!I", data, j + 16)[0]
                neg = min(ttl, minimum if not minimum & 0x80000000 else 0)
        i = end
    if i != n:
        raise Malformed("trailing bytes after the records")
    wire = data
    if opt_at is not None:
        wire = data[:10] + _U16.pack(ar - 1) + data[12:opt_at]
    return Scan(wire, b3 & 0x0F, bool(b2 & 0x02), qend, an, tuple(offsets), min_ttl,
                answer_min, neg)


def render(wire: bytes, qend: int, ttl_offsets: tuple[int, ...], ttl: int | None,
           q: Query, limit: int | None) -> bytes:
    """Stored answer -> the client's reply: ID, RD, question case, TTLs, OPT, size.

    `ttl` None keeps the stored TTLs. Over `limit` (UDP) the reply becomes an empty one
    with TC set, which sends the client to TCP (RFC 7766 5).
    """
    buf = bytearray(wire)
    _U16.pack_into(buf, 0, q.id)
    buf[2] = (buf[2] & 0xFE) | (0x01 if q.rd else 0)
    buf[3] |= 0x80  # RA: we recurse on the client's behalf
    buf[HEADER:qend] = q.qwire[:qend - HEADER]  # same bytes up to case (the key matched)
    if ttl is not None:
        packed = struct.pack("!I", max(0, ttl))
        for off in ttl_offsets:
            buf[off:off + 4] = packed
    if q.edns:
        _U16.pack_into(buf, 10, _U16.unpack_from(buf, 10)[0] + 1)
        buf += _opt(q.do)
    if limit is not None and len(buf) > limit:
        head = _HDR.pack(q.id, (buf[2] | 0x02), buf[3], 1, 0, 0, 1 if q.edns else 0)
        return head + q.qwire + (_opt(q.do) if q.edns else b"")
    return bytes(buf)


def answer_records(data: bytes) -> tuple[int, list[tuple[str, int, int, str]]]:
    """(rcode, [(owner, type, ttl, data)]) for the A, AAAA, CNAME and PTR records of the
    answer section; other types are skipped. Used to append an upstream's answer to a
    CNAME we gave (ExternalName); names are lowercased, without the final dot."""
    if len(data) < HEADER:
        raise Malformed("shorter than a header")
    _id, _b2, b3, qd, an, _ns, _ar = _HDR.unpack_from(data)
    i = HEADER
    for _ in range(qd):
        i = name_end(data, i) + 4
    out = []
    for _ in range(an):
        owner, i = read(data, i)
        if i + 10 > len(data):
            raise Malformed("record header runs past the message")
        rtype, _rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, i)
        rdata, i = i + 10, i + 10 + rdlen
        if i > len(data):
            raise Malformed("rdata runs past the message")
        if rtype == 1 and rdlen == 4:
            out.append((owner, rtype, ttl, socket.inet_ntop(socket.AF_INET, data[rdata:i])))
        elif rtype == 28 and rdlen == 16:
            out.append((owner, rtype, ttl, socket.inet_ntop(socket.AF_INET6, data[rdata:i])))
        elif rtype in (5, 12):
            out.append((owner, rtype, ttl, read(data, rdata)[0]))
    return b3 & 0x0F, out
