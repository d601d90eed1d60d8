"""Every query's answer, in three steps: `fast` and `cached` for the plain shape, `answer`
for the rest.

`fast` answers a query of the ordinary shape (one question, no other records but a bare
OPT of version 0) from the compiled zone with byte slicing only: no parse, no object
per query. `cached` answers the same shape from the forward cache: the parser's cache
key (`Query.key`: name lowercased, type, class, DO and CD bits) built from the bytes, one
lookup (`ResponseCache.hot`), and the entry's pieces patched around the client's own
ID and question. `answer` parses with the one query parser (`wire/question.py`), applies the
protocol rules (RFC 1035, 6891, 7766, 8482), and asks the zone or the forwarder. Neither
raises: malformed input gets FORMERR when a header is there, else nothing. It returns an
`Answer`: the reply with who wrote it (CoreDNS's `plugin` label) and, for a cache hit,
the entry; nothing is left on the handler for the listener to read afterwards.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable
from typing import NamedTuple

from clusterdns.cache.cache import LATER, Hit, Later, Notify
from clusterdns.cache.entry import Entry
from clusterdns.cluster.external import ExternalZone
from clusterdns.cluster.zone import ClusterZone
from clusterdns.forward.forwarding import Forwarding
from clusterdns.obs.counters import QueryStats
from clusterdns.wire import encode as E, question as Q
from clusterdns.wire.constants import CLASSIC_UDP, EDNS_UDP, MAX_TCP, Rcode, RRClass, RRType
from clusterdns.wire.encode import OPTS
from clusterdns.wire.scan import _opt

log = logging.getLogger("clusterdns")
ONE = E.heads(Rcode.NOERROR, True, 1, 0, 0)  # the headers of a one-record answer
IDENTITY_NAMES = (b"\x02id\x06server\x00", b"\x08hostname\x04bind\x00")
# plain ints for the general path's per-query tests: an IntEnum member costs ~0.2 us a read
_T_OPT, _C_IN, _C_CH = int(RRType.OPT), int(RRClass.IN), int(RRClass.CH)
_IDENTITY_TYPES = frozenset((int(RRType.TXT), int(RRType.ANY)))
_TRANSFERS = frozenset((int(RRType.AXFR), int(RRType.IXFR)))

Reply = bytes | None | Awaitable[bytes | None]

NO_EDNS = b"\x00\x01\x00\x00\x00\x00\x00\x00"  # QD=1 AN=0 NS=0 AR=0
ONE_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"  # ... AR=1
OPT_HEAD = b"\x00" + int(RRType.OPT).to_bytes(2, "big")  # root owner, type OPT
EMPTY_RDATA = b"\x00\x00"
CLASS_LIMIT = 4096  # traffic classes remembered per compiled answer (bounded under floods)
# the last byte of the cache key (`Query.key`) by DO << 1 | CD
KEY_BITS = tuple(bytes((i,)) for i in range(4))
CACHE_OPTS = (_opt(False), _opt(True))  # the OPT a cached reply carries (`scan.render`), by DO
TC_COUNTS = (b"\x00\x01\x00\x00\x00\x00\x00\x00", b"\x00\x01\x00\x00\x00\x00\x00\x01")  # by EDNS


class Answer(NamedTuple):
    """What `Handler.answer` gives the listener: the reply (bytes, an awaitable of the
    bytes: forwarded, or `LATER`: forwarded, to the `notify` given), who wrote it
    (CoreDNS's `plugin` label: kubernetes, cache, forward, chaos; "" for protocol
    errors) and the cache entry of a hit."""

    reply: bytes | Awaitable[bytes | None] | Later
    plugin: str = ""
    entry: Entry | None = None


class Handler:
    def __init__(
        self,
        zone: ClusterZone | None,
        max_udp: int = EDNS_UDP,
        forwarding: Forwarding | None = None,
        stats: QueryStats | None = None,
        external: ExternalZone | None = None,
    ) -> None:
        self.zone = zone
        self.external = external  # the external zones (LoadBalancer and externalIPs names)
        self.stats: QueryStats = stats if stats is not None else QueryStats()
        self.max_udp = max_udp
        self.forwarding = forwarding  # names outside our zones, fallthrough, ExternalName chase
        self._lone_classes: dict[int, list[int]] = {}  # traffic classes of lone-record answers
        self.errors = 0
        # answered to CH TXT id.server / hostname.bind (RFC 4892): which process answered
        self.identity = f"{socket.gethostname()}/{os.getpid()}"

    # ------------------------------------------------------------------ the hot path
    def fast(self, data: bytes, tcp: int, slot: int) -> bytes | None:
        """The answer to a plain query from the compiled zone, counted; None: `handle` it.

        Only compiled answers come out here; anything the zone must compute, forward or
        refuse goes the general way. The question's bytes are the client's own (0x20).
        """
        size = len(data)
        counts = data[4:12]
        if counts == NO_EDNS:
            end, j = size - 4, 0
        elif (
            counts == ONE_OPT
            and data[size - 11 : size - 8] == OPT_HEAD
            and data[size - 2 :] == EMPTY_RDATA
            and data[size - 5] == 0
        ):
            end, j = size - 15, 2 | (data[size - 4] >> 7)
        else:
            return None
        if end <= 12 or data[2] & 0xF8:
            return None  # a response, or an opcode other than QUERY
        zone = self.zone
        if zone is None:
            return None
        qend = end + 4
        p = zone.lookup(data[12:end].lower(), data[end:qend])
        if p is None:
            return None
        if type(p) is bytes:
            return self._lone(data, size, end, qend, j, tcp, slot, p)
        if not p.qtype and self.forwarding is not None and (p is zone.nxdomain[1] or p is zone.nxdomain[2]):  # type: ignore[union-attr]  # a Prepared: bytes returned above
            return None  # a reverse name we do not know: it falls through to the upstreams
        out = data[:2] + p.heads[(data[2] & 1) | ((data[3] >> 3) & 2) | (j << 1 & 4)] + data[12:qend] + p.body  # type: ignore[union-attr]  # a Prepared: bytes returned above
        if j:
            out += OPTS[j & 1]
        cut = False
        if len(out) > CLASSIC_UDP:
            limit = (
                MAX_TCP
                if tcp
                else max(CLASSIC_UDP, min((data[size - 8] << 8) | data[size - 7], self.max_udp))
                if j
                else CLASSIC_UDP
            )
            if len(out) > limit:
                out, cut = E.fit(data, qend, p, bool(j), bool(j & 1), limit), True  # type: ignore[arg-type]  # a Prepared
        # the traffic class: a name's own answer has one per query shape (its sizes follow
        # from the shape); the negative templates serve every name and type, so size and
        # type are in their key too
        classes = p.classes  # type: ignore[union-attr]  # a Prepared: bytes returned above
        if p.qtype:  # type: ignore[union-attr]  # as above
            if classes is None:
                classes = p.classes = [None] * 8  # type: ignore[union-attr]  # as above
            k = (j << 1) | tcp
            cls = classes[k]
        else:
            if classes is None:
                classes = p.classes = {}  # type: ignore[union-attr]  # as above
            k = (((size << 3) | (j << 1) | tcp) << 16) | (data[end] << 8) | data[end + 1]
            cls = classes.get(k)  # type: ignore[union-attr]  # a template's: a dict
        if cls is None or cut:
            cls = self._traffic_class(p, classes, k, data, end, tcp, j, out, cut)  # type: ignore[arg-type]  # a Prepared
        cls[slot] += 1
        return out

    def _lone(self, data: bytes, size: int, end: int, qend: int, j: int, tcp: int, slot: int, record: bytes) -> bytes:
        """The answer from a name's lone record (most endpoint and PTR names), counted."""
        out = data[:2] + ONE[(data[2] & 1) | ((data[3] >> 3) & 2) | (j << 1 & 4)] + data[12:qend] + record
        if j:
            out += OPTS[j & 1]
        if len(out) > CLASSIC_UDP:  # a long question and a long PTR target
            limit = (
                MAX_TCP
                if tcp
                else max(CLASSIC_UDP, min((data[size - 8] << 8) | data[size - 7], self.max_udp))
                if j
                else CLASSIC_UDP
            )
            if len(out) > limit:
                p = E.make(answer=[record], qtype=(record[2] << 8) | record[3])
                out = E.fit(data, qend, p, bool(j), bool(j & 1), limit)
                self._traffic_class(p, [None] * 8, 0, data, end, tcp, j, out, True)[slot] += 1
                return out
        classes = self._lone_classes
        k = (((size << 3) | (j << 1) | tcp) << 16) | (data[end] << 8) | data[end + 1]
        cls = classes.get(k)
        if cls is None:
            qtype = (data[end] << 8) | data[end + 1]
            cls = self.stats.traffic_class(
                (bool(tcp), True, "kubernetes", ".", qtype, Rcode.NOERROR, bool(j & 1), size, len(out))
            )
            if len(classes) < CLASS_LIMIT:
                classes[k] = cls
        cls[slot] += 1
        return out

    def _traffic_class(
        self,
        p: E.Prepared,
        classes: list | dict,
        k: int,
        data: bytes,
        end: int,
        tcp: int,
        j: int,
        out: bytes,
        cut: bool,
    ) -> list[int]:
        """First use of an answer shape: its counters, remembered on the answer (bounded)."""
        qtype = (data[end] << 8) | data[end + 1]
        cls = self.stats.traffic_class(
            (bool(tcp), True, "kubernetes", ".", qtype, p.rcode, bool(j & 1), len(data), len(out))
        )
        if not cut and (isinstance(classes, list) or len(classes) < CLASS_LIMIT):
            classes[k] = cls  # (a cut reply's size depends on the client's limit: not kept)
        return cls

    def cached(self, data: bytes, tcp: int, slot: int) -> bytes | None:
        """The forward cache's answer to a plain query, counted; None: `answer` it.

        The key is the parser's (`Query.key`) from the bytes; the reply is the entry's
        pieces for this second (`Entry.patch`) around the client's ID and question bytes
        (0x20 case). `server/udp.py` inlines this.
        """
        forwarding = self.forwarding
        if forwarding is None:
            return None
        size = len(data)
        counts = data[4:12]
        if counts == NO_EDNS:
            end, x = size - 4, 0
        elif (
            counts == ONE_OPT
            and data[size - 11 : size - 8] == OPT_HEAD
            and data[size - 2 :] == EMPTY_RDATA
            and data[size - 5] == 0
        ):
            end, x = size - 15, 2 | (data[size - 4] >> 7)
        else:
            return None
        if end <= 12 or data[2] & 0xF8:
            return None
        name = data[12:end].lower()
        cache = forwarding.caches.get(name)
        known = cache is not None
        if not known:
            cache = forwarding.cache_for(name)
            if cache is None:
                return None
        qend = end + 4
        e = cache.hot(name + data[end:qend] + KEY_BITS[((x & 1) << 1) | ((data[3] >> 4) & 1)])  # type: ignore[union-attr]  # known or found: not None
        if e is None:
            return None
        if not known:
            forwarding.remember(name, cache)  # type: ignore[arg-type]  # found: not None
        return self.hit_reply(data, size, end, x, tcp, slot, e)

    def hit_reply(self, data: bytes, size: int, end: int, x: int, tcp: int, slot: int, e: Entry) -> bytes:
        """The reply to plain query `data` from hot entry `e`, counted in its traffic class;
        over the client's UDP limit an empty TC reply (as `scan.render`)."""
        qend = end + 4
        out = data[:2] + e.heads[(data[2] & 1) | (x & 2)] + data[12:qend] + e.tail
        if x:
            out += CACHE_OPTS[x & 1]
        if len(out) > CLASSIC_UDP and not tcp:
            limit = max(CLASSIC_UDP, min((data[size - 8] << 8) | data[size - 7], self.max_udp)) if x else CLASSIC_UDP
            if len(out) > limit:
                h = e.heads[(data[2] & 1) | (x & 2)]
                out = data[:2] + bytes((h[0] | 0x02, h[1])) + TC_COUNTS[x >> 1] + data[12:qend]
                if x:
                    out += CACHE_OPTS[x & 1]
                self._cache_class(data, end, x, tcp, e, out)[slot] += 1
                return out
        classes = e.classes
        if classes is None:
            classes = e.classes = [None] * 8
        k = (x << 1) | tcp
        cls = classes[k]
        if cls is None:
            cls = classes[k] = self._cache_class(data, end, x, tcp, e, out)
        cls[slot] += 1
        return out

    def _cache_class(self, data: bytes, end: int, x: int, tcp: int, e: Entry, out: bytes) -> list[int]:
        return self.stats.traffic_class(
            (
                bool(tcp),
                True,
                "cache",
                ".",
                (data[end] << 8) | data[end + 1],
                out[3] & 0x0F,
                bool(x & 1),
                len(data),
                len(out),
            )
        )

    def name_too_long(self, data: bytes, tcp: bool, slot: int) -> bytes:
        """FORMERR, counted, for a query of the usual shape whose size alone says its name
        is past 255 bytes: no walk over its labels (a flood of ~2,000-label names would
        otherwise cost a bounded but needless walk each)."""
        reply = E.header_reply(data, Rcode.FORMERR)
        assert reply is not None  # the caller saw a whole header
        self.stats.observe(slot, tcp, data, reply, 0.0, "")
        return reply

    # ------------------------------------------------------------------ everything else
    def answer(self, data: bytes, tcp: bool, notify: Notify | None = None) -> Answer | None:
        """Answer one query's bytes; None means drop (no header, or not a query). With
        `notify`, a forward-cache miss's reply goes to it, once, and the Answer's reply
        is `LATER` (what `ResponseCache.miss` says)."""
        try:
            return self._answer(data, tcp, notify)
        except Exception:  # a bug must cost one answer, never the server
            self.errors += 1
            log.exception("internal error answering a query")
            reply = E.header_reply(data, Rcode.SERVFAIL)
            return None if reply is None else Answer(reply)

    def handle(self, data: bytes, tcp: bool) -> Reply:
        """`answer`'s reply alone (tools and tests that need no plugin label)."""
        a = self.answer(data, tcp)
        return None if a is None else a.reply  # type: ignore[return-value]  # no notify: never LATER

    def _answer(self, data: bytes, tcp: bool, notify: Notify | None) -> Answer | None:
        try:
            q = Q.parse(data)
        except (Q.ShortHeader, Q.NotQuery):
            return None  # too short to answer, or a response: answering it could loop
        except Q.NotImplementedOpcode:
            return _error(data, Rcode.NOTIMP)  # only QUERY is implemented
        except Q.FormError:
            return _error(data, Rcode.FORMERR)
        if q.edns and q.version > 0:  # RFC 6891 6.1.3: BADVERS, with an OPT of version 0
            return Answer(self._reply(data, q, E.make(rcode=Rcode.BADVERS, aa=False), None))
        limit = MAX_TCP if tcp else q.udp_limit(self.max_udp)
        if q.qtype == _T_OPT:  # not a question (RFC 6891)
            return Answer(self._reply(data, q, E.make(rcode=Rcode.FORMERR, aa=False), limit))
        if q.qclass == _C_CH and q.name in IDENTITY_NAMES and q.qtype in _IDENTITY_TYPES:
            rec = E.rr(E.OWNER, RRType.TXT, 0, E.txt(self.identity), RRClass.CH)
            return Answer(self._reply(data, q, E.make(answer=[rec]), limit), "chaos")
        # transfers: streamed by server/tcp.py to the clients in transfer_to; the rest, and UDP, REFUSED
        if q.qclass != _C_IN or q.qtype in _TRANSFERS:
            return Answer(self._reply(data, q, E.make(rcode=Rcode.REFUSED, aa=False), limit))
        zone = self.zone
        apex = zone.apex_of(q.name) if zone is not None else None
        forwarding = self.forwarding
        if apex is None:
            external = self.external
            if external is not None and external.apex_of(q.name) is not None:
                return Answer(self._reply(data, q, external.answer(q.name, q.qtype), limit), "k8s_external")
            if forwarding is not None:
                # a cache Hit, else bytes, LATER, a Future or a coroutine
                forwarded = forwarding.handle(q, data, tcp, notify)
                if forwarded is LATER:
                    return Answer(LATER, "forward")
                if type(forwarded) is Hit:
                    return Answer(forwarded.reply, "cache", forwarded.entry)
                if forwarded is not None:  # bytes: served stale by the cache, or its error
                    return Answer(forwarded, "cache" if isinstance(forwarded, bytes) else "forward")  # type: ignore[arg-type]  # not LATER, not a Hit: bytes or an awaitable
            return Answer(self._reply(data, q, E.make(rcode=Rcode.REFUSED, aa=False), limit))
        assert zone is not None
        p = zone.answer(q.name, q.qtype)
        if forwarding is not None:
            follow = forwarding.follow(q, p, data, limit, apex)  # fallthrough PTR, ExternalName
            if follow is not None:
                return Answer(follow, "forward")
        return Answer(self._reply(data, q, p, limit), "kubernetes")

    @staticmethod
    def _reply(data: bytes, q: Q.Query, p: E.Prepared, limit: int | None) -> bytes:
        return E.assemble(data, q.qend, p, q.edns, q.do, MAX_TCP if limit is None else limit)


def _error(data: bytes, rcode: Rcode) -> Answer | None:
    reply = E.header_reply(data, rcode)
    return None if reply is None else Answer(reply)
