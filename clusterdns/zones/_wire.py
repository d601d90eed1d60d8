"""Minimal DNS byte handling for the forwarder and the cache (no dnslib on this path).

The cache stores upstream answers as bytes and serves them by patching a few fields
(perf-anchors §6 item 6), so it needs only what this module reads: the header, the
question's extent, each record's TTL offset, the SOA MINIMUM and the OPT record.
Everything is bounds-checked; anything odd raises `Malformed` and is never cached.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

HEADER = 12
CLASSIC_UDP = 512  # RFC 1035 4.2.1
EDNS_UDP = 1232  # DNS flag day 2020: what we advertise and the most we send over UDP

T_SOA = 6
T_HINFO = 13
T_NS = 2
T_OPT = 41
C_IN = 1

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

_HDR = struct.Struct("!HBBHHHH")
_U16 = struct.Struct("!H")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_OPT_DO = 0x8000


class Malformed(ValueError):
    """The bytes are not a DNS message this module can read safely."""


@dataclass(slots=True)
class Question:
    """One client query, reduced to what routing, caching and forwarding need.

    `qwire` is the question section exactly as sent (case kept, for the 0x20 echo);
    `name` is its name in wire form lowercased (labels are <= 63, so `lower()` only
    touches ASCII letters); `key` adds type, class, DO and CD (the cache key).
    """

    id: int
    rd: bool
    cd: bool
    qwire: bytes
    name: bytes
    qtype: int
    qclass: int
    edns: bool
    udp_size: int
    do: bool

    key: bytes = b""

    def __post_init__(self) -> None:
        self.key = self.qwire.lower() + bytes(((self.do << 1) | self.cd,))

    @property
    def text(self) -> str:
        """The name as dotted text, lowercased, with the trailing dot."""
        return name_to_text(self.name)

    def udp_limit(self) -> int:
        """Largest UDP answer the client takes: 512 without EDNS, else its size capped."""
        if not self.edns:
            return CLASSIC_UDP
        return max(CLASSIC_UDP, min(self.udp_size, EDNS_UDP))


def _name_end(data: bytes, i: int) -> int:
    """Offset just past a (possibly compressed) name starting at `i`."""
    n = len(data)
    for _ in range(128):  # a name has at most 127 labels
        if i >= n:
            raise Malformed("name runs past the message")
        ln = data[i]
        if ln == 0:
            return i + 1
        if ln & 0xC0 == 0xC0:
            if i + 2 > n:
                raise Malformed("truncated pointer")
            return i + 2
        if ln & 0xC0:
            raise Malformed("unknown label type")
        i += ln + 1
    raise Malformed("too many labels")


def _plain_name_end(data: bytes, i: int) -> int:
    """Like `_name_end` but the name must be pointer-free and at most 255 bytes (queries)."""
    start, n = i, len(data)
    while True:
        if i >= n:
            raise Malformed("name runs past the message")
        ln = data[i]
        if ln == 0:
            i += 1
            break
        if ln > 63:
            raise Malformed("compressed or over-long label in a question")
        i += ln + 1
    if i - start > 255:
        raise Malformed("name longer than 255 bytes")
    return i


def parse_question(data: bytes) -> Question:
    """Read a plain query: QR=0, opcode QUERY, one question, at most one OPT record.

    Anything else raises `Malformed`; the caller answers it on its slow path.
    """
    if len(data) < HEADER:
        raise Malformed("shorter than a header")
    qid, b2, b3, qd, an, ns, ar = _HDR.unpack_from(data)
    if b2 & 0x80 or b2 & 0x78 or qd != 1 or an or ns or ar > 1:
        raise Malformed("not a plain query")
    qend = _plain_name_end(data, HEADER)
    if qend + 4 > len(data):
        raise Malformed("question type and class missing")
    qtype, qclass = struct.unpack_from("!HH", data, qend)
    name = data[HEADER:qend].lower()
    qend += 4
    edns, udp_size, do = False, 0, False
    if ar:
        # the OPT record: root owner, type 41, class = UDP size, TTL = ext-rcode/version/flags
        if qend + 11 > len(data) or data[qend] != 0:
            raise Malformed("additional record is not a root OPT")
        rtype, udp_size, ttl, rdlen = _RR_FIXED.unpack_from(data, qend + 1)
        if rtype != T_OPT or qend + 11 + rdlen != len(data):
            raise Malformed("additional record is not a well-formed OPT")
        if (ttl >> 16) & 0xFF:
            raise Malformed("EDNS version other than 0 (BADVERS, slow path)")
        edns, do = True, bool(ttl & _OPT_DO)
    elif qend != len(data):
        raise Malformed("trailing bytes")
    return Question(qid, bool(b2 & 0x01), bool(b3 & 0x10), data[HEADER:qend], name,
                    qtype, qclass, edns, udp_size, do)


def name_to_wire(text: str) -> bytes:
    """'a.b.' or 'a.b' -> wire form, lowercased; '.' is the root."""
    text = text.strip().rstrip(".").lower()
    if not text:
        return b"\x00"
    out = bytearray()
    for label in text.split("."):
        raw = label.encode("idna") if not label.isascii() else label.encode()
        if not 0 < len(raw) <= 63:
            raise ValueError(f"bad label in {text!r}")
        out += bytes((len(raw),)) + raw
    out += b"\x00"
    if len(out) > 255:
        raise ValueError(f"name too long: {text!r}")
    return bytes(out)


def name_to_text(wire: bytes) -> str:
    """Wire name (pointer-free) -> dotted text with a trailing dot."""
    labels, i = [], 0
    while i < len(wire) and wire[i]:
        ln = wire[i]
        labels.append(wire[i + 1:i + 1 + ln].decode("ascii", "backslashreplace"))
        i += ln + 1
    return ".".join(labels) + "."


def suffixes(name: bytes) -> list[bytes]:
    """Every suffix of a wire name on a label boundary, longest first ('.' last)."""
    out, i = [], 0
    while i < len(name):
        out.append(name[i:])
        if name[i] == 0:
            break
        i += name[i] + 1
    return out


def in_zone(name: bytes, zone: bytes) -> bool:
    """Whether the wire name equals or lies under the wire zone (both lowercased)."""
    return name.endswith(zone) and zone in suffixes(name)


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


def error_reply(q: Question, rcode: int) -> bytes:
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
    i = _name_end(data, HEADER) + 4
    qend = i
    offsets: list[int] = []
    min_ttl = answer_min = neg = None
    opt_at = None
    n = len(data)
    for idx in range(an + ns + ar):
        start = i
        i = _name_end(data, i)
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
                j = _name_end(data, _name_end(data, rdata))
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
           q: Question, limit: int | None) -> bytes:
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


def read_name(data: bytes, i: int) -> tuple[str, int]:
    """A possibly compressed name at `i` -> (dotted text without the final dot, next offset)."""
    labels: list[str] = []
    end = -1
    n = len(data)
    for _ in range(128):
        if i >= n:
            raise Malformed("name runs past the message")
        ln = data[i]
        if ln & 0xC0 == 0xC0:
            if i + 2 > n:
                raise Malformed("truncated pointer")
            if end < 0:
                end = i + 2
            ptr = ((ln & 0x3F) << 8) | data[i + 1]
            if ptr >= i:
                raise Malformed("forward compression pointer")
            i = ptr
            continue
        if ln == 0:
            return ".".join(labels), (end if end >= 0 else i + 1)
        if ln & 0xC0:
            raise Malformed("unknown label type")
        labels.append(data[i + 1:i + 1 + ln].decode("ascii", "backslashreplace").lower())
        i += ln + 1
    raise Malformed("too many labels or a pointer loop")


def answer_records(data: bytes) -> tuple[int, list[tuple[str, int, int, str]]]:
    """(rcode, [(owner, type, ttl, data)]) for the A, AAAA, CNAME and PTR records of the
    answer section; other types are skipped. Used to append an upstream's answer to a
    CNAME we gave (ExternalName); names are lowercased, without the final dot."""
    if len(data) < HEADER:
        raise Malformed("shorter than a header")
    _id, _b2, b3, qd, an, _ns, _ar = _HDR.unpack_from(data)
    i = HEADER
    for _ in range(qd):
        i = _name_end(data, i) + 4
    out = []
    for _ in range(an):
        owner, i = read_name(data, i)
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
            out.append((owner, rtype, ttl, read_name(data, rdata)[0]))
    return b3 & 0x0F, out
