"""Upstream answers read and replayed without dnslib: the forwarder's and the cache's wire.

The cache stores upstream answers as bytes and serves them by patching a few fields
(perf-anchors §6 item 6), so it needs only what this module reads: the header, the
question's extent, each record's TTL offset, the SOA MINIMUM and the OPT record.
Everything is bounds-checked, and so is what a client would parse: compression
pointers (backwards, never into the header, which `render` rewrites), name lengths, and
the rdata of the types whose layout we know (A, AAAA, the name-bearing ones, SOA, MX,
SRV, TXT, HINFO, OPT); other types are relayed as opaque bytes (RFC 3597). Anything odd
raises `Malformed` and is never cached or relayed.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from clusterdns.wire.constants import EDNS_UDP, HEADER, RRClass, RRType
from clusterdns.wire.names import Malformed, name_end, read
from clusterdns.wire.question import Query

T_SOA, T_OPT = int(RRType.SOA), int(RRType.OPT)
# plain ints for the per-record checks: a global int reads faster than an IntEnum member
_T_A, _T_AAAA, _T_CNAME, _T_PTR = int(RRType.A), int(RRType.AAAA), int(RRType.CNAME), int(RRType.PTR)
C_CH = int(RRClass.CH)
_HDR = struct.Struct("!HBBHHHH")
_U16 = struct.Struct("!H")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_OPT_DO = 0x8000
#: rdata that is fixed bytes then one name: NS, CNAME, PTR, DNAME; MX; SRV
_NAME_AFTER = {
    int(RRType.NS): 0,
    int(RRType.CNAME): 0,
    int(RRType.PTR): 0,
    int(RRType.DNAME): 0,
    int(RRType.MX): 2,
    int(RRType.SRV): 6,
}
#: TXT, SPF (one or more strings), HINFO (exactly two)
_STRINGS = {int(RRType.TXT): 0, int(RRType.SPF): 0, int(RRType.HINFO): 2}


def _name(data: bytes, i: int, good: dict[int, tuple[int, int]]) -> int:
    """Offset just past a (possibly compressed) name at `i`, checked as a client's
    parser does: every pointer goes back before the last (so no loops) and not into the
    header, and what it points to ends before the part of the name that pointed (no
    overlap, as dnspython checks); labels of at most 63 bytes; at most 255 bytes in all.

    `good` maps offsets already known to start a valid name to that name's length and
    where its first run of labels ends: a pointer to one ends the walk (most pointers aim
    at a name checked just before), and every label walked here is added.
    """
    n = len(data)
    lim = n  # where the rest of the name must end: after a pointer, where the pointing run began
    end = -1
    bound = i  # the start of the current run of labels; pointers go below it
    total = 1  # the root's byte
    walked: list[tuple[int, int]] = []  # (label offset, total before it)
    runs: list[int] = []  # for each walked label, where its run (labels to a pointer or the root) ends
    for _ in range(128):
        if i >= lim:
            raise Malformed("name runs past the message" if lim == n else "name overlaps its pointer")
        ln = data[i]
        if ln == 0:
            runs += [i + 1] * (len(walked) - len(runs))
            break
        if ln < 0x40:
            walked.append((i, total))
            total += ln + 1
            if total > 255:
                raise Malformed("name longer than 255 bytes")
            i += ln + 1
            continue
        if ln < 0xC0:
            raise Malformed("unknown label type")
        if i + 2 > lim:
            raise Malformed("truncated pointer")
        ptr = ((ln & 0x3F) << 8) | data[i + 1]
        if ptr < HEADER or ptr >= bound:
            raise Malformed("bad compression pointer")
        if end < 0:
            end = i + 2
        runs += [i + 2] * (len(walked) - len(runs))
        known = good.get(ptr)
        if known is not None:
            if known[1] > bound:
                raise Malformed("name overlaps its pointer")
            total += known[0] - 1
            if total > 255:
                raise Malformed("name longer than 255 bytes")
            break
        lim, bound, i = bound, ptr, ptr
    else:
        raise Malformed("too many labels")
    for (off, before), run in zip(walked, runs, strict=True):
        good[off] = (total - before + 1, run)
    return end if end >= 0 else i + 1


def _plain_name(data: bytes, i: int, end: int) -> int:
    """Offset past an uncompressed name at `i` that ends before `end`: the Chaosnet A's,
    whose pointers clients refuse to follow."""
    total = 1
    while i < end:
        ln = data[i]
        if ln == 0:
            return i + 1
        if ln > 63:
            raise Malformed("pointer or label type in an uncompressed name")
        total += ln + 1
        if total > 255:
            raise Malformed("name longer than 255 bytes")
        i += ln + 1
    raise Malformed("name runs past its rdata")


def _check_rdata(data: bytes, rtype: int, rdata: int, end: int, good: dict[int, tuple[int, int]]) -> None:
    """The rdata of a type whose layout we know fills its rdlength exactly (A and AAAA
    are checked inline by the caller)."""
    if rtype in _NAME_AFTER:
        j = rdata + _NAME_AFTER[rtype]
        ok = j < end and _name(data, j, good) == end
    elif rtype == T_SOA:
        ok = rdata < end and _name(data, _name(data, rdata, good), good) + 20 == end
    elif rtype in _STRINGS:
        j, count = rdata, 0
        while j < end:
            j += data[j] + 1
            count += 1
        want = _STRINGS[rtype]
        ok = j == end and count >= 1 and (not want or count == want)
    elif rtype == T_OPT:
        j = rdata
        while j + 4 <= end:
            j += 4 + _U16.unpack_from(data, j + 2)[0]
        ok = j == end
    else:
        return
    if not ok:
        raise Malformed(f"bad rdata for type {rtype}")


def build_query(qid: int, name: bytes, qtype: int, qclass: int, *, do: bool = False, cd: bool = False) -> bytes:
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
    return data[HEADER : HEADER + len(question)] == question


def error_reply(q: Query, rcode: int) -> bytes:
    """An empty answer with `rcode` to the client's question (echoed as sent)."""
    head = _HDR.pack(
        q.id, 0x80 | (0x01 if q.rd else 0), 0x80 | (0x10 if q.cd else 0) | rcode, 1, 0, 0, 1 if q.edns else 0
    )
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
    if not b2 & 0x80 or b2 & 0x78 or qd != 1:
        raise Malformed("not a QUERY answer to one question")
    good: dict[int, tuple[int, int]] = {}
    i = _name(data, HEADER, good) + 4
    qend = i
    offsets: list[int] = []
    min_ttl = answer_min = neg = None
    opt_at = None
    n = len(data)
    for idx in range(an + ns + ar):
        start = i
        if i + 1 < n and data[i] >= 0xC0 and (((data[i] & 0x3F) << 8) | data[i + 1]) in good:
            i += 2  # the usual owner: a pointer to a name checked already (its offset < i)
        else:
            i = _name(data, i, good)
        if i + 10 > n:
            raise Malformed("record header runs past the message")
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, i)
        rdata = i + 10
        end = rdata + rdlen
        if end > n:
            raise Malformed("rdata runs past the message")
        if rtype == _T_A:
            if rclass == C_CH:  # a Chaosnet A is a name then a 16-bit address, as clients read it
                if _plain_name(data, rdata, end) + 2 != end:
                    raise Malformed("CH A rdata is not a name and an address")
            elif rdlen != 4:
                raise Malformed("A rdata is not 4 bytes")
        elif rtype == _T_AAAA:
            if rdlen != 16:
                raise Malformed("AAAA rdata is not 16 bytes")
        elif rdlen or rtype != T_OPT:
            _check_rdata(data, rtype, rdata, end, good)
        if rtype == T_OPT:
            if idx != an + ns + ar - 1 or idx < an + ns or opt_at is not None:
                raise Malformed("OPT record is not the last additional record")
            if data[start] != 0:
                raise Malformed("OPT record not owned by the root")
            opt_at = start
        else:
            if ttl & 0x80000000:
                ttl = 0  # RFC 2181 8: a TTL with the top bit set is read as zero
            offsets.append(i + 4)
            min_ttl = ttl if min_ttl is None else min(min_ttl, ttl)
            if idx < an:
                answer_min = ttl if answer_min is None else min(answer_min, ttl)
            elif idx < an + ns and rtype == T_SOA and neg is None:
                minimum = struct.unpack_from("!I", data, end - 4)[0]
                neg = min(ttl, minimum if not minimum & 0x80000000 else 0)
        i = end
    if i != n:
        raise Malformed("trailing bytes after the records")
    wire = data
    if opt_at is not None:
        wire = data[:10] + _U16.pack(ar - 1) + data[12:opt_at]
    return Scan(wire, b3 & 0x0F, bool(b2 & 0x02), qend, an, tuple(offsets), min_ttl, answer_min, neg)


def render(wire: bytes, qend: int, ttl_offsets: tuple[int, ...], ttl: int | None, q: Query, limit: int | None) -> bytes:
    """Stored answer -> the client's reply: ID, RD, question case, TTLs, OPT, size.

    `ttl` None keeps the stored TTLs. Over `limit` (UDP) the reply becomes an empty one
    with TC set, which sends the client to TCP (RFC 7766 5).
    """
    buf = bytearray(wire)
    _U16.pack_into(buf, 0, q.id)
    buf[2] = (buf[2] & 0xFE) | (0x01 if q.rd else 0)
    buf[3] |= 0x80  # RA: we recurse on the client's behalf
    buf[HEADER:qend] = q.qwire[: qend - HEADER]  # same bytes up to case (the key matched)
    if ttl is not None:
        packed = struct.pack("!I", max(0, ttl))
        for off in ttl_offsets:
            buf[off : off + 4] = packed
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
        if rtype == _T_A and rdlen == 4:
            out.append((owner, rtype, ttl, socket.inet_ntop(socket.AF_INET, data[rdata:i])))
        elif rtype == _T_AAAA and rdlen == 16:
            out.append((owner, rtype, ttl, socket.inet_ntop(socket.AF_INET6, data[rdata:i])))
        elif rtype in (_T_CNAME, _T_PTR):
            out.append((owner, rtype, ttl, read(data, rdata)[0]))
    return b3 & 0x0F, out
