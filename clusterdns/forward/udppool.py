"""Pooled, connected UDP sockets to one upstream: what keeps a cache miss cheap.

Each upstream has a connected socket shared by a few queries; answers are matched to
their query by ID and exact question (RFC 5452 9.1) through an in-flight map, and a
datagram that matches nothing is dropped and counted (`spoofed`, or `late` when it
answers a query that already timed out). The socket is connected, so the kernel drops
datagrams from any other address or port before we see them.

Source ports (RFC 5452 9.2). A fresh socket per query, as unbound does, was measured on
loopback (socket + connect + add_reader + remove_reader + close, uvloop and asyncio
alike) at 23-30 us of CPU per socket, and it took a miss through the forwarder at 16 in
flight from about 30 to 115 us (the per-loop-turn sendmmsg batch is lost too): far more
than the rest of a miss. So sockets rotate instead, often enough that learning a port
buys little: a socket on a new kernel-chosen (random) port takes over after
`rotate_queries` (16) queries or `rotate_seconds` (1 s), whichever comes first (or when
128 queries are in flight on it): measured the same way, a miss at 16 in flight went
from about 28 to 34 us (the sockets are 1.6 us of that; the rest is bursts split over
two sockets, and answers read one by one on the retired one). The old socket
stays open until its last query is answered or times out; an answer to a newer query
sent to it (a stale port) matches nothing there and is dropped. Residual risk: a forger
who learns the current port (side channel, on-path view) has up to 16 queries or 1 s on
it, and must still hit the 16-bit ID, drawn from the OS's CSPRNG and never repeated on
one port (about 1/65536 per forged datagram per query), and the exact question.

Cheap by construction: the socket is read with `loop.add_reader` (no transport, no
address tuples); where Linux offers them, the queries of one loop turn leave in one
sendmmsg(2) and answers are read with recvmmsg(2) (batchio.py): on loopback a
send that wakes the upstream costs about 4 us, once per batch instead of per query.
Answers go to plain callbacks, and timeouts are one timer per pool over a
deadline-ordered queue (deadlines.py),
not a timer or a Task per query.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Protocol

from clusterdns.forward.deadlines import Deadlines
from clusterdns.forward.ids import QueryIds
from clusterdns.net import batchio
from clusterdns.wire import scan as W
from clusterdns.wire.constants import HEADER

log = logging.getLogger("clusterdns.forward")

#: called once per query: (answer, None) or (None, exception)
Callback = Callable[[bytes | None, BaseException | None], None]

_EXPIRED_MAX = 4096  # timed-out IDs remembered per socket, to tell late answers from spoofs
_READS = 256  # datagrams read per wake-up at most, so one busy socket cannot starve the loop
_RECV_SIZE = 65535
_RCVBUF = 1 << 20  # bytes asked for each upstream socket's receive buffer
#: queries in flight on one socket at most: a burst beyond it moves to a fresh socket, so
#: its answers never overflow a receive buffer capped at the default (about 170 datagrams)
_MAX_PENDING = 128
#: a socket moves to a new random source port after this many queries or seconds
ROTATE_QUERIES = 16
ROTATE_SECONDS = 1.0


class Counters(Protocol):
    """Where the pool counts dropped datagrams (ForwardStats)."""

    spoofed: int
    late: int


class Pending:
    """One query waiting for its answer: the token `UdpPool.cancel` takes."""

    __slots__ = ("callback", "deadline", "live", "qid", "question", "sock", "timer")

    def __init__(self, question: bytes, callback: Callback) -> None:
        self.question = question
        self.callback = callback
        self.deadline = 0.0
        self.live = True  # False once answered, timed out, failed or cancelled
        self.sock: _Socket | None = None
        self.qid = 0
        self.timer: asyncio.TimerHandle | None = None  # only for an out-of-order deadline


class _Socket:
    """One connected socket and the queries in flight on it, by ID."""

    def __init__(self, pool: UdpPool, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(pool.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            batchio.grow_receive_buffer(sock, _RCVBUF)
            sock.bind(("::" if pool.family == socket.AF_INET6 else "0.0.0.0", 0))
            sock.connect(pool.peer)  # the kernel now drops datagrams from anyone else
            loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self.pool = pool
        self.loop = loop
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.born = loop.time()
        self.pending: dict[int, Pending] = {}
        self.expired: dict[int, bytes] = {}  # ID -> question of queries that timed out
        self.used: set[int] = set()  # every ID sent here: none repeats on one port
        self.sent = 0
        self.retired = False
        self.closed = False
        self._out: list[tuple[Pending, bytes]] = []  # queries of this loop turn, not yet sent
        self._io: batchio.BatchIO | None = None  # the pool's batch buffers, while current

    def send(self, p: Pending, wire: bytes) -> None:
        """Send `wire` (ID 0) under a fresh random ID this socket has not used yet."""
        pending, expired, used, ids = self.pending, self.expired, self.used, self.pool._ids
        qid = ids.next()
        while qid in pending or qid in expired or qid in used:
            qid = ids.next()
        if len(used) >= _EXPIRED_MAX:  # rotate_queries set very high: forget old ones
            used.clear()
        used.add(qid)
        p.qid, p.sock = qid, self
        pending[qid] = p
        self.sent += 1
        data = qid.to_bytes(2, "big") + wire[2:]
        if self._io is not None:
            if not self._out:
                self.loop.call_soon(self._flush)
            self._out.append((p, data))
            return
        try:
            self.sock.send(data)
        except OSError as exc:  # buffer full, or an ICMP error reported now
            del pending[qid]
            p.live = False
            self.loop.call_soon(p.callback, None, exc)

    def _flush(self) -> None:
        """Send this loop turn's queries with one sendmmsg per BATCH; a query the kernel
        refuses is not retried (its timeout moves on to the next upstream)."""
        out, self._out = self._out, []
        io = self._io
        if not out or self.closed or io is None:
            return
        io.send_connected(data for p, data in out if p.live)  # not cancelled or failed before it left

    def _readable(self) -> None:
        io = self._io
        if io is not None:
            self._read_batches(io)
            return
        recv = self.sock.recv
        for _ in range(_READS):
            try:
                data = recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP port unreachable: nobody listens, all fail
                self.fail(exc)
                return
            self._answer(data)

    def _read_batches(self, io: batchio.BatchIO) -> None:
        rbuf, lens, len_at, size = io.rbuf, io.lens, io.LEN_AT, batchio.RECV_SIZE
        for _ in range(_READS // batchio.BATCH):
            try:
                n = io.recv()
            except OSError as exc:  # ICMP port unreachable: nobody listens, all fail
                self.fail(exc)
                return
            for i in range(n):
                if io.truncated(i):
                    continue  # longer than we advertise: not an answer we can take
                off = i * size
                self._answer(bytes(rbuf[off : off + lens[len_at[i]]]))
                if self.closed:
                    return
            if n < batchio.BATCH:
                return

    def _answer(self, data: bytes) -> None:
        qid = int.from_bytes(data[:2], "big")
        p = self.pending.get(qid)
        if p is None or not W.is_answer_to(data, qid, p.question):
            q = self.expired.get(qid)
            if p is None and q is not None and W.is_answer_to(data, qid, q):
                self.pool.stats.late += 1
            else:
                self.pool.stats.spoofed += 1
            return
        del self.pending[qid]
        p.live = False
        if p.timer is not None:
            p.timer.cancel()
        self.pool._deadlines.trim()
        if self.retired and not self.pending:
            self.close()
        try:
            p.callback(data, None)
        except Exception:  # a bug must cost one answer, never the socket
            log.exception("internal error handling an upstream answer")

    def forget(self, p: Pending) -> None:
        """`p` timed out or was cancelled: free its ID, remember it to spot a late answer."""
        if self.pending.get(p.qid) is p:
            del self.pending[p.qid]
            if len(self.expired) >= _EXPIRED_MAX:
                self.expired.clear()
            self.expired[p.qid] = p.question
        if self.retired and not self.pending:
            self.close()

    def fail(self, exc: BaseException, later: bool = False) -> None:
        """Fail every query in flight here: now, or on the next loop turn (`later`)."""
        pending, self.pending = self.pending, {}
        for p in pending.values():
            p.live = False
            if p.timer is not None:
                p.timer.cancel()
            if later:
                self.loop.call_soon(p.callback, None, exc)
            else:
                p.callback(None, exc)
        if self.retired:
            self.close()

    def retire(self) -> None:
        """A newer socket took over: send what is queued, hand the batch buffers on
        (stragglers are read one by one), close once the last query here is done."""
        self._flush()
        self._io = None
        self.retired = True
        if not self.pending:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.loop.is_closed():
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.pool._retired.discard(self)


class UdpPool:
    """UDP queries to one upstream over a reused, periodically replaced connected socket."""

    def __init__(
        self,
        peer: tuple[str, int],
        family: int,
        stats: Counters,
        *,
        rotate_queries: int = ROTATE_QUERIES,
        rotate_seconds: float = ROTATE_SECONDS,
    ) -> None:
        self.peer = peer
        self.family = family
        self.stats = stats
        self.rotate_queries = rotate_queries
        self.rotate_seconds = rotate_seconds
        self.opened = 0  # sockets opened so far
        self.closed = False
        self._ids = QueryIds()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._current: _Socket | None = None
        self._retired: set[_Socket] = set()
        self._deadlines: Deadlines[Pending] = Deadlines(self._expire)
        self._io: batchio.BatchIO | None = None

    def __repr__(self) -> str:
        return f"UdpPool({self.peer}, opened={self.opened})"

    @property
    def in_flight(self) -> int:
        socks = [*self._retired, *([self._current] if self._current is not None else [])]
        return sum(len(s.pending) for s in socks)

    @property
    def port(self) -> int | None:
        """Local port of the current socket (None before the first query)."""
        return self._current.port if self._current is not None else None

    def send(self, query: bytes, timeout: float, callback: Callback) -> Pending:
        """Send `query` (built with ID 0); `callback` gets the answer or an exception
        (TimeoutError after `timeout` seconds, OSError) exactly once, never before this
        returns. The result is the token for `cancel`."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        p = Pending(query[HEADER : len(query) - 11], callback)
        if self.closed:
            p.live = False
            loop.call_soon(callback, None, ConnectionError("forwarder closed"))
            return p
        now = loop.time()
        s = self._current
        if (
            s is None
            or s.sent >= self.rotate_queries
            or now - s.born >= self.rotate_seconds
            or len(s.pending) >= _MAX_PENDING
        ):
            try:
                s = self._rotate(loop)
            except OSError as exc:
                if s is None:  # no socket at all (descriptor limit?): this query fails
                    p.live = False
                    loop.call_soon(callback, None, exc)
                    return p
                log.debug("cannot open a new socket to %s: %r; keeping the old one", self.peer, exc)
        self._deadlines.add(loop, p, now + timeout)
        s.send(p, query)
        return p

    def cancel(self, p: Pending) -> None:
        """The asker gave up: free the query's ID and never call it back."""
        if not p.live:
            return
        p.live = False
        if p.timer is not None:
            p.timer.cancel()
        if p.sock is not None:
            p.sock.forget(p)

    def _rotate(self, loop: asyncio.AbstractEventLoop) -> _Socket:
        """A socket on a new random port takes over; the old one drains, then closes."""
        s = _Socket(self, loop)
        self.opened += 1
        old, self._current = self._current, s
        if old is not None:
            self._retired.add(old)
            old.retire()
        if self._io is None and batchio.available():
            # allocated once per pool (half a megabyte, slow to set up), moved to each new socket
            self._io = batchio.BatchIO(s.sock)
            for j in range(batchio.BATCH):
                self._io.snames[self._io.NAME_AT[j]] = 0  # connected: no per-message address
        if self._io is not None:
            self._io.fd = s.sock.fileno()
            s._io = self._io
        return s

    def _expire(self, p: Pending) -> None:
        if not p.live:
            return
        p.live = False
        if p.sock is not None:
            p.sock.forget(p)
        try:
            p.callback(None, TimeoutError(f"no answer from {self.peer[0]}:{self.peer[1]}"))
        except Exception:
            log.exception("internal error handling an upstream timeout")

    def close(self) -> None:
        """Close every socket; queries in flight fail with ConnectionError (next loop turn)."""
        self.closed = True
        self._deadlines.clear()
        socks: Iterable[_Socket] = [*self._retired, *([self._current] if self._current else [])]
        self._current = None
        for s in socks:
            if not s.loop.is_closed():
                s.fail(ConnectionError("forwarder closed"), later=True)
            s.close()
        self._retired.clear()
