"""Zone transfer (AXFR, RFC 5936) of the compiled zone: one snapshot, streamed as messages.

Consistency: a transfer reads one snapshot of the index, `ClusterZone.snapshot`, a shallow
copy of the name -> entry dict taken in one synchronous step on the event loop, the
zone's one writer. The zone edits its index in place (the listeners hold the dict) but
only by replacing or removing whole entries, never by changing one, so the copy is the
zone at one instant, SOA serial included, whatever changes arrive while the messages go
out. A copy rather than copy-on-write or a version counter: the copy costs one pointer
pair per name (a few MB and milliseconds at 100,000 names) once per transfer, which is
rare; copy-on-write would put a check on every write of the index all the time no
transfer runs, and a version counter only detects a change mid-transfer (then the
transfer must fail or restart, and a busy cluster would starve its secondaries).

Messages are built one at a time from the snapshot, each at most `limit` bytes (64 KB):
the SOA first and last (RFC 5936 2.2), the apex's NS next, then every RRset of every
compiled name in the zone (services, endpoint names, SRV names, ExternalName CNAMEs,
`dns-version`, the NS target's addresses, PTRs in the reverse zones). Pod names are
computed per question, not compiled, so they are not in the index and not enumerated.
Owner names, and the RDATA names of NS, CNAME, PTR and SOA, are compressed within each
message; SRV targets never are (RFC 2782).

Who may transfer is an `AllowList` (addresses, CIDRs, `*`); serving it is server/tcp.py's.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from clusterdns.cluster.compile import SOA, Entry
from clusterdns.wire import encode as E
from clusterdns.wire.constants import HEADER, MAX_TCP, RRType
from clusterdns.wire.names import in_zone, name_end
from clusterdns.wire.question import Query

NOTAUTH = 9  # RFC 2136: the server is not authoritative for the zone named
_U16 = struct.Struct("!H")
_COUNTS = struct.Struct("!HHHH")
# types whose RDATA is names only (RFC 1035 3.3): compressed like owners
_ONE_NAME = frozenset((int(RRType.NS), int(RRType.CNAME), int(RRType.PTR)))
_SOA = int(RRType.SOA)


class Transferable(Protocol):
    """A compiled zone a transfer can read (`cluster.zone.ClusterZone`): its apexes in wire
    form, each with an SOA node, and a consistent copy of its index."""

    @property
    def apex_wires(self) -> Sequence[bytes]: ...

    def snapshot(self) -> dict[bytes, Entry]: ...


def transfer_apex(zone: Transferable, name: bytes) -> bytes | None:
    """The apex (wire form) a transfer question names, or None when it is not a zone we serve
    (a name below an apex is not a zone: NOTAUTH)."""
    return name if name in zone.apex_wires else None


def axfr(zone: Transferable, q: Query, apex: bytes, limit: int = MAX_TCP) -> Iterator[bytes]:
    """The transfer of `apex` answering `q` (AXFR, or IXFR answered in full: RFC 1995 4),
    as messages of at most `limit` bytes. The snapshot is taken now, not on the first
    `next()`."""
    return _messages(zone.snapshot(), apex, q, limit)


def _messages(snapshot: dict[bytes, Entry], apex: bytes, q: Query, limit: int) -> Iterator[bytes]:
    head = _U16.pack(q.id) + bytes((0x84 | int(q.rd), 0))  # QR AA, opcode QUERY, RD copied
    tail = E.OPTS[q.do] if q.edns else b""  # RFC 6891 7: an OPT in, an OPT out
    qname = q.name if q.qwire[:-4] == q.name else None  # the client's own case is not ours to copy
    apex_node = snapshot[apex]
    soa = _soa(apex_node)
    m = _Message(head, q.qwire, qname, tail, limit)
    for owner, rest in _records(snapshot, apex, soa):
        if not m.fits(owner, rest):
            yield m.done()
            m = _Message(head, q.qwire, qname, tail, limit)
            if not m.fits(owner, rest):
                raise ValueError(f"a record of {len(owner) + len(rest)} bytes does not fit {limit}-byte messages")
        m.add(owner, rest)
    if not m.fits(apex, soa):
        yield m.done()
        m = _Message(head, q.qwire, qname, tail, limit)
    m.add(apex, soa)
    yield m.done()


def _soa(node: Entry) -> bytes:
    """The apex's SOA record after its owner (type onward)."""
    p = node.get(SOA) if not isinstance(node, bytes) else None
    if p is None:
        raise LookupError("the apex has no SOA")
    return p.body[name_end(p.body, 0) : E.record_ends(p.body, 1)[0]]


def _records(snapshot: dict[bytes, Entry], apex: bytes, soa: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(owner, record from its type on) of the zone: the SOA, the apex's other RRsets,
    then every other name in the zone, in the index's order (a Service's names together)."""
    yield apex, soa
    yield from (r for r in _at(apex, snapshot[apex]) if r[1] != soa)
    for name, entry in snapshot.items():
        if name != apex and in_zone(name, apex):
            yield from _at(name, entry)


def _at(name: bytes, entry: Entry) -> Iterator[tuple[bytes, bytes]]:
    """The records at one name: a lone record, or every answer RRset of a Node."""
    if isinstance(entry, bytes):
        yield name, entry[2:]  # owned by the question pointer (compile.leaf)
        return
    for p in entry.types().values():
        body, i = p.body, 0
        for end in E.record_ends(body, p.an):
            j = name_end(body, i)
            if body[i:j] == E.OWNER:  # the name's own records; anything else is not its data
                yield name, body[j:end]
            i = end


class _Message:
    """One message of the transfer being filled: header, the question, records, [OPT]."""

    __slots__ = ("buf", "names", "count", "tail", "limit")

    def __init__(self, head: bytes, qwire: bytes, qname: bytes | None, tail: bytes, limit: int) -> None:
        self.buf = bytearray(head + b"\x00" * 8 + qwire)
        self.names: dict[bytes, int] = {qname: HEADER} if qname is not None else {}
        self.count, self.tail, self.limit = 0, tail, limit

    def fits(self, owner: bytes, rest: bytes) -> bool:
        """Whether the record fits uncompressed (compression only makes it shorter)."""
        return len(self.buf) + len(owner) + len(rest) + len(self.tail) <= self.limit and self.count < 0xFFFF

    def add(self, owner: bytes, rest: bytes) -> None:
        buf = self.buf
        self._name(owner)
        rtype = (rest[0] << 8) | rest[1]
        if rtype in _ONE_NAME or rtype == _SOA:
            buf += rest[:8]  # type, class, TTL; RDLENGTH patched below
            at = len(buf)
            buf += b"\x00\x00"
            rdata = rest[10:]
            end = name_end(rdata, 0)
            self._name(rdata[:end])
            if rtype == _SOA:
                end2 = name_end(rdata, end)
                self._name(rdata[end:end2])
                buf += rdata[end2:]
            buf[at : at + 2] = _U16.pack(len(buf) - at - 2)
        else:
            buf += rest
        self.count += 1

    def _name(self, name: bytes) -> None:
        """`name` (uncompressed wire form) written with a pointer to the longest suffix
        already in this message; its new suffixes are remembered for the names after it."""
        buf, table = self.buf, self.names
        start, i = len(buf), 0
        while name[i]:
            suffix = name[i:]
            at = table.get(suffix)
            if at is not None:
                buf += name[:i]
                buf += bytes((0xC0 | at >> 8, at & 0xFF))
                return
            if start + i < 0x4000:  # pointers reach 14 bits
                table[suffix] = start + i
            i += name[i] + 1
        buf += name

    def done(self) -> bytes:
        buf = self.buf
        buf[4:12] = _COUNTS.pack(1, self.count, 0, 1 if self.tail else 0)
        return bytes(buf + self.tail)


class AllowList:
    """The clients that may transfer: addresses, CIDRs (`10.0.0.0/8`, `fd00::/8`), `*` for
    any. IPv4-mapped IPv6 peers (a dual-stack socket) are matched as IPv4."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.any = False
        self.nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            entry = entry.strip()
            if entry == "*":
                self.any = True
            else:
                self.nets.append(ipaddress.ip_network(entry, strict=False))

    def allows(self, host: str) -> bool:
        if self.any:
            return True
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.nets)

    def __bool__(self) -> bool:
        return self.any or bool(self.nets)


def client_problem(entry: str) -> str | None:
    """Settings check of one allow-list entry: None when it is fine, else what was expected."""
    entry = entry.strip()
    if entry == "*":
        return None
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return "an address, a CIDR such as 10.0.0.0/8 or fd00::/8, or * for any client"
    return None


__all__ = ["NOTAUTH", "AllowList", "Transferable", "axfr", "client_problem", "transfer_apex"]
