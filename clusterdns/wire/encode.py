"""The encoder: records to wire bytes when the zone changes, replies assembled per query.

A compiled answer (`Prepared`) holds everything after the question: its records as
bytes, with owners written as a pointer to the question name (0xC00C) when the owner
is the name asked, or in full otherwise. RDATA names are never compressed (RFC 2782
forbids it for SRV targets; for the rest it keeps records valid wherever they are
placed). So the bytes fit any query for that name, and a reply is

    ID + one of eight prebuilt flag/count headers + the client's question + body [+ OPT]

Replies that do not fit the client's size are cut here (`fit`): first the additional
section goes (no TC, RFC 2181 9), then as many whole answer records are kept as fit,
with TC set, the question and OPT always kept (what miekg/dns `Msg.Truncate` does).
"""

from __future__ import annotations

import bisect
import socket
import struct
from collections.abc import Sequence

from clusterdns.wire.constants import HEADER, Rcode, RRClass, RRType
from clusterdns.wire.names import name_end, read, to_wire

OWNER = b"\xc0\x0c"  # the question's name: the owner of every record at the name asked
EDNS_ADVERTISED = 1232

_RR_FIXED = struct.Struct("!HHIH")
# plain ints for what runs per record while compiling: an IntEnum member costs ~0.2 us a read
_A, _AAAA, _IN = int(RRType.A), int(RRType.AAAA), int(RRClass.IN)
_COUNTS = struct.Struct("!HHHH")
_U16 = struct.Struct("!H")


# ----------------------------------------------------------------------------- records


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = _IN) -> bytes:
    """One resource record in wire form."""
    return owner + _RR_FIXED.pack(rtype, rclass, ttl, len(rdata)) + rdata


def address(ip: str) -> tuple[int, bytes]:
    """(A or AAAA, the packed address) for a canonical address string."""
    if ":" in ip:
        return _AAAA, socket.inet_pton(socket.AF_INET6, ip)
    return _A, socket.inet_pton(socket.AF_INET, ip)


def srv(priority: int, weight: int, port: int, target: str) -> bytes:
    return struct.pack("!HHH", priority, weight, port) + to_wire(target)


def soa(mname: str, rname: str, serial: int, refresh: int, retry: int, expire: int, minimum: int) -> bytes:
    return to_wire(mname) + to_wire(rname) + struct.pack("!IIIII", serial % 2**32, refresh, retry, expire, minimum)


def txt(text: str) -> bytes:
    """TXT RDATA: character-strings of at most 255 bytes each."""
    raw = text.encode()
    chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    return b"".join(bytes((len(c),)) + c for c in chunks)


def record_ends(body: bytes, count: int, start: int = 0) -> list[int]:
    """Offsets just past each of `count` records starting at `start` in `body`."""
    ends, i = [], start
    for _ in range(count):
        i = name_end(body, i)
        i += 10 + _U16.unpack_from(body, i + 8)[0]
        ends.append(i)
    return ends


def split_records(body: bytes, count: int) -> list[bytes]:
    """The first `count` records of `body`, each as its own bytes (to rebuild an answer)."""
    out, i = [], 0
    for end in record_ends(body, count):
        out.append(body[i:end])
        i = end
    return out


def pointer(offset: int) -> bytes | None:
    """A compression pointer to `offset` in the message, or None when it is out of reach."""
    return bytes((0xC0 | offset >> 8, offset & 0xFF)) if offset < 0x4000 else None


def full_owners(body: bytes, start: int, count: int, qname: bytes) -> list[bytes]:
    """`count` records of `body` from `start`, owners written in full: to move records that
    were compiled for a reply to `qname` (their owners may point into it) to another reply."""
    msg = bytes(HEADER) + qname + b"\x00\x00\x00\x00" + body
    base = HEADER + len(qname) + 4
    out, i = [], start
    for end in record_ends(body, count, start):
        owner_end = name_end(body, i)
        text, _ = read(msg, base + i)
        out.append(to_wire(text) + body[owner_end:end])
        i = end
    return out


def reown(body: bytes, count: int, owner: bytes) -> bytes:
    """The first `count` records of `body` with the question pointer replaced by `owner`
    (a CNAME chase puts a name's records under its target's name)."""
    out, i = [], 0
    for end in record_ends(body, count):
        out.append(owner + body[i + 2 : end] if body[i : i + 2] == OWNER else body[i:end])
        i = end
    return b"".join(out)


# ----------------------------------------------------------------------------- headers

_heads: dict[tuple[int, bool, int, int, int], tuple[bytes, ...]] = {}


def heads(rcode: int, aa: bool, an: int, ns: int, ar: int) -> tuple[bytes, ...]:
    """The eight flag+count headers (bytes 2-11) of one answer shape, indexed by
    `rd | cd << 1 | edns << 2` of the query; shared by every answer of that shape."""
    key = (rcode, aa, an, ns, ar)
    found = _heads.get(key)
    if found is None:
        out = []
        for ix in range(8):
            b2 = 0x80 | (0x04 if aa else 0) | (ix & 1)
            b3 = (0x10 if ix & 2 else 0) | (rcode & 0x0F)
            out.append(bytes((b2, b3)) + _COUNTS.pack(1, an, ns, ar + (1 if ix & 4 else 0)))
        found = _heads[key] = tuple(out)
    return found


def opt(do: bool, rcode: int = 0) -> bytes:
    """Our OPT record: the size we take, the extended rcode bits, DO echoed (RFC 3225)."""
    ttl = ((rcode >> 4) & 0xFF) << 24 | (0x8000 if do else 0)
    return b"\x00" + _RR_FIXED.pack(RRType.OPT, EDNS_ADVERTISED, ttl, 0)


OPTS = (opt(False), opt(True))  # indexed by the DO bit


class Prepared:
    """One answer, compiled: the eight headers of its shape and the bytes after the question.

    Kept small, one per RRset of the cluster: counts, rcode and section extents are read
    off the shared headers or the body when a rare path needs them. `classes` holds the
    answer's traffic-class counters (obs.counters), made on first use: for a name's own
    answer (`qtype` set) a list by query shape, for a shared negative template a dict that
    also keys size and type. Subclasses add what few answers need: `Chase` (a CNAME that
    leaves our zones), `Big` (record ends, to cut it to a client's size), `Extended`
    (an rcode over 15, BADVERS).
    """

    __slots__ = ("heads", "body", "classes", "qtype")
    chase: bytes | None = None
    ext = 0  # the rcode's high bits (RFC 6891 6.1.3)
    ends: tuple[int, ...] | None = None  # where each answer record ends (Big)

    def __init__(self, heads: tuple[bytes, ...], body: bytes, qtype: int) -> None:
        self.heads, self.body, self.qtype = heads, body, qtype
        self.classes: list | dict | None = None  # see the docstring

    @property
    def rcode(self) -> int:
        return (self.heads[0][1] & 0x0F) | (self.ext << 4)

    @property
    def an(self) -> int:
        return _U16.unpack_from(self.heads[0], 4)[0]

    @property
    def ns(self) -> int:
        return _U16.unpack_from(self.heads[0], 6)[0]

    @property
    def ar(self) -> int:
        return _U16.unpack_from(self.heads[0], 8)[0]

    @property
    def ans_end(self) -> int:
        """Where the answer section ends in `body`."""
        ends = self.ends if self.ends is not None else record_ends(self.body, self.an)
        return ends[-1] if ends else 0

    @property
    def auth_end(self) -> int:
        """Where the authority section ends in `body`."""
        ends = record_ends(self.body, self.ns, self.ans_end)
        return ends[-1] if ends else self.ans_end

    def __repr__(self) -> str:
        return f"Prepared(rcode={self.rcode}, an={self.an}, ns={self.ns}, ar={self.ar}, {len(self.body)} bytes)"


class Chase(Prepared):
    __slots__ = ("chase",)


class Big(Prepared):
    __slots__ = ("ends",)


class Extended(Prepared):
    __slots__ = ("ext",)


BIG = 200  # bodies longer than this keep their record ends: they may be cut to 512 bytes


def make(
    rcode: int = Rcode.NOERROR,
    answer: Sequence[bytes] = (),
    authority: Sequence[bytes] = (),
    additional: Sequence[bytes] = (),
    aa: bool = True,
    qtype: int = 0,
    chase: bytes | None = None,
) -> Prepared:
    """A compiled answer from its records (each a complete RR in wire form)."""
    a = b"".join(answer)
    body = a + b"".join(authority) + b"".join(additional)
    h = heads(rcode, aa, len(answer), len(authority), len(additional))
    if chase is not None:
        p: Prepared = Chase(h, body, qtype)
        p.chase = chase  # type: ignore[misc]  # a Chase's own slot; p is typed as the base
    elif rcode > 15:
        p = Extended(h, body, qtype)
        p.ext = rcode >> 4
    elif len(body) > BIG and len(answer) > 1:
        p = Big(h, body, qtype)
        p.ends = tuple(record_ends(a, len(answer)))
    else:
        p = Prepared(h, body, qtype)
    return p


def assemble(data: bytes, qend: int, p: Prepared, edns: bool, do: bool, limit: int) -> bytes:
    """The reply to the query `data` (question ending at `qend`) from `p`, fitted to `limit`."""
    ix = (data[2] & 1) | ((data[3] >> 3) & 2) | (4 if edns else 0)
    out = data[:2] + p.heads[ix] + data[HEADER:qend] + p.body
    if edns:
        out += OPTS[do] if not p.ext else opt(do, p.rcode)
    if len(out) > limit:
        return fit(data, qend, p, edns, do, limit)
    return out


def fit(data: bytes, qend: int, p: Prepared, edns: bool, do: bool, limit: int) -> bytes:
    """`p` cut to `limit` bytes: the additional section first, then answer records."""
    tail = (OPTS[do] if not p.ext else opt(do, p.rcode)) if edns else b""
    fixed = qend + len(tail)  # header + question + OPT
    ix = (data[2] & 1) | ((data[3] >> 3) & 2) | (4 if edns else 0)
    auth_end = p.auth_end
    if fixed + auth_end <= limit:
        b2, b3 = p.heads[ix][0], p.heads[ix][1]
        counts = _COUNTS.pack(1, p.an, p.ns, 1 if edns else 0)
        return data[:2] + bytes((b2, b3)) + counts + data[HEADER:qend] + p.body[:auth_end] + tail
    ends = p.ends if p.ends is not None else record_ends(p.body, p.an)
    n = bisect.bisect_right(ends, limit - fixed)
    keep = ends[n - 1] if n else 0
    b2, b3 = p.heads[ix][0] | 0x02, p.heads[ix][1]
    counts = _COUNTS.pack(1, n, 0, 1 if edns else 0)
    return data[:2] + bytes((b2, b3)) + counts + data[HEADER:qend] + p.body[:keep] + tail


def header_reply(data: bytes, rcode: int) -> bytes | None:
    """An answer built from the header alone (FORMERR, NOTIMP): ID, opcode and RD kept,
    no sections; None when there is no header to answer to."""
    if len(data) < HEADER:
        return None
    flags = 0x8000 | (data[2] & 0x79) << 8 | (rcode & 0x0F)
    return data[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)
