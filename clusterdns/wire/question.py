"""The one query parser: every path (cluster zone, forwarder, cache, metrics, query log)
reads a query through `parse`.

One bounds-checked pass over the message yields where the question ends, its name in
wire form lowercased, type, class and the EDNS fields. What is malformed raises a
typed `FormError` (the server answers FORMERR); a response or an opcode other than
QUERY raises `NotQuery` / `NotImplementedOpcode`, which the caller drops or answers
NOTIMP. Records in the answer and authority sections, and additional records other
than OPT, are skipped (their names are walked, never followed), so no input makes the
parser do more than one pass over its own bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from clusterdns.wire.constants import CLASSIC_UDP, EDNS_UDP, HEADER, MAX_LABEL, MAX_NAME, RRType
from clusterdns.wire.names import Malformed, name_end, to_text

_HDR = struct.Struct("!HBBHHHH")
_TYPE_CLASS = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_DO = 0x8000
_OPT = int(RRType.OPT)


class FormError(Malformed):
    """A query with a readable header whose body is broken: answered FORMERR."""


class ShortHeader(Malformed):
    """Fewer than 12 bytes: there is no ID to answer to, so the packet is dropped."""


class NameOverrun(FormError):
    """The question name runs past the end of the message."""


class LabelTooLong(FormError):
    """A label over 63 bytes (or a reserved label type)."""


class NameTooLong(FormError):
    """A name over 255 bytes in wire form (RFC 1035 2.3.4), found while walking it once."""


class PointerInQuestion(FormError):
    """A compression pointer in the question: it can only point into the header."""


class CountsLie(FormError):
    """The section counts promise records the message does not hold."""


class BadQuestionCount(FormError):
    """QDCOUNT other than 1."""


class BadOpt(FormError):
    """An OPT record that is not a single, root-owned record in the additional section."""


class NotQuery(Malformed):
    """QR is set: a response, never answered (answering could start a loop)."""


class NotImplementedOpcode(Malformed):
    """An opcode other than QUERY: answered NOTIMP."""


@dataclass(slots=True)
class Query:
    """One client query, reduced to what answering, caching and forwarding need.

    `qwire` is the question section exactly as sent (case kept, for the 0x20 echo);
    `name` is its name in wire form lowercased (labels are <= 63 bytes, so `lower()`
    only touches letters); `key` is the cache key: name, type, class, DO and CD.
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
    version: int = 0
    options: bytes = b""  # the OPT record's RDATA as sent (EDNS options)
    qend: int = 0  # offset just past the question in the message
    key: bytes = b""

    def __post_init__(self) -> None:
        self.key = self.name + self.qwire[-4:] + bytes(((self.do << 1) | self.cd,))

    @property
    def text(self) -> str:
        """The name as dotted text, lowercased, with the trailing dot."""
        return to_text(self.name)

    def udp_limit(self, max_udp: int = EDNS_UDP) -> int:
        """Largest UDP answer the client takes: 512 without EDNS, else its size capped."""
        if not self.edns:
            return CLASSIC_UDP
        return max(CLASSIC_UDP, min(self.udp_size, max_udp))


def question_name_end(data: bytes, i: int = HEADER) -> int:
    """Offset past the question name at `i`: labels only, each <= 63, total <= 255."""
    start, n = i, len(data)
    while True:
        if i >= n:
            raise NameOverrun("question name runs past the message")
        ln = data[i]
        if ln == 0:
            return i + 1
        if ln > MAX_LABEL:
            if ln & 0xC0 == 0xC0:
                raise PointerInQuestion("compression pointer in the question")
            raise LabelTooLong("label longer than 63 bytes")
        i += ln + 1
        if i - start >= MAX_NAME:
            raise NameTooLong("name longer than 255 bytes")


def parse(data: bytes) -> Query:
    """Read a query: one question, any records after it, at most one OPT."""
    n = len(data)
    if n < HEADER:
        raise ShortHeader("shorter than a header")
    qid, b2, b3, qd, an, ns, ar = _HDR.unpack_from(data)
    if b2 & 0x80:
        raise NotQuery("QR is set")
    if b2 & 0x78:
        raise NotImplementedOpcode(f"opcode {(b2 >> 3) & 0xF}")
    if qd != 1:
        raise BadQuestionCount(f"QDCOUNT is {qd}, not 1")
    qn = question_name_end(data)
    qend = qn + 4
    if qend > n:
        raise NameOverrun("question type and class missing")
    qtype, qclass = _TYPE_CLASS.unpack_from(data, qn)
    edns, udp_size, do, version, options = False, 0, False, 0, b""
    i = qend
    if an or ns or ar:
        if an + ns + ar > (n - qend) // 11:
            raise CountsLie("more records counted than the message can hold")
        seen_opt = False
        for idx in range(an + ns + ar):
            start = i
            try:
                i = name_end(data, i)
            except Malformed as exc:
                raise CountsLie(str(exc)) from None
            if i + 10 > n:
                raise CountsLie("record header runs past the message")
            rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, i)
            i += 10 + rdlen
            if i > n:
                raise CountsLie("record data runs past the message")
            if rtype == _OPT:
                if idx < an + ns:
                    raise BadOpt("OPT outside the additional section")
                if seen_opt:
                    raise BadOpt("more than one OPT record")  # RFC 6891 6.1.1
                if data[start] != 0:
                    raise BadOpt("OPT owner is not the root")
                seen_opt = True
                edns, udp_size, do = True, rclass, bool(ttl & _DO)
                version = (ttl >> 16) & 0xFF
                options = data[i - rdlen : i]
    return Query(
        qid,
        bool(b2 & 0x01),
        bool(b3 & 0x10),
        data[HEADER:qend],
        data[HEADER:qn].lower(),
        qtype,
        qclass,
        edns,
        udp_size,
        do,
        version,
        options,
        qend,
    )
