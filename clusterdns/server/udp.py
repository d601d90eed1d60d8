"""DNS over UDP: one datagram in, at most one datagram out."""

from __future__ import annotations

import asyncio
import logging
from time import monotonic, perf_counter

from clusterdns.obs.logs import QueryLog
from clusterdns.server.handler import Handler
from clusterdns.server.table import EMPTY_RDATA, NO_EDNS, ONE_OPT, OPT_HEAD, key_of, question_bounds

log = logging.getLogger("clusterdns")


class UDPProtocol(asyncio.DatagramProtocol):
    """One listening socket. `slot` is its index in the query counters (`obs.counters`).

    The query log and draining replace `datagram_received` on the instance (the event
    loop looks the method up per datagram), so when both are off the hot path carries
    no check for them.
    """

    def __init__(self, handler: Handler, slot: int = 0, query_log: QueryLog | None = None) -> None:
        self.handler = handler
        self.answers = handler.table.udp  # the dict itself: invalidation mutates it in place
        self.replays = handler.table.replay_udp
        self.stats = handler.table.stats
        self.slot = slot
        self.transport: asyncio.DatagramTransport | None = None
        self.pending = 0  # answers still being worked on (forwarded), for draining
        self.query_log: QueryLog | None = None
        self.set_query_log(query_log)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        # Hot path, inlined from AnswerTable.lookup: about 1 us of Python per answer.
        n = len(data)
        counts = data[4:12]
        if counts == NO_EDNS:
            end = n - 4
        elif counts == ONE_OPT and data[n - 11:n - 8] == OPT_HEAD and data[n - 2:] == EMPTY_RDATA:
            end = n - 15
        else:
            end = 0
        if end > 12:
            key = data[2:12] + data[12:end].lower() + data[end:]
            entry = self.answers.get(key)
            if entry is not None:
                self.transport.sendto(data[:2] + entry[0] + data[12:end] + entry[1], addr)  # type: ignore[union-attr]
                entry[2][self.slot] += 1
                return
            hit = self.replays.get(key)  # a forward-cache hit rendered less than a second ago
            if hit is not None and hit[3] > monotonic():
                self.transport.sendto(data[:2] + hit[0] + data[12:end] + hit[1], addr)  # type: ignore[union-attr]
                hit[2][self.slot] += 1
                hit[4].hits += 1
                hit[5].hits += 1
                return
        self._slow(data, addr, perf_counter())

    def _slow(self, data: bytes, addr: tuple, started: float) -> None:
        handler = self.handler
        reply = handler.handle(data, False)
        if reply is None:
            self.stats.drop(self.slot, False, "short" if len(data) < 12 else "response")
            return
        if isinstance(reply, bytes):
            self.transport.sendto(reply, addr)  # type: ignore[union-attr]
            self._done(data, reply, addr, started, handler.plugin)
        else:
            self.pending += 1
            asyncio.ensure_future(self._send_later(reply, data, addr, started, handler.plugin))

    async def _send_later(self, pending, data: bytes, addr: tuple, started: float, plugin: str) -> None:  # noqa: ANN001
        try:
            reply = await pending
        finally:
            self.pending -= 1
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)
            self._done(data, reply, addr, started, plugin)

    def _done(self, data: bytes, reply: bytes, addr: tuple, started: float, plugin: str) -> None:
        took = perf_counter() - started
        self.stats.observe(self.slot, False, data, reply, took, plugin)
        if self.query_log is not None and self.query_log.wanted():
            self.query_log.write(data, reply, addr, "udp", took)

    # -- query log and draining: swapped in on the instance --------------------------------

    def set_query_log(self, query_log: QueryLog | None) -> None:
        self.query_log = query_log
        if query_log is not None:
            self.datagram_received = self._logged  # type: ignore[method-assign]
        else:
            self.__dict__.pop("datagram_received", None)

    def _logged(self, data: bytes, addr: tuple) -> None:
        """The hot path plus a query-log line (sampled)."""
        started = perf_counter()
        end = question_bounds(data)
        entry = self.answers.get(key_of(data, end)) if end > 12 else None
        if entry is None:
            self._slow(data, addr, started)
            return
        reply = data[:2] + entry[0] + data[12:end] + entry[1]
        self.transport.sendto(reply, addr)  # type: ignore[union-attr]
        entry[2][self.slot] += 1
        if self.query_log is not None and self.query_log.wanted():
            self.query_log.write(data, reply, addr, "udp", perf_counter() - started)

    def stop_reading(self) -> None:
        """Listener closed for new queries: drop them (answers in flight still go out).

        uvloop has no pause_reading() for UDP, and closing the socket would lose the
        answers still pending, so new datagrams are dropped until `close()`.
        """
        self.datagram_received = self._closed  # type: ignore[method-assign]

    def _closed(self, data: bytes, addr: tuple) -> None:
        self.stats.drop(self.slot, False, "shutting_down")

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: nothing to do
        log.debug("udp error: %s", exc)
