"""DNS over TCP (RFC 7766): 2-byte length framing, many and pipelined queries per
connection, answers sent as they are ready, an idle timeout and a connection cap.

A connection is idle when it makes no progress: no complete query read, no answer
finished, for `idle_timeout` seconds; bytes of an unfinished message do not count, so a
client trickling one byte at a time cannot keep a slot. Reading stops while the client
does not take its answers (the write buffer is over its high-water mark) or has too many
forwarded answers in flight; a client that takes nothing for `idle_timeout` while reading
is stopped is cut off (`abort`: `close` would wait for the buffer to drain)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from functools import partial
from time import monotonic, perf_counter

from clusterdns.obs.logs import QueryLog
from clusterdns.server.handler import Handler

log = logging.getLogger("clusterdns")


@dataclass
class TCPLimits:
    idle_timeout: float = 10.0  # RFC 7766 6.2.3: servers may close idle connections
    max_connections: int = 1024  # beyond it new connections are closed at once
    open: set = field(default_factory=set)  # live protocols, shared by all listeners
    refused: int = 0  # connections closed at once because of the cap (a metric)
    max_pending: int = 256  # forwarded answers in flight per connection before reading stops
    max_buffered: int = 2 + 0xFFFF + 256 * 1024  # unanswered bytes read: a whole message and a read's worth


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
        self._update()

    def _update(self) -> None:
        """Match reading to the state: stop while held, answer the buffer and read again
        once free."""
        self._hold = self._paused or self._closing or self._pending >= self.limits.max_pending
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
