"""DNS over UDP: datagrams read and answered in batches, at most one answer per query.

The listener registers its socket with the event loop as a reader; each wake-up takes
up to `batchio.BATCH` datagrams per system call, answers what the compiled zone knows
and forward-cache hits (`Handler.fast`, `Handler.cached`, inlined) in a tight loop, and
sends all those answers with one more call (`clusterdns/net/batchio.py` says why).
Anything else goes through the handler (`server/handler.py`); an answer that has to
wait (forwarding) is sent on its own when it is ready.

With response-rate limiting on (`server/rrl.py`) another reader takes the hot path's
place, so `_read` pays nothing for it when it is off; every UDP answer, forwarded ones
included, is then accounted to its client's prefix and sent, slipped (TC=1) or dropped.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from functools import partial
from time import perf_counter
from typing import Any

from clusterdns.cache.cache import LATER
from clusterdns.net import batchio
from clusterdns.net.batchio import BATCH, RECV_SIZE, SEND_SIZE
from clusterdns.obs.logs import QueryLog
from clusterdns.server.handler import (
    CACHE_OPTS,
    EMPTY_RDATA,
    KEY_BITS,
    NO_EDNS,
    ONE_OPT,
    OPT_HEAD,
    Handler,
)
from clusterdns.server.rrl import ANSWER, RRL, SLIP, truncated
from clusterdns.wire.constants import CLASSIC_UDP, MAX_NAME
from clusterdns.wire.encode import OPTS

log = logging.getLogger("clusterdns")

#: past this, a one-question query's name is longer than 255 bytes (header 12 + name)
LONGEST_END = 12 + MAX_NAME
#: the lane's marker for such a query (answered by Handler.name_too_long): an object of its
#: own, so no reply bytes can ever be taken for it
TOO_LONG: Any = object()
#: the listening socket's receive buffer: a burst of queries waits here instead of being
#: dropped by the kernel (the default ~208 KB holds ~50 junk datagrams of 4 KB; this, at
#: ~9 us a query, is at most ~15 ms of queue)
LISTEN_RCVBUF = 1 << 20
ROUNDS = 8  # batches per wake-up before the loop gets a turn (TCP, timers, the watch)


class UDPListener:
    """One listening socket. `slot` is its index in the query counters (`obs.counters`).

    Four readers, swapped on the event loop: `_read` (the hot path), `_read_limited`
    (response-rate limiting is on), `_read_logged` (the query log is on; it limits too
    when `rrl` is set) and `_read_closed` (draining: queries are dropped and counted
    while the answers still pending go out).
    """

    def __init__(
        self,
        handler: Handler,
        sock: socket.socket,
        slot: int = 0,
        query_log: QueryLog | None = None,
        rrl: RRL | None = None,
    ) -> None:
        self.handler = handler
        self.stats = handler.stats
        self.slot = slot
        self.sock = sock
        sock.setblocking(False)
        self.io = batchio.for_socket(sock)
        self.loop = asyncio.get_running_loop()
        self.pending = 0  # answers still being worked on (forwarded), for draining
        self.closed = False
        self._outbox: list[tuple[bytes, Any]] = []  # forwarded answers ready, sent together
        self.query_log: QueryLog | None = None
        self.rrl = rrl
        self._reader: Callable[[], None] = self._read
        self.loop.add_reader(sock.fileno(), self._reader)
        self.set_query_log(query_log)

    def sockname(self) -> tuple:
        return self.sock.getsockname()

    def _swap(self, reader: Callable[[], None]) -> None:
        if not self.closed and reader != self._reader:
            self._reader = reader
            self.loop.add_reader(self.sock.fileno(), reader)  # replaces the old callback

    def _read(self) -> None:
        # The hot path: the compiled zone (`Handler.fast`), then forward-cache hits
        # (`Handler.cached`: the parser's key from the bytes, one lookup, a byte patch).
        io = self.io
        rbuf, lens, len_at = io.rbuf, io.lens, io.LEN_AT
        sbuf, slens, snames, name_at, naddr = io.sbuf, io.slens, io.snames, io.NAME_AT, io.name_addrs
        handler = self.handler
        fast, slot = handler.fast, self.slot
        too_long = TOO_LONG
        zone = handler.zone
        lookup = zone.lookup if zone is not None else None
        forwarding = handler.forwarding
        caches = forwarding.caches if forwarding is not None else None
        # reverse names the zone does not know fall through to the forwarder: never inline
        falls = (zone.nxdomain[1], zone.nxdomain[2]) if zone is not None and forwarding else ()
        for _ in range(ROUNDS):
            try:
                n = io.recv()
            except OSError as exc:
                log.debug("udp receive error: %s", exc)
                return
            if not n:
                return
            j = 0
            for i in range(n):
                off = i * RECV_SIZE
                data = bytes(rbuf[off : off + lens[len_at[i]]])
                # the common case inlined from Handler.fast: a compiled answer or negative
                # template whose counters exist (the first answer of each shape, lone records,
                # and answers to cut go through fast)
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
                    end = 0
                out = p = None
                if end > LONGEST_END and not data[2] & 0xF8:
                    out = too_long  # a question name past 255 bytes, told by the size alone
                elif end > 12 and not data[2] & 0xF8 and lookup is not None:
                    p = lookup(name := data[12:end].lower(), data[end : end + 4])
                    if p is not None and type(p) is not bytes and p.classes is not None and p not in falls:  # type: ignore[union-attr]  # not bytes (checked first)
                        if p.qtype:  # type: ignore[union-attr]  # as above
                            cls = p.classes[x << 1]  # type: ignore[union-attr]  # as above
                        else:
                            cls = p.classes.get((((size << 3) | (x << 1)) << 16) | (data[end] << 8) | data[end + 1])  # type: ignore[union-attr]  # as above; a template's classes: a dict
                        if cls is not None:
                            out = (
                                data[:2]
                                + p.heads[(data[2] & 1) | ((data[3] >> 3) & 2) | (x << 1 & 4)]  # type: ignore[union-attr]  # as above
                                + data[12 : end + 4]
                                + p.body  # type: ignore[union-attr]  # as above
                            )
                            if x:
                                out += OPTS[x & 1]
                            if len(out) > CLASSIC_UDP:
                                out = None  # to be cut to the client's size: fast does it
                            else:
                                cls[slot] += 1
                if out is None and p is not None and p not in falls:
                    out = fast(data, 0, slot)  # lone records, a class's first answer, answers to cut
                if out is None and caches is not None and end > 12 and not data[2] & 0xF8:
                    # the common case inlined from Handler.cached: a forward-cache hit
                    if lookup is None:
                        name = data[12:end].lower()
                    cache = caches.get(name)
                    known = cache is not None
                    if not known:
                        cache = forwarding.cache_for(name)  # type: ignore[union-attr]  # caches set: so is forwarding
                    if cache is not None:
                        e = cache.hot(name + data[end : end + 4] + KEY_BITS[((x & 1) << 1) | ((data[3] >> 4) & 1)])
                        if e is not None:
                            if not known:
                                forwarding.remember(name, cache)  # type: ignore[union-attr]  # as above
                            cls = e.classes[x << 1] if e.classes is not None else None
                            out = data[:2] + e.heads[(data[2] & 1) | (x & 2)] + data[12 : end + 4] + e.tail
                            if x:
                                out += CACHE_OPTS[x & 1]
                            if cls is None or len(out) > CLASSIC_UDP:
                                out = handler.hit_reply(data, size, end, x, 0, slot, e)  # first of its class, or cut
                            else:
                                cls[slot] += 1
                if out is None:
                    out = self._slow(data, i, perf_counter())
                    if out is None:
                        continue
                elif out is too_long:
                    if self.io.truncated(i):
                        self.stats.drop(slot, False, "too_long")
                        continue
                    out = handler.name_too_long(data, False, slot)
                size = len(out)
                if size > SEND_SIZE:
                    self._send(out, io.name(i))
                    continue
                so = j * SEND_SIZE
                sbuf[so : so + size] = out
                slens[2 * j + 1] = size
                snames[name_at[j]] = naddr[i]
                j += 1
            if j:
                io.send(j)
            if n < BATCH:
                return

    def _slow(self, data: bytes, i: int, started: float) -> bytes | None:
        """The handler's answer to datagram `i`, if it has one now (else it is sent later:
        a forward-cache miss's reply is handed to `_ready` by the cache, without a Future;
        any other awaitable's goes through `_settled`)."""
        handler = self.handler
        if self.io.truncated(i):
            self.stats.drop(self.slot, False, "too_long")
            return None
        source = self.io.source(i)
        # "forward": the label `Handler` gives a forwarded answer
        answer = handler.answer(data, False, partial(self._ready, data, source, started, "forward"))
        if answer is None:
            self.stats.drop(self.slot, False, "short" if len(data) < 12 else "response")
            return None
        reply = answer.reply
        if isinstance(reply, bytes):
            self._done(data, reply, source, started, answer.plugin)
            return reply
        self.pending += 1
        if reply is LATER:
            return None  # the cache calls `_ready`
        fut = asyncio.ensure_future(reply)  # type: ignore[arg-type]  # not LATER (returned above). A Future stays itself; a coroutine becomes a Task
        fut.add_done_callback(partial(self._settled, data, source, started, answer.plugin))
        return None

    def _settled(self, data: bytes, source: Any, started: float, plugin: str, fut: asyncio.Future) -> None:
        """An awaited answer is done: its reply to `_ready` (a failure is dropped)."""
        if fut.cancelled():
            self.pending -= 1
            return
        exc = fut.exception()
        if exc is not None:
            self.pending -= 1
            log.debug("udp answer failed: %r", exc)
            return
        self._ready(data, source, started, plugin, fut.result())

    def _ready(self, data: bytes, source: Any, started: float, plugin: str, reply: bytes | None) -> None:
        """A forwarded answer is ready: queued, and sent with the others ready in this turn
        of the loop (answers from one upstream batch land together)."""
        self.pending -= 1
        if reply is None or self.closed:
            return
        if self.rrl is not None:
            self._done(data, reply, source, started, plugin)  # computed and counted, as the hot path's are
            reply = self.rrl.allow(source, reply, self.slot)
            if reply is None:
                return
            if len(reply) > SEND_SIZE:
                self._send(reply, self.io.address(source))
            else:
                if not self._outbox:
                    self.loop.call_soon(self._flush)
                self._outbox.append((reply, source))
            return
        if len(reply) > SEND_SIZE:
            self._send(reply, self.io.address(source))
        else:
            if not self._outbox:
                self.loop.call_soon(self._flush)
            self._outbox.append((reply, source))
        self._done(data, reply, source, started, plugin)

    def _flush(self) -> None:
        out, self._outbox = self._outbox, []
        if out and not self.closed:
            self.io.send_each(out)

    def _send(self, reply: bytes, addr: tuple) -> None:
        try:
            self.sock.sendto(reply, addr)
        except OSError as exc:  # the client's address went away: this answer only
            log.debug("udp send to %s failed: %s", addr, exc)

    def _done(self, data: bytes, reply: bytes, source: Any, started: float, plugin: str) -> None:
        took = perf_counter() - started
        self.stats.observe(self.slot, False, data, reply, took, plugin)
        if self.query_log is not None and self.query_log.wanted():
            self.query_log.write(data, reply, self.io.address(source), "udp", took)

    # -- query log and draining ---------------------------------------------------------------

    def _datagrams(self):
        io = self.io
        for _ in range(ROUNDS):
            try:
                n = io.recv()
            except OSError as exc:
                log.debug("udp receive error: %s", exc)
                return
            for i in range(n):
                off = i * RECV_SIZE
                yield i, bytes(io.rbuf[off : off + io.lens[io.LEN_AT[i]]])
            if n < BATCH:
                return

    def set_query_log(self, query_log: QueryLog | None) -> None:
        self.query_log = query_log
        self._pick()

    def set_rrl(self, rrl: RRL | None) -> None:
        """Turn response-rate limiting on (a limiter) or off (None)."""
        self.rrl = rrl
        self._pick()

    def _pick(self) -> None:
        if self._reader != self._read_closed:
            if self.query_log is not None:
                self._swap(self._read_logged)
            else:
                self._swap(self._read if self.rrl is None else self._read_limited)

    def _read_limited(self) -> None:
        """The hot path's answers (not inlined), each let through, slipped or dropped by
        the limiter before it is copied into the send slots; still one send per batch."""
        io, rrl = self.io, self.rrl
        assert rrl is not None
        rbuf, lens, len_at = io.rbuf, io.lens, io.LEN_AT
        sbuf, slens, snames, name_at, naddr = io.sbuf, io.slens, io.snames, io.NAME_AT, io.name_addrs
        handler, slot, check, prefix = self.handler, self.slot, rrl.check, rrl.prefix
        for _ in range(ROUNDS):
            try:
                n = io.recv()
            except OSError as exc:
                log.debug("udp receive error: %s", exc)
                return
            if not n:
                return
            now = rrl.clock()
            j = 0
            for i in range(n):
                off = i * RECV_SIZE
                data = bytes(rbuf[off : off + lens[len_at[i]]])
                out = handler.fast(data, 0, slot)
                if out is None:
                    out = handler.cached(data, 0, slot)
                if out is None:
                    out = self._slow(data, i, perf_counter())
                    if out is None:
                        continue  # nothing to send now; a forwarded answer is limited in `_ready`
                verdict = check(prefix(io.source(i)), now, slot)
                if verdict != ANSWER:
                    if verdict != SLIP:
                        continue
                    out = truncated(out)
                size = len(out)
                if size > SEND_SIZE:
                    self._send(out, io.name(i))
                    continue
                so = j * SEND_SIZE
                sbuf[so : so + size] = out
                slens[2 * j + 1] = size
                snames[name_at[j]] = naddr[i]
                j += 1
            if j:
                io.send(j)
            if n < BATCH:
                return

    def _read_logged(self) -> None:
        """The hot path plus a query-log line (sampled), one send per answer."""
        rrl = self.rrl
        for i, data in self._datagrams():
            started = perf_counter()
            reply = self.handler.fast(data, 0, self.slot)
            if reply is None:
                reply = self.handler.cached(data, 0, self.slot)
            if reply is None:
                reply = self._slow(data, i, started)
                if reply is not None and rrl is not None:
                    reply = rrl.allow(self.io.source(i), reply, self.slot)
                if reply is not None:
                    self._send(reply, self.io.name(i))
                continue
            addr = self.io.name(i)
            if rrl is not None:
                limited = rrl.allow(self.io.source(i), reply, self.slot)
                if limited is None:
                    continue
                reply = limited
            self._send(reply, addr)
            if self.query_log is not None and self.query_log.wanted():
                self.query_log.write(data, reply, addr, "udp", perf_counter() - started)

    def stop_reading(self) -> None:
        """Listener closed for new queries: drop them (answers in flight still go out)."""
        self._swap(self._read_closed)

    def _read_closed(self) -> None:
        for _ in self._datagrams():
            self.stats.drop(self.slot, False, "shutting_down")

    def close(self) -> None:
        if not self.closed:
            self._flush()  # answers queued this turn still go out
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A bound, non-blocking UDP socket for `host`:`port` (port 0: the kernel picks)."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM, 0, socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    batchio.grow_receive_buffer(sock, LISTEN_RCVBUF)
    return sock
