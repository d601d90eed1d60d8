"""The slow path: every query the answer table does not know goes through here.

It parses with dnslib, applies the protocol rules (RFC 1035, 6891, 7766, 8482), asks
the zone, renders, and stores cacheable answers in the table for the hot path. It never
raises: malformed input gets FORMERR when a header is there, else nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable

from clusterdns.server.table import AnswerTable
from clusterdns.wire import message
from clusterdns.wire import records as R
from clusterdns.wire.message import FormError, Query
from clusterdns.wire.records import Answer
from clusterdns.zones.router import Router
from clusterdns.zones.upstreams import Forwarding

log = logging.getLogger("clusterdns")
IDENTITY_NAMES = ("id.server", "hostname.bind")

Reply = bytes | None | Awaitable[bytes | None]


class Handler:
    def __init__(self, router: Router, table: AnswerTable, max_udp: int = message.DEFAULT_EDNS_UDP,
                 forwarding: Forwarding | None = None) -> None:
        self.router = router
        self.table = table
        self.max_udp = max_udp
        self.forwarding = forwarding  # names outside our zones, fallthrough, ExternalName chase
        self.errors = 0
        self.plugin = ""  # who wrote the last answer (CoreDNS's `plugin` label): read right after handle()
        # answered to CH TXT id.server / hostname.bind (RFC 4892): which process answered
        self.identity = f"{socket.gethostname()}/{os.getpid()}"

    def handle(self, data: bytes, tcp: bool) -> Reply:
        """Answer one query's bytes; None means drop (no header, or not a query)."""
        self.plugin = ""
        if len(data) < message.HEADER or data[2] & 0x80:
            return None  # too short to answer, or a response: answering it could loop
        try:
            return self._handle(data, tcp)
        except Exception:  # a bug must cost one answer, never the server
            self.errors += 1
            log.exception("internal error answering a query")
            return message.header_reply(data, R.SERVFAIL)

    def _handle(self, data: bytes, tcp: bool) -> Reply:
        if (data[2] >> 3) & 0xF != 0:
            return message.header_reply(data, R.NOTIMP)  # only QUERY is implemented
        if self.forwarding is not None:
            forwarded = self.forwarding.handle(data, tcp)  # cache hit, or a coroutine
            if forwarded is not None:
                self.plugin = "cache" if isinstance(forwarded, bytes) else "forward"
                if isinstance(forwarded, bytes):
                    hit = self.forwarding.take_hit()
                    if hit is not None:
                        self.table.store_replay(data, forwarded, hit, tcp)
                return forwarded
        try:
            q = message.parse(data)
        except FormError:
            return message.header_reply(data, R.FORMERR)
        if q.edns is not None and q.edns.version > 0:
            return message.badvers(q)
        ans = self._answer(q)
        limit = None if tcp else message.udp_limit(q, self.max_udp)
        if self.forwarding is not None:
            follow = self.forwarding.follow(q, ans, data, limit)  # fallthrough PTR, ExternalName
            if follow is not None:
                self.plugin = "forward"
                return follow
        reply = message.render(q, ans, limit)
        if ans.cacheable and q.plain_question:
            self.table.store(data, q.question_end, reply, ans.deps, tcp)
        return reply

    def _answer(self, q: Query) -> Answer:
        if q.qtype == R.OPT:
            return Answer(rcode=R.FORMERR, aa=False)  # OPT is not a question (RFC 6891)
        if q.qclass == R.CH and q.name in IDENTITY_NAMES and q.qtype in (R.TXT, R.ANY):
            self.plugin = "chaos"
            return Answer(answer=[R.Record(q.name, R.TXT, 0, self.identity, R.CH)], cacheable=False)
        if q.qclass != R.IN or q.qtype in (R.AXFR, R.IXFR):
            return Answer(rcode=R.REFUSED, aa=False)  # zone transfers are not offered
        zone = self.router.zone_for(q.name)
        if zone is None:
            return Answer(rcode=R.REFUSED, aa=False)
        self.plugin = "kubernetes"
        return zone.answer(q.name, q.qtype)
