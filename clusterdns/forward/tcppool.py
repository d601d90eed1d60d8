"""Pipelined TCP connections to one upstream, for TC retries and force_tcp (the node
cache's default towards the cluster DNS).

A few long-lived connections per upstream (`Forwarder.tcp_max_conns`, 2), each
carrying many queries at once (RFC 7766 6.2.1.1): a query is written as soon as it
comes (the queries of one loop turn in one write), and answers, in any order, are
matched to their query by ID and exact question (RFC 5452 9.1) through the
connection's in-flight map; a message that matches nothing is dropped and counted
(`spoofed`, or `late` when it answers a query that already timed out). An ID is never
in flight twice on one connection, nor reused while a late answer to it may come.

Like udppool.py, it runs on callbacks: each connection is an asyncio.Protocol, a
query is a small token with a callback, and timeouts are one timer per pool over a
deadline-ordered queue (deadlines.py); no Task or coroutine per query (only one per connect).

New queries go to the oldest usable connection (RFC 7766 6.2.1: as few connections
as will do); a second one opens only when that one is full (`tcp_max_in_flight`
queries in flight, or its write buffer above `_HIGH_WATER`), and with every
connection full a query waits for room (within its own deadline). When a connection
closes or fails, each query in flight on it is sent once more on another connection
(a server may close an idle or busy connection at any time, RFC 7766 6.2.3), and
fails with ConnectionError when it had already been resent; the forwarder then moves
on to the next upstream as for any failed exchange. A connect that fails fails the
queries waiting on it; after two in a row new connects back off (doubling, up to
`_BACKOFF_MAX`), failing queries at once meanwhile. A connection where a query timed
out with nothing read since it was sent takes no new queries and closes once empty;
an idle one closes after `expire` seconds.

Some servers close a connection after a fixed number of queries (dnsmasq after 100,
its TCP_MAX_QUERIES), cutting off whatever is pipelined past it: measured with dnsmasq
upstream and a miss flood, 60% of the queries were sent twice, and a query cut off a
second time fails. When two connections in a row are closed by the server, with queries
still in flight, after answering the same number of queries, the pool takes that number
as the server's limit (`per_conn_limit`): a connection takes no new query once it has
been sent that many, and the next ones go to another connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from clusterdns.forward.deadlines import Deadlines
from clusterdns.forward.ids import QueryIds
from clusterdns.wire import scan as W
from clusterdns.wire.constants import HEADER

if TYPE_CHECKING:
    from clusterdns.forward.forwarder import Forwarder
    from clusterdns.forward.upstream import UpstreamStats

log = logging.getLogger("clusterdns.forward")

#: called once per query: (answer, None) or (None, exception)
Callback = Callable[[bytes | None, BaseException | None], None]

_HIGH_WATER = 64 * 1024  # bytes queued in a connection's transport before it takes no more
_EXPIRED_MAX = 4096  # timed-out IDs remembered per connection, to tell late answers from spoofs
_BACKOFF_BASE = 0.05  # seconds without connects after the second failed connect in a row
_BACKOFF_MAX = 2.0


class TcpQuery:
    """One query: the token `TcpPool.cancel` takes."""

    __slots__ = ("callback", "conn", "deadline", "live", "qid", "question", "resent", "sent_at", "timer", "wire")

    def __init__(self, wire: bytes, callback: Callback) -> None:
        self.wire = wire  # built with ID 0
        self.question = wire[HEADER : len(wire) - 11]  # without the OPT record
        self.callback = callback
        self.deadline = 0.0
        self.live = True  # False once answered, timed out, failed or cancelled
        self.conn: _Conn | None = None
        self.qid = 0
        self.timer: asyncio.TimerHandle | None = None  # only for an out-of-order deadline
        self.resent = False
        self.sent_at = 0.0


class _Conn(asyncio.Protocol):
    """One TCP connection and the queries in flight on it, by ID."""

    def __init__(self, pool: TcpPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.in_flight: dict[int, TcpQuery] = {}
        self.expired: dict[int, bytes] = {}  # ID -> question of queries that timed out
        self.out: list[bytes] = []  # frames of this loop turn (or until connected), unwritten
        self.buf = bytearray()
        self.paused = False  # the transport's write buffer is above the high-water mark
        self.draining = False  # takes no new queries; closes once empty
        self.closed = False
        self.last_used = loop.time()
        self.last_read = 0.0
        self.connecting: asyncio.Task[None] | None = None
        self.sent = 0  # queries put in flight here (resent ones included)
        self.answered = 0

    def usable(self) -> bool:
        return not (self.closed or self.draining or self.paused) and len(self.in_flight) < self.pool.max_in_flight

    def send(self, q: TcpQuery, now: float) -> None:
        """Put `q` in flight here (`now`: the loop's time); written with this turn's others."""
        in_flight, expired, ids = self.in_flight, self.expired, self.pool._ids
        qid = ids.next()
        while qid in in_flight or qid in expired:
            qid = ids.next()
        q.qid, q.conn = qid, self
        in_flight[qid] = q
        self.sent += 1
        if self.sent >= self.pool.per_conn_limit > 0:
            self.draining = True  # the server would cut the next one off: no more here
        self.last_used = q.sent_at = now
        wire = q.wire
        if not self.out and self.transport is not None:
            self.loop.call_soon(self._flush)
        self.out.append(len(wire).to_bytes(2, "big") + qid.to_bytes(2, "big") + wire[2:])

    def _flush(self) -> None:
        out, self.out = self.out, []
        if out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(out))

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are no asyncio.Transport subclass, just alike)
        self.transport = transport = cast(asyncio.Transport, transport)
        if self.pool.closed or self.closed:
            transport.close()
            return
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        buf = self.buf
        buf += data
        n, off = len(buf), 0
        while n - off >= 2:
            end = off + 2 + (buf[off] << 8 | buf[off + 1])
            if end > n:
                break
            msg = bytes(buf[off + 2 : end])
            off = end
            self._answer(msg)
            if self.closed:
                return
        if off:
            del buf[:off]

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost fails or resends what is in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool._lost(self, exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pool._pump()

    # -- answers ------------------------------------------------------------------------
    def _answer(self, msg: bytes) -> None:
        pool = self.pool
        qid = int.from_bytes(msg[:2], "big") if len(msg) >= 2 else -1
        q = self.in_flight.get(qid)
        if q is None or not W.is_answer_to(msg, qid, q.question):
            question = self.expired.get(qid)
            if q is None and question is not None and W.is_answer_to(msg, qid, question):
                del self.expired[qid]
                pool._fwd.stats.late += 1
            else:
                pool._fwd.stats.spoofed += 1
            return
        del self.in_flight[qid]
        q.live = False
        if q.timer is not None:
            q.timer.cancel()
        self.last_used = self.last_read
        self.answered += 1
        pool._deadlines.trim()
        try:
            q.callback(msg, None)
        except Exception:  # a bug must cost one answer, never the connection
            log.exception("internal error handling an upstream answer")
        if self.draining and not self.in_flight:
            self.close()
        if pool._waiting:
            pool._pump()

    def forget(self, q: TcpQuery) -> None:
        """`q` timed out or was cancelled: free its ID, remember it to spot a late answer."""
        if self.in_flight.get(q.qid) is q:
            del self.in_flight[q.qid]
            if len(self.expired) >= _EXPIRED_MAX:
                self.expired.clear()
            self.expired[q.qid] = q.question
        if self.draining and not self.in_flight:
            self.close()

    def close(self) -> None:
        """Close from our side (idle, drained or pool closed); nothing may be in flight."""
        if self.closed:
            return
        self.closed = True
        self.pool._remove(self)
        if self.transport is not None:
            self.transport.close()
        elif self.connecting is not None:
            self.connecting.cancel()


class TcpPool:
    """One upstream's TCP connections, each carrying many queries at once."""

    def __init__(self, peer: tuple[str, int], fwd: Forwarder, stats: UpstreamStats) -> None:
        self._peer = peer
        self._fwd = fwd
        self.stats = stats
        self.max_conns: int = getattr(fwd, "tcp_max_conns", 2)
        self.max_in_flight: int = getattr(fwd, "tcp_max_in_flight", 1000)
        self.opened = 0  # connections opened so far
        self.closed = False
        self._ids = QueryIds()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: list[_Conn] = []  # oldest first
        self._waiting: deque[TcpQuery] = deque()  # every connection full: wait for room
        self._deadlines: Deadlines[TcpQuery] = Deadlines(self._expire)
        self._connect_failures = 0  # in a row
        self._no_connect_until = 0.0
        # the server's evident queries-per-connection limit (0: none seen); see the module doc
        self.per_conn_limit = 0
        self._cut_after = -1  # answers on the last connection the server closed mid-flight

    def __repr__(self) -> str:
        return f"TcpPool({self._peer}, conns={len(self._conns)}, opened={self.opened})"

    @property
    def in_flight(self) -> int:
        return sum(len(c.in_flight) for c in self._conns) + sum(q.live for q in self._waiting)

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- asking -------------------------------------------------------------------------
    async def exchange(self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool) -> bytes:
        """`send` as a coroutine (health checks; the forwarder uses the callback form).
        Bounded by the forwarder's `timeout` even when the caller sets none."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()

        def settle(answer: bytes | None, exc: BaseException | None) -> None:
            if not fut.done():
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(answer)  # type: ignore[arg-type]  # no exc: the answer is there

        q = self.send(name, qtype, qclass, do, cd, self._fwd.timeout, settle)
        try:
            return await fut
        finally:
            if not fut.done() or fut.cancelled():
                self.cancel(q)

    def send(
        self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool, timeout: float, callback: Callback
    ) -> TcpQuery:
        """Ask (name, type, class) over TCP; `callback` gets the answer or an exception
        (TimeoutError after `timeout` seconds, ConnectionError or another OSError)
        exactly once, never before this returns. The result is the token for `cancel`."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        q = TcpQuery(W.build_query(0, name, qtype, qclass, do=do, cd=cd), callback)
        if self.closed:
            self._fail(q, ConnectionError("forwarder closed"))
            return q
        now = loop.time()
        self._deadlines.add(loop, q, now + timeout)
        self._dispatch(q, now)
        return q

    def cancel(self, q: TcpQuery) -> None:
        """The asker gave up: free the query's ID and never call it back."""
        if not q.live:
            return
        q.live = False
        if q.timer is not None:
            q.timer.cancel()
        if q.conn is not None:
            q.conn.forget(q)

    def _dispatch(self, q: TcpQuery, now: float | None = None) -> None:
        """Put `q` on a connection (opening one if there is room), or make it wait.
        `now`: the loop's time, when the caller has it."""
        loop = self._loop
        assert loop is not None
        if now is None:
            now = loop.time()
        conn = self._pick(now)
        if conn is not None:
            self._fwd.stats.conns_reused += 1
            self.stats.conn_hits += 1
        elif len(self._conns) < self.max_conns:
            if now < self._no_connect_until:
                self._fail(
                    q,
                    ConnectionError(
                        f"TCP to {self._peer[0]}:{self._peer[1]}: {self._connect_failures} "
                        f"connects failed in a row, waiting before the next"
                    ),
                )
                return
            conn = self._open(loop)
            self._fwd.stats.conns_opened += 1
            self.stats.conn_misses += 1
        else:
            self._waiting.append(q)
            return
        conn.send(q, now)

    def _pick(self, now: float) -> _Conn | None:
        """The oldest connection with room; idle ones past `expire` are closed on the way."""
        stale = now - self._fwd.expire
        for c in self._conns:
            if not c.in_flight and c.transport is not None and c.last_used < stale:
                c.close()  # the server may have dropped it already: do not trust it
                return self._pick(now)
            if c.usable():
                return c
        return None

    def _pump(self) -> None:
        """Room again (an answer, a drained write buffer, a closed connection): send waiters."""
        waiting = self._waiting
        loop = self._loop
        while waiting and loop is not None and not self.closed:
            q = waiting[0]
            if not q.live:
                waiting.popleft()
                continue
            if self._pick(loop.time()) is None and len(self._conns) >= self.max_conns:
                return
            waiting.popleft()
            self._dispatch(q)

    # -- connections --------------------------------------------------------------------
    def _open(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        conn = _Conn(self, loop)
        self._conns.append(conn)
        self.opened += 1
        conn.connecting = loop.create_task(self._connect(conn))
        return conn

    async def _connect(self, conn: _Conn) -> None:
        loop = conn.loop
        try:
            async with asyncio.timeout(self._fwd.read_timeout):
                await loop.create_connection(lambda: conn, *self._peer)
        except asyncio.CancelledError:
            self._lost(conn, ConnectionError("forwarder closed"))  # closed while connecting
            raise
        except Exception as exc:  # noqa: BLE001 - refused, unreachable, timed out: the upstream failed
            self._connect_failures += 1
            if self._connect_failures >= 2:
                self._no_connect_until = loop.time() + min(
                    _BACKOFF_MAX, _BACKOFF_BASE * 2 ** (self._connect_failures - 2)
                )
            self._lost(conn, exc, resend=False)
        else:
            self._connect_failures = 0
        finally:
            conn.connecting = None

    def _lost(self, conn: _Conn, exc: BaseException | None, resend: bool = True) -> None:
        """`conn` closed, failed or never connected: resend or fail what was in flight."""
        conn.closed = True
        self._remove(conn)
        in_flight, conn.in_flight = conn.in_flight, {}
        if resend and conn.answered and any(q.live for q in in_flight.values()):
            self._learn_limit(conn.answered)
        conn.out = []
        err = (
            exc
            if exc is not None and not resend
            else ConnectionError(
                f"TCP connection to {self._peer[0]}:{self._peer[1]} closed" + (f": {exc}" if exc is not None else "")
            )
        )
        for q in in_flight.values():
            if not q.live:
                continue
            q.conn = None
            if resend and not q.resent and not self.closed:
                q.resent = True
                self._dispatch(q)
            else:
                self._fail(q, err)
        self._pump()

    def _learn_limit(self, answered: int) -> None:
        """The server closed a connection mid-flight after `answered` answers: the same
        count twice in a row is its limit per connection (a restart or an idle timeout
        closes at a count of chance, and is not taken)."""
        if answered == self._cut_after:
            if self.per_conn_limit != answered:
                log.info(
                    "TCP to %s:%s: the server closes connections after %d queries; sending no more than that on each",
                    self._peer[0],
                    self._peer[1],
                    answered,
                )
            self.per_conn_limit = answered
        self._cut_after = answered

    def _remove(self, conn: _Conn) -> None:
        try:
            self._conns.remove(conn)
        except ValueError:
            pass

    # -- timeouts -----------------------------------------------------------------------
    def _fail(self, q: TcpQuery, exc: BaseException) -> None:
        """`q` fails with `exc` on the next loop turn (never inside `send`)."""
        q.live = False
        if q.timer is not None:
            q.timer.cancel()
        loop = self._loop or asyncio.get_running_loop()
        if not loop.is_closed():
            loop.call_soon(q.callback, None, exc)

    def _expire(self, q: TcpQuery) -> None:
        if not q.live:
            return
        q.live = False
        conn = q.conn
        if conn is not None:
            if conn.last_read < q.sent_at:  # nothing at all came back since: maybe dead
                conn.draining = True
            conn.forget(q)
        try:
            q.callback(None, TimeoutError(f"no answer over TCP from {self._peer[0]}:{self._peer[1]}"))
        except Exception:
            log.exception("internal error handling an upstream timeout")
        if self._waiting:
            self._pump()

    def sweep(self) -> None:
        """Close connections idle longer than `expire`."""
        if self._loop is None:
            return
        stale = self._loop.time() - self._fwd.expire
        for c in list(self._conns):
            if not c.in_flight and c.transport is not None and c.last_used < stale:
                c.close()

    def close(self) -> None:
        """Close every connection; queries in flight fail with ConnectionError (next loop turn)."""
        self.closed = True
        self._deadlines.clear()
        err = ConnectionError("forwarder closed")
        for conn in list(self._conns):
            for q in conn.in_flight.values():
                if q.live:
                    self._fail(q, err)
            conn.in_flight = {}
            conn.close()
        for q in self._waiting:
            if q.live:
                self._fail(q, err)
        self._waiting.clear()
        self._conns.clear()
