"""DNS over TCP (RFC 7766): 2-byte length framing, many and pipelined queries per
connection, answers sent as they are ready, an idle timeout and a connection cap.

A connection is idle when it makes no progress: no complete query read, no answer
finished, for `idle_timeout` seconds; bytes of an unfinished message do not count, so a
client trickling one byte at a time cannot keep a slot. Reading stops while the client
does not take its answers (the write buffer is over its high-water mark) or has too many
forwarded answers in flight; a client that takes nothing for `idle_timeout` while reading
is stopped is cut off (`abort`: `close` would wait for the buffer to drain).

Zone transfers (AXFR, IXFR answered in full) from an allowed client are streamed here,
message by message while the client takes them, a few per turn of the event loop, so a
10,000-service zone neither sits in one buffer nor stalls the other connections; the
connection reads no further queries until the transfer is out. Everyone else's transfer
questions go to the handler, which REFUSES them (and every transfer over UDP)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from time import monotonic, perf_counter

from clusterdns.cluster.transfer import NOTAUTH, AllowList, Transferable, axfr, transfer_apex
from clusterdns.obs.logs import QueryLog
from clusterdns.server.handler import Handler
from clusterdns.wire import encode as E, question as Q
from clusterdns.wire.constants import MAX_TCP, Rcode, RRClass, RRType

log = logging.getLogger("clusterdns")


_TRANSFERS = frozenset((int(RRType.AXFR), int(RRType.IXFR)))
TRANSFER_BURST = 4  # messages written per turn of the event loop


@dataclass
class Transfers:
    """Zone transfers over TCP: who may (`settings()` gives the allow-list and the cap in
    force, so a reload applies them), how many run, and how each ended (a metric)."""

    settings: Callable[[], tuple[Sequence[str], int]]  # (transfer_to, max_transfers)
    active: int = 0
    results: dict[str, int] = field(default_factory=dict)
    _allow: tuple[tuple[str, ...], AllowList] | None = None
    #: success, refused (client not listed), busy (over the cap), notauth (not a zone we
    #: serve), aborted (the connection went or the server stopped first)
    RESULTS = ("success", "refused", "busy", "notauth", "aborted")

    def policy(self) -> tuple[AllowList, int]:
        entries, cap = self.settings()
        key = tuple(entries)
        if self._allow is None or self._allow[0] != key:
            self._allow = (key, AllowList(key))
        return self._allow[1], cap

    def count(self, result: str) -> None:
        self.results[result] = self.results.get(result, 0) + 1


@dataclass
class _Streaming:
    """The transfer one connection is sending."""

    messages: Iterator[bytes]
    query: bytes
    started: float
    sent: int = 0


@dataclass
class TCPLimits:
    idle_timeout: float = 10.0  # RFC 7766 6.2.3: servers may close idle connections
    max_connections: int = 1024  # beyond it new connections are closed at once
    open: set = field(default_factory=set)  # live protocols, shared by all listeners
    refused: int = 0  # connections closed at once because of the cap (a metric)
    max_pending: int = 256  # forwarded answers in flight per connection before reading stops
    max_buffered: int = 2 + 0xFFFF + 256 * 1024  # unanswered bytes read: a whole message and a read's worth
    transfers: Transfers | None = None  # None: every transfer question is the handler's (REFUSED)


class TCPProtocol(asyncio.Protocol):
    """One connection. `slot` is its listener's index in the query counters; the query
    log replaces `_answer` on the instance, so without it the hot path has no check."""

    def __init__(self, handler: Handler, limits: TCPLimits, slot: int = 0, query_log: QueryLog | None = None) -> None:
        self.handler = handler
        self.stats = handler.stats
        self.limits = limits
        self.slot = slot
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple = ("", 0)
        self._idle: asyncio.TimerHandle | None = None
        self._pending = 0
        self._closing = False  # draining: close once the pending answers are written
        self._active = monotonic()  # the last progress: a query read whole, an answer done
        self._paused = False  # the client is not taking its answers (pause_writing)
        self._paused_at = 0.0
        self._hold = False  # take no queries now: paused, draining, or too many in flight
        self._reading = True  # whether the transport reads (our own pause_reading calls)
        self._unsent = 0  # the write buffer's size when the idle timer last looked
        self._stream: _Streaming | None = None  # the zone transfer being sent
        self._pump_at: asyncio.Handle | None = None  # its next burst, scheduled
        self.query_log: QueryLog | None = None
        self.set_query_log(query_log)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername") or ("", 0)
        if len(self.limits.open) >= self.limits.max_connections:
            self.limits.refused += 1
            log.warning("tcp connection cap (%d) reached; closing a new connection", self.limits.max_connections)
            transport.close()
            return
        self.limits.open.add(self)
        self._active = monotonic()
        self._arm(self.limits.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.limits.open.discard(self)
        if self._stream is not None:
            self._end_transfer("aborted")
        if self._idle is not None:
            self._idle.cancel()
        self.transport = None

    def _arm(self, delay: float) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(max(delay, 0.01), self._timeout)

    def _timeout(self) -> None:
        """One timer per connection, re-armed for what is left of its deadline: progress
        only moves a timestamp, so the hot path never touches the timer."""
        self._idle = None
        transport = self.transport
        if transport is None:
            return
        idle = self.limits.idle_timeout
        now = monotonic()
        unsent, self._unsent = self._unsent, transport.get_write_buffer_size()
        if self._paused:  # the client takes no answers: no slack for pending ones
            left = self._paused_at + idle - now
        elif self._pending or self._unsent < unsent:  # answers coming, or being taken
            left = idle
        else:
            left = self._active + idle - now
        if left > 0:
            self._arm(left)
        elif self._paused or self._unsent:
            transport.abort()  # close() would wait for a client that does not read
        else:
            transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self._hold:
            if len(buf) > self.limits.max_buffered and self.transport is not None:
                self.transport.abort()  # still sending while asked to wait: over the cap
            return
        self._consume()

    def _consume(self) -> None:
        """Answer the whole messages in the buffer, until reading must stop."""
        buf = self.buf
        done = False
        while len(buf) >= 2 and not self._hold:
            size = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + size:
                break
            msg = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            done = True
            self._answer(msg)
        if done:
            self._active = monotonic()

    # -- backpressure ------------------------------------------------------------------

    def pause_writing(self) -> None:
        """The write buffer is over its high-water mark: take no more queries."""
        self._paused = True
        self._paused_at = monotonic()
        self._update()

    def resume_writing(self) -> None:
        """The client took its answers: that is progress; answer what was read, read on."""
        self._paused = False
        self._active = monotonic()
        if self._stream is not None and self._pump_at is None:
            self._pump()
        self._update()

    def _update(self) -> None:
        """Match reading to the state: stop while held, answer the buffer and read again
        once free."""
        self._hold = (
            self._paused or self._closing or self._pending >= self.limits.max_pending or self._stream is not None
        )
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._hold:
            if self._reading:
                self._reading = False
                transport.pause_reading()
            return
        if self.buf:
            self._consume()
            if self._hold:
                return
        if not self._reading:
            self._reading = True
            transport.resume_reading()

    def _answer(self, msg: bytes) -> None:
        handler = self.handler
        out = handler.fast(msg, 1, self.slot)
        if out is None:
            out = handler.cached(msg, 1, self.slot)  # a forward-cache hit
        if out is not None:
            self._write(out)
            return
        self._slow(msg, perf_counter())

    def _slow(self, msg: bytes, started: float) -> None:
        if self.limits.transfers is not None and self._transfer(msg, started, self.limits.transfers):
            return
        answer = self.handler.answer(msg, True)
        if answer is None:
            self.stats.drop(self.slot, True, "short" if len(msg) < 12 else "response")
            return
        reply = answer.reply
        if isinstance(reply, bytes):
            self._write(reply)
            self._done(msg, reply, started, answer.plugin)
        else:
            self._pending += 1
            if self._pending >= self.limits.max_pending:
                self._update()
            fut = asyncio.ensure_future(reply)  # type: ignore[arg-type]  # no notify: never LATER. A Future stays itself; a coroutine becomes a Task
            fut.add_done_callback(partial(self._ready, msg, started, answer.plugin))

    def _ready(self, msg: bytes, started: float, plugin: str, fut: asyncio.Future) -> None:
        self._pending -= 1
        self._active = monotonic()
        reply = None
        if not fut.cancelled():
            exc = fut.exception()
            if exc is not None:
                log.debug("tcp answer failed: %r", exc)
            else:
                reply = fut.result()
        if reply is not None:
            self._write(reply)
            self._done(msg, reply, started, plugin)
        if self._closing and not self._pending and self.transport is not None:
            self.transport.close()  # draining: the last answer is out (close() flushes it)
        elif self._hold and not self._paused and self._pending < self.limits.max_pending:
            self._update()  # room for forwarded questions again

    def _done(self, msg: bytes, reply: bytes, started: float, plugin: str) -> None:
        took = perf_counter() - started
        self.stats.observe(self.slot, True, msg, reply, took, plugin)
        if self.query_log is not None and self.query_log.wanted():
            self.query_log.write(msg, reply, self.peer, "tcp", took)

    # -- zone transfers ----------------------------------------------------------------

    def _transfer(self, msg: bytes, started: float, transfers: Transfers) -> bool:
        """Start streaming `msg`'s transfer, or answer why not; False: not a transfer this
        connection may have, the handler answers it (REFUSED for transfers)."""
        try:
            q = Q.parse(msg)
        except Q.Malformed:
            return False
        if q.qtype not in _TRANSFERS or q.qclass != RRClass.IN:
            return False
        allow, cap = transfers.policy()
        zones: list[Transferable] = [z for z in (self.handler.zone, self.handler.external) if z is not None]
        if not zones or not allow.allows(str(self.peer[0])):
            transfers.count("refused")
            log.debug("zone transfer of %s refused: %s is not in transfer_to", q.text, self.peer[0])
            return False
        # the cluster zone and its reverse zones, or one of the external zones (k8s_external)
        zone, apex = next(((z, a) for z in zones if (a := transfer_apex(z, q.name)) is not None), (zones[0], None))
        if apex is None or transfers.active >= cap:
            result = "notauth" if apex is None else "busy"
            transfers.count(result)
            if apex is not None:
                log.warning("zone transfer to %s refused: %d transfers running (max_transfers)", self.peer[0], cap)
            p = E.make(rcode=NOTAUTH if apex is None else Rcode.REFUSED, aa=False)
            reply = E.assemble(msg, q.qend, p, q.edns, q.do, MAX_TCP)
            self._write(reply)
            self._done(msg, reply, started, "transfer")
            return True
        transfers.active += 1
        self._stream = _Streaming(axfr(zone, q, apex), msg, started)
        self._pending += 1  # a drain waits for it, the idle timer counts it as work
        self._update()
        self._pump()
        return True

    def _pump(self) -> None:
        """Write the transfer's next messages while the client takes them: a few per turn
        of the loop; `resume_writing` starts it again after the client caught up."""
        self._pump_at = None
        st = self._stream
        if st is None or self.transport is None or self.transport.is_closing():
            return
        for _ in range(TRANSFER_BURST):
            if self._paused:
                return
            try:
                message = next(st.messages, None)
            except Exception:  # a bug must cost this transfer, never the server
                log.exception("internal error in a zone transfer")
                self._end_transfer("aborted")
                self.transport.close()
                return
            if message is None:
                self._end_transfer("success")
                return
            self._write(message)
            if not st.sent:
                self._done(st.query, message, st.started, "transfer")
            st.sent += 1
        self._active = monotonic()
        self._pump_at = asyncio.get_running_loop().call_soon(self._pump)

    def _end_transfer(self, result: str) -> None:
        st, self._stream = self._stream, None
        if st is None:
            return
        if self._pump_at is not None:
            self._pump_at.cancel()
            self._pump_at = None
        transfers = self.limits.transfers
        if transfers is not None:
            transfers.active -= 1
            transfers.count(result)
        self._pending -= 1
        self._active = monotonic()
        if self.transport is None:
            return
        if self._closing and not self._pending:
            self.transport.close()  # draining: the transfer was the last answer
        else:
            self._update()

    # -- query log and draining --------------------------------------------------------

    @property
    def pending(self) -> int:
        """Answers still being worked on for this connection (forwarded questions)."""
        return self._pending

    def set_query_log(self, query_log: QueryLog | None) -> None:
        self.query_log = query_log
        if query_log is not None:
            self._answer = self._logged  # type: ignore[method-assign]
        else:
            self.__dict__.pop("_answer", None)

    def _logged(self, msg: bytes) -> None:
        started = perf_counter()
        reply = self.handler.fast(msg, 1, self.slot)
        if reply is None:
            reply = self.handler.cached(msg, 1, self.slot)
        if reply is None:
            self._slow(msg, started)
            return
        self._write(reply)
        if self.query_log is not None and self.query_log.wanted():
            self.query_log.write(msg, reply, self.peer, "tcp", perf_counter() - started)

    def stop_reading(self) -> None:
        """Draining: read no more queries; close once the pending answers are written."""
        self._closing = True
        self._hold = True
        if self.transport is None:
            return
        if self._pending:
            if self._reading:
                self._reading = False
                self.transport.pause_reading()
        else:
            self.transport.close()

    def _write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(len(reply).to_bytes(2, "big") + reply)
