"""Forwarder: send a question to upstream servers and bring back their answer.

Follows CoreDNS's forward plugin (operators.md 1.5): a policy orders the upstreams
(random, round_robin, sequential); a timeout moves on to the next; UDP first with a TCP
retry when TC comes back, or TCP only (`force_tcp`); more than `max_concurrent`
questions in flight are refused (REFUSED, no queueing, so memory stays flat under a
flood). An answer counts only with our ID and our exact question (RFC 5452; udppool.py).

A question's walk through the upstreams (`_Query`) runs on callbacks, not a Task: a
UDP or TCP exchange creates no coroutine, so a cache miss stays cheap (TCP pipelines
many questions over a few connections per upstream: tcppool.py).

Every answer is scanned (bounds-checked record by record) before it is accepted; a caller
that keeps answers (the cache) asks for that Scan (`scanned=True`, `query_scan`) instead
of the bytes, so a miss scans its answer once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from clusterdns.cache.cache import Declined
from clusterdns.forward import udppool
from clusterdns.forward.upstream import Upstream, UpstreamSpec, _settle
from clusterdns.wire import scan as W
from clusterdns.wire.constants import Rcode, RRClass
from clusterdns.wire.names import in_zone, to_text, to_wire

#: how a question's end is reported: (answer, None) or (None, exception)
Done = Callable[[bytes | None, BaseException | None], None]
#: the same with the answer's Scan (OPT removed, TTL offsets found) instead of its bytes
ScanDone = Callable[[W.Scan | None, BaseException | None], None]

log = logging.getLogger("clusterdns.forward")
_TRY_NEXT = frozenset((int(Rcode.SERVFAIL), int(Rcode.REFUSED)))  # rcodes that send a query on

POLICIES = ("random", "round_robin", "sequential")


class ForwardError(Exception):
    """No usable answer came back from any upstream."""


class Overloaded(ForwardError, Declined):
    """More than `max_concurrent` questions in flight: the caller answers REFUSED."""


class Guarded(ForwardError):
    """The name lies in a zone this forwarder must never send upstream (the cluster zone)."""


@dataclass(slots=True)
class ForwardStats:
    """Counters for metrics (plain ints; the metrics issue exports them)."""

    queries: int = 0  # questions asked of this forwarder
    requests: int = 0  # exchanges with an upstream (retries and TCP fallbacks included)
    failures: int = 0  # exchanges that timed out or failed
    spoofed: int = 0  # datagrams or TCP messages dropped: wrong address, ID or question
    late: int = 0  # UDP answers to a query that had already timed out (dropped)
    refused: int = 0  # questions turned away over max_concurrent
    tc_retries: int = 0  # UDP answers with TC retried over TCP
    health_checks: int = 0
    health_failures: int = 0
    conns_opened: int = 0
    conns_reused: int = 0
    all_down: int = 0  # questions that found every upstream marked down


class Forwarder:
    """Upstream list + policy; `start()` (callback) or `query()` (coroutine) ask them.

    Every tuning value is required: they come from the settings' `forward` section
    (forward/settings.py `forward_kwargs`), the one place their defaults live.
    """

    #: each upstream's UDP socket moves to a new random source port after this many
    #: queries or seconds (udppool.py, which has the measured cost); not in the config yet
    udp_rotate_queries = udppool.ROTATE_QUERIES
    udp_rotate_seconds = udppool.ROTATE_SECONDS
    #: TCP connections per upstream, and questions in flight on one (tcppool.py); not in
    #: the config yet either
    tcp_max_conns = 2
    tcp_max_in_flight = 1000

    def __init__(
        self,
        upstreams: Sequence[UpstreamSpec],
        *,
        policy: str,
        max_fails: int,
        health_interval: float,
        read_timeout: float,
        timeout: float,
        expire: float,
        max_concurrent: int,
        except_zones: Iterable[str] = (),
        name: str = ".",
    ) -> None:
        if not upstreams:
            raise ValueError(f"forwarder {name}: no upstream servers")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        self.name = name
        self.policy = policy
        self.max_fails = max_fails
        self.health_interval = health_interval
        self.read_timeout = read_timeout
        self.timeout = timeout
        self.expire = expire
        self.max_concurrent = max_concurrent
        self.except_zones = tuple(to_wire(z) for z in except_zones)
        self.stats = ForwardStats()
        self.upstreams = [Upstream(s, self) for s in upstreams]
        self.closed = False
        self.in_flight = 0
        self._rr = itertools.count()
        self._sweeper: asyncio.Task[None] | None = None
        # the loop of the first `start` (the pools keep theirs alike): asyncio.get_running_loop
        # checks the process ID, a system call, and it was ~10% of a miss flood's profile
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"Forwarder({self.name}, {[str(u.spec) for u in self.upstreams]}, {self.policy})"

    def _order(self) -> list[Upstream]:
        ups = self.upstreams
        if len(ups) == 1:
            return ups  # nothing to order (the hot case: one upstream)
        if self.policy == "random":
            ups = ups[:]
            random.shuffle(ups)
        elif self.policy == "round_robin":
            k = next(self._rr) % len(ups)
            ups = ups[k:] + ups[:k]
        healthy = [u for u in ups if u.healthy]
        # all down: still try them (CoreDNS tries one at random); the deadline bounds it
        return healthy + [u for u in ups if not u.healthy]

    async def query(
        self, name: bytes, qtype: int, qclass: int = RRClass.IN, *, do: bool = False, cd: bool = False
    ) -> bytes:
        """Ask the upstreams for (name, type, class) and return the first usable answer.

        `name` is a lowercased wire name. A timeout or error moves on to the next upstream;
        SERVFAIL and REFUSED do too (another server may know), and the last such answer is
        returned when nobody did better. Raises Overloaded, Guarded or ForwardError.
        """
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.start(name, qtype, qclass, do, cd, lambda a, e: _settle(fut, a, e))
        return await fut

    async def query_scan(
        self, name: bytes, qtype: int, qclass: int = RRClass.IN, *, do: bool = False, cd: bool = False
    ) -> W.Scan:
        """`query()` returning the answer's Scan, for a caller that would scan it again."""
        fut: asyncio.Future[W.Scan] = asyncio.get_running_loop().create_future()
        self.start(name, qtype, qclass, do, cd, lambda a, e: _settle(fut, a, e), scanned=True)
        return await fut

    def start(
        self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool, done: Done | ScanDone, *, scanned: bool = False
    ) -> None:
        """`query()` without a coroutine: `done` gets the answer or the ForwardError, once,
        never before this returns; with `scanned`, the answer's Scan instead of its bytes
        (it was scanned to be accepted: a cache need not scan it again). Guarded and
        Overloaded are raised here, at once."""
        for zone in self.except_zones:
            if in_zone(name, zone):
                raise Guarded(f"{to_text(name)} is in a zone never forwarded upstream")
        if self.in_flight >= self.max_concurrent:
            self.stats.refused += 1
            raise Overloaded(f"more than {self.max_concurrent} queries in flight")
        if self._sweeper is None:
            self._ensure_sweeper()
        self.stats.queries += 1
        max_fails = self.max_fails
        for u in self.upstreams:
            if u.fails < max_fails:
                break
        else:
            self.stats.all_down += 1  # CoreDNS coredns_forward_healthcheck_broken_total
        loop = self._loop
        if loop is None or loop.is_closed():  # (a forwarder outliving its loop: tests)
            loop = self._loop = asyncio.get_running_loop()
        self.in_flight += 1
        _Query(self, loop, name, qtype, qclass, do, cd, done, scanned).step()

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None and not self.closed:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.expire)
            for up in self.upstreams:
                up.tcp.sweep()

    def close(self) -> None:
        """Stop health probes and the sweeper; close sockets and pooled connections."""
        self.closed = True
        for up in self.upstreams:
            up.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class _Query:
    """One question's walk through the upstreams in policy order, driven by callbacks.

    Each step asks one upstream within min(read_timeout, what is left of `timeout`);
    a timeout or error marks a failure and moves on, SERVFAIL/REFUSED is kept as a
    fallback and moves on, anything else is the answer. TC and force_tcp ask the TCP
    pool within the same step budget.
    """

    __slots__ = (
        "cd",
        "deadline",
        "do",
        "done",
        "fallback",
        "fallback_scan",
        "finished",
        "fwd",
        "i",
        "loop",
        "name",
        "order",
        "qclass",
        "qtype",
        "scanned",
        "started",
        "until",
        "up",
    )

    def __init__(
        self,
        fwd: Forwarder,
        loop: asyncio.AbstractEventLoop,
        name: bytes,
        qtype: int,
        qclass: int,
        do: bool,
        cd: bool,
        done: Done | ScanDone,
        scanned: bool = False,
    ) -> None:
        self.fwd, self.name, self.qtype, self.qclass, self.do, self.cd = fwd, name, qtype, qclass, do, cd
        self.done = done
        self.scanned = scanned  # `done` takes the answer's Scan, not its bytes
        ups = fwd.upstreams
        self.order = ups if len(ups) == 1 else fwd._order()
        self.i = 0
        self.loop = loop
        self.deadline = loop.time() + fwd.timeout
        self.until = 0.0  # end of the current step (loop time)
        self.fallback: bytes | None = None
        self.fallback_scan: W.Scan | None = None
        self.up: Upstream | None = None
        self.started = 0.0
        self.finished = False

    def step(self) -> None:
        """Ask the next upstream, or finish when there is none or no time left."""
        fwd = self.fwd
        try:
            while self.i < len(self.order) and not fwd.closed:
                up = self.order[self.i]
                self.i += 1
                now = self.loop.time()
                left = self.deadline - now
                if left <= 0:
                    break
                timeout = fwd.read_timeout if fwd.read_timeout < left else left
                self.until = now + timeout
                self.up = up
                self.started = time.perf_counter()
                fwd.stats.requests += 1
                if up.spec.force_tcp:
                    self._tcp(timeout)
                else:
                    up.pool.send(
                        W.build_query(0, self.name, self.qtype, self.qclass, do=self.do, cd=self.cd),
                        timeout,
                        self._udp_done,
                    )
                return
        except Exception as exc:  # noqa: BLE001 - a bug must cost one answer, never the question's waiters
            self._finish(None, exc)
            return
        self._finish(None, None)

    def _udp_done(self, answer: bytes | None, exc: BaseException | None) -> None:
        if self.finished:
            return
        try:
            if exc is not None:
                self._failed(exc)
            elif answer[2] & 0x02:  # type: ignore[index]  # no exc: an answer. TC: the full answer needs TCP (RFC 7766 5)
                self.fwd.stats.tc_retries += 1
                self._tcp(self.until - self.loop.time())
            else:
                self._answered(answer)  # type: ignore[arg-type]  # no exc: an answer
        except Exception as exc2:  # noqa: BLE001 - as above: the waiters get an answer
            self._finish(None, exc2)

    def _answered(self, answer: bytes) -> None:
        up = self.up
        assert up is not None
        try:
            scan = W.scan_response(answer)  # every record bounds-checked: a malformed answer
        except W.Malformed as exc:  # is the upstream failing (next upstream, then SERVFAIL)
            self._failed(exc)
            return
        up.stats.observe(answer[3] & 0x0F, time.perf_counter() - self.started)
        up.fails = 0
        if answer[3] & 0x0F in _TRY_NEXT:
            self.fallback, self.fallback_scan = answer, scan
            self.step()
        else:
            self._finish(answer, None, scan)

    def _failed(self, exc: BaseException) -> None:
        up = self.up
        assert up is not None
        self.fwd.stats.failures += 1
        log.debug("upstream %s failed: %r", up.spec, exc)
        up.failed()
        self.step()

    def _tcp(self, left: float) -> None:
        """Ask the step's upstream over TCP within `left` seconds (what is left of the step)."""
        up = self.up
        assert up is not None
        up.tcp.send(self.name, self.qtype, self.qclass, self.do, self.cd, max(left, 0.0), self._tcp_done)

    def _tcp_done(self, answer: bytes | None, exc: BaseException | None) -> None:
        if self.finished:
            return
        try:
            if exc is None:
                self._answered(answer)  # type: ignore[arg-type]  # no exc: an answer
            elif isinstance(exc, (OSError, TimeoutError, asyncio.IncompleteReadError)):
                self._failed(exc)
            else:
                self._finish(None, exc)
        except Exception as exc2:  # noqa: BLE001 - as above: the waiters get an answer
            self._finish(None, exc2)

    def _finish(self, answer: bytes | None, exc: BaseException | None, scan: W.Scan | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self.fwd.in_flight -= 1
        if answer is None and exc is None:
            answer, scan = self.fallback, self.fallback_scan
            if answer is None:
                exc = ForwardError(f"no upstream of {self.fwd.name} answered {to_text(self.name)}")
        self.done(scan if self.scanned else answer, exc)  # type: ignore[arg-type]  # a ScanDone when scanned
