"""Forwarder: send a question to upstream servers and bring back their answer.

Follows CoreDNS's forward plugin (operators.md 1.5): a policy orders the upstreams
(random, round_robin, sequential); an upstream is marked down after `max_fails`
consecutive failures and probed with `. IN NS` every `health_interval` until it answers;
a timeout moves on to the next; UDP first with a TCP retry when TC comes back, or TCP
only (`force_tcp`); TCP connections are pooled and closed after `expire` idle seconds;
more than `max_concurrent` questions in flight are refused (REFUSED, no queueing, so
memory stays flat under a flood).

Safety (RFC 5452): every UDP query gets a random ID; UDP goes over a connected socket
per upstream that is replaced by one on a new random port every few hundred queries or
seconds (udppool.py says why it is not one socket per query); the kernel drops datagrams
from any other address or port, and we check again; an answer counts only with our ID
and our exact question (case included). Everything else is dropped and counted in
`stats.spoofed` (`stats.late` for answers to queries that already timed out).

A question's walk through the upstreams (`_Query`) runs on callbacks, not a Task: a
UDP exchange creates no coroutine, so a cache miss stays cheap. TCP (TC retries,
force_tcp) runs as a Task inside that walk.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from clusterdns.obs.counters import TIME_BUCKETS, _Hist, rcode_label
from clusterdns.wire import scan as W
from clusterdns.wire.constants import HEADER, RRClass, RRType, Rcode
from clusterdns.wire.names import Malformed, in_zone, to_text, to_wire
from clusterdns.zones.udppool import UdpPool

#: how a question's end is reported: (answer, None) or (None, exception)
Done = Callable[[bytes | None, BaseException | None], None]

log = logging.getLogger("clusterdns.forward")

POLICIES = ("random", "round_robin", "sequential")


class ForwardError(Exception):
    """No usable answer came back from any upstream."""


class Overloaded(ForwardError):
    """More than `max_concurrent` questions in flight: the caller answers REFUSED."""


class Guarded(ForwardError):
    """The name lies in a zone this forwarder must never send upstream (the cluster zone)."""


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """One upstream server: an IP address literal, a port, and whether to use TCP only."""

    host: str
    port: int = 53
    force_tcp: bool = False

    def __post_init__(self) -> None:
        ipaddress.ip_address(self.host.split("%")[0])  # literal only: never resolve names
        if not 0 < self.port < 65536:
            raise ValueError(f"bad port {self.port}")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET


def parse_hostport(text: str, default_port: int = 53, force_tcp: bool = False) -> UpstreamSpec:
    """'10.0.0.1', '10.0.0.1:5353', '[::1]:53', '::1' or 'dns://x' -> UpstreamSpec.

    A 'tcp://' prefix sets force_tcp, as in CoreDNS's forward syntax.
    """
    s = text.strip()
    if s.startswith("tcp://"):
        s, force_tcp = s[6:], True
    elif s.startswith(("dns://", "udp://")):
        s = s[6:]
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif s.count(":") == 1:
        host, p = s.split(":")
        port = int(p)
    else:
        host, port = s, default_port
    return UpstreamSpec(host, port, force_tcp)


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


@dataclass(slots=True)
class UpstreamStats:
    """One upstream's counters for the coredns_proxy_* metrics (plain ints, slow path)."""

    durations: dict[str, _Hist] = field(default_factory=dict)  # rcode name -> exchange times
    health_failures: int = 0
    conn_hits: int = 0  # pooled TCP connection reused
    conn_misses: int = 0  # TCP connection opened

    def observe(self, rcode: int, seconds: float) -> None:
        name = rcode_label(rcode)
        hist = self.durations.get(name)
        if hist is None:
            hist = self.durations[name] = _Hist(len(TIME_BUCKETS))
        hist.observe(TIME_BUCKETS, seconds)


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        self.writer.close()


class Upstream:
    """One upstream server: its UDP socket pool, TCP pool and health state."""

    def __init__(self, spec: UpstreamSpec, fwd: Forwarder) -> None:
        self.spec = spec
        self._fwd = fwd
        self.fails = 0
        self.stats = UpstreamStats()
        self._idle: list[_Conn] = []
        self._probe: asyncio.Task[None] | None = None
        self._peer = (str(ipaddress.ip_address(spec.host.split("%")[0])), spec.port)
        self.pool = UdpPool(self._peer, spec.family, fwd.stats,
                            rotate_queries=fwd.udp_rotate_queries,
                            rotate_seconds=fwd.udp_rotate_seconds)

    def __repr__(self) -> str:
        return f"Upstream({self.spec}, fails={self.fails})"

    @property
    def healthy(self) -> bool:
        return self.fails < self._fwd.max_fails

    async def exchange(self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool) -> bytes:
        """Ask this upstream once (UDP, TCP on TC, or TCP only); raise on failure."""
        started = time.perf_counter()
        answer = await self._exchange(name, qtype, qclass, do, cd)
        self.stats.observe(answer[3] & 0x0F, time.perf_counter() - started)
        return answer

    async def _exchange(self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool) -> bytes:
        stats = self._fwd.stats
        stats.requests += 1
        if self.spec.force_tcp:
            return await self._tcp(name, qtype, qclass, do, cd)
        answer = await self._udp(W.build_query(0, name, qtype, qclass, do=do, cd=cd))
        if answer[2] & 0x02:  # TC: the full answer needs TCP (RFC 7766 5)
            stats.tc_retries += 1
            return await self._tcp(name, qtype, qclass, do, cd)
        return answer

    async def _udp(self, query: bytes) -> bytes:
        """One UDP exchange on the pool, as a coroutine (health checks; the hot path
        calls `pool.send` with a callback instead)."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        token = self.pool.send(query, self._fwd.read_timeout, lambda a, e: _settle(fut, a, e))
        try:
            return await fut
        finally:
            if not fut.done() or fut.cancelled():
                self.pool.cancel(token)

    async def _tcp(self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool) -> bytes:
        """One exchange on a pooled connection; a pooled one the server closed is retried once."""
        qid = secrets.randbits(16)
        wire = W.build_query(qid, name, qtype, qclass, do=do, cd=cd)
        question = wire[HEADER:len(wire) - 11]
        for attempt in range(2):
            conn = self._take()
            reused = conn is not None
            if conn is None:
                reader, writer = await asyncio.open_connection(*self._peer)
                self._fwd.stats.conns_opened += 1
                self.stats.conn_misses += 1
                conn = _Conn(reader, writer)
            else:
                self._fwd.stats.conns_reused += 1
                self.stats.conn_hits += 1
            done = False
            try:
                conn.writer.write(len(wire).to_bytes(2, "big") + wire)
                await conn.writer.drain()
                for _ in range(4):  # skip a few stray messages, then give up on the connection
                    size = int.from_bytes(await conn.reader.readexactly(2), "big")
                    answer = await conn.reader.readexactly(size)
                    if W.is_answer_to(answer, qid, question):
                        done = True
                        conn.last_used = time.monotonic()
                        self._idle.append(conn)
                        return answer
                    self._fwd.stats.spoofed += 1
                raise ConnectionError("no matching answer on the TCP connection")
            except (ConnectionError, asyncio.IncompleteReadError):
                if reused and attempt == 0:
                    continue  # the server closed an idle pooled connection: open a new one
                raise
            finally:
                if not done:
                    conn.close()
        raise ConnectionError("unreachable")

    def _take(self) -> _Conn | None:
        """Most recently used idle connection that has not expired (others are closed)."""
        deadline = time.monotonic() - self._fwd.expire
        while self._idle:
            conn = self._idle.pop()
            if conn.last_used >= deadline and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    def sweep(self) -> None:
        """Close pooled connections idle longer than `expire`."""
        deadline = time.monotonic() - self._fwd.expire
        keep = [c for c in self._idle if c.last_used >= deadline]
        for c in self._idle:
            if c.last_used < deadline:
                c.close()
        self._idle = keep

    def failed(self) -> None:
        self.fails += 1
        if not self.healthy and self._probe is None and not self._fwd.closed:
            log.warning("upstream %s marked down after %d consecutive failures",
                        self.spec, self.fails)
            self._probe = asyncio.get_running_loop().create_task(self._health_loop())

    def succeeded(self) -> None:
        self.fails = 0

    async def _health_loop(self) -> None:
        """Probe `. IN NS` until any answer comes back (CoreDNS forward health check)."""
        stats = self._fwd.stats
        try:
            while not self._fwd.closed:
                await asyncio.sleep(self._fwd.health_interval)
                stats.health_checks += 1
                try:
                    async with asyncio.timeout(self._fwd.read_timeout):
                        await self._exchange(b"\x00", RRType.NS, RRClass.IN, False, False)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, Malformed):
                    stats.health_failures += 1
                    self.stats.health_failures += 1
                    continue
                self.fails = 0
                log.info("upstream %s healthy again", self.spec)
                return
        finally:
            self._probe = None

    def close(self) -> None:
        for c in self._idle:
            c.close()
        self._idle.clear()
        self.pool.close()
        if self._probe is not None:
            self._probe.cancel()


def _settle(fut: asyncio.Future[bytes], answer: bytes | None, exc: BaseException | None) -> None:
    """A Done callback that resolves `fut` (unless its awaiter gave up)."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(answer)  # type: ignore[arg-type]


class Forwarder:
    """Upstream list + policy; `start()` (callback) or `query()` (coroutine) ask them."""

    #: each upstream's UDP socket moves to a new random source port after this many
    #: queries or seconds (udppool.py); not in the config yet: set on a pool to change it
    udp_rotate_queries = 256
    udp_rotate_seconds = 10.0

    def __init__(self, upstreams: Sequence[UpstreamSpec], *, policy: str = "random",
                 max_fails: int = 2, health_interval: float = 0.5, read_timeout: float = 2.0,
                 timeout: float = 5.0, expire: float = 10.0, max_concurrent: int = 1000,
                 except_zones: Iterable[str] = (), name: str = ".") -> None:
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
        self._tcp_tasks: set[asyncio.Task[bytes]] = set()

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

    async def query(self, name: bytes, qtype: int, qclass: int = RRClass.IN, *, do: bool = False,
                    cd: bool = False) -> bytes:
        """Ask the upstreams for (name, type, class) and return the first usable answer.

        `name` is a lowercased wire name. A timeout or error moves on to the next upstream;
        SERVFAIL and REFUSED do too (another server may know), and the last such answer is
        returned when nobody did better. Raises Overloaded, Guarded or ForwardError.
        """
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.start(name, qtype, qclass, do, cd, lambda a, e: _settle(fut, a, e))
        return await fut

    def start(self, name: bytes, qtype: int, qclass: int, do: bool, cd: bool, done: Done) -> None:
        """`query()` without a coroutine: `done` gets the answer or the ForwardError, once,
        never before this returns. Guarded and Overloaded are raised here, at once."""
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
        self.in_flight += 1
        _Query(self, name, qtype, qclass, do, cd, done).step()

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None and not self.closed:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.expire)
            for up in self.upstreams:
                up.sweep()

    def close(self) -> None:
        """Stop health probes and the sweeper; close sockets and pooled connections."""
        self.closed = True
        for up in self.upstreams:
            up.close()
        for t in list(self._tcp_tasks):
            t.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class _Query:
    """One question's walk through the upstreams in policy order, driven by callbacks.

    Each step asks one upstream within min(read_timeout, what is left of `timeout`);
    a timeout or error marks a failure and moves on, SERVFAIL/REFUSED is kept as a
    fallback and moves on, anything else is the answer. TC and force_tcp run the TCP
    exchange as a Task inside the same step budget.
    """

    __slots__ = ("fwd", "name", "qtype", "qclass", "do", "cd", "done", "order", "i",
                 "deadline", "until", "fallback", "up", "started", "finished")

    def __init__(self, fwd: Forwarder, name: bytes, qtype: int, qclass: int, do: bool, cd: bool,
                 done: Done) -> None:
        self.fwd, self.name, self.qtype, self.qclass, self.do, self.cd = fwd, name, qtype, qclass, do, cd
        self.done = done
        self.order = fwd._order()
        self.i = 0
        self.deadline = asyncio.get_running_loop().time() + fwd.timeout
        self.until = 0.0  # end of the current step (loop time)
        self.fallback: bytes | None = None
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
                now = asyncio.get_running_loop().time()
                left = self.deadline - now
                if left <= 0:
                    break
                timeout = fwd.read_timeout if fwd.read_timeout < left else left
                self.until = now + timeout
                self.up = up
                self.started = time.perf_counter()
                fwd.stats.requests += 1
                if up.spec.force_tcp:
                    self._tcp()
                else:
                    up.pool.send(W.build_query(0, self.name, self.qtype, self.qclass,
                                               do=self.do, cd=self.cd), timeout, self._udp_done)
                return
        except Exception as exc:  # a bug must cost one answer, never the question's waiters
            self._finish(None, exc)
            return
        self._finish(None, None)

    def _udp_done(self, answer: bytes | None, exc: BaseException | None) -> None:
        if self.finished:
            return
        try:
            if exc is not None:
                self._failed(exc)
            elif answer[2] & 0x02:  # type: ignore[index]  # TC: the full answer needs TCP (RFC 7766 5)
                self.fwd.stats.tc_retries += 1
                self._tcp()
            else:
                self._answered(answer)  # type: ignore[arg-type]
        except Exception as exc2:
            self._finish(None, exc2)

    def _answered(self, answer: bytes) -> None:
        up = self.up
        assert up is not None
        up.stats.observe(answer[3] & 0x0F, time.perf_counter() - self.started)
        up.fails = 0
        if answer[3] & 0x0F in (Rcode.SERVFAIL, Rcode.REFUSED):
            self.fallback = answer
            self.step()
        else:
            self._finish(answer, None)

    def _failed(self, exc: BaseException) -> None:
        up = self.up
        assert up is not None
        self.fwd.stats.failures += 1
        log.debug("upstream %s failed: %r", up.spec, exc)
        up.failed()
        self.step()

    def _tcp(self) -> None:
        up = self.up
        assert up is not None
        task = asyncio.get_running_loop().create_task(self._tcp_exchange(up, self.until))
        self.fwd._tcp_tasks.add(task)
        task.add_done_callback(self._tcp_done)

    async def _tcp_exchange(self, up: Upstream, until: float) -> bytes:
        async with asyncio.timeout_at(until):
            return await up._tcp(self.name, self.qtype, self.qclass, self.do, self.cd)

    def _tcp_done(self, task: asyncio.Task[bytes]) -> None:
        self.fwd._tcp_tasks.discard(task)
        if self.finished:
            return
        try:
            if task.cancelled():
                self._finish(None, ForwardError("forwarder closed"))
                return
            exc = task.exception()
            if exc is None:
                self._answered(task.result())
            elif isinstance(exc, (OSError, TimeoutError, asyncio.IncompleteReadError)):
                self._failed(exc)
            else:
                self._finish(None, exc)
        except Exception as exc2:
            self._finish(None, exc2)

    def _finish(self, answer: bytes | None, exc: BaseException | None) -> None:
        if self.finished:
            return
        self.finished = True
        self.fwd.in_flight -= 1
        if answer is None and exc is None:
            answer = self.fallback
            if answer is None:
                exc = ForwardError(f"no upstream of {self.fwd.name} answered "
                                   f"{to_text(self.name)}")
        self.done(answer, exc)


LOOP_ZONE = "clusterdns-loop."

LOOP_HELP = (
    "forwarding loop detected: our own probe query {probe} HINFO came back to this server "
    "through the upstream(s) {upstreams}. The upstream forwards to us, so every name outside "
    "the cluster would bounce until it times out. Most common cause: the node's "
    "/etc/resolv.conf (read by a pod with dnsPolicy Default, or given with --resolv-conf) "
    "lists 127.0.0.53 (systemd-resolved's stub) or another local resolver that sends queries "
    "back to the cluster DNS. Fix: start kubelet with "
    "--resolv-conf=/run/systemd/resolve/resolv.conf (the real upstream servers), or pass "
    "--upstream with real upstream addresses. Exiting."
)


class LoopDetector:
    """Detect a forwarding loop the way CoreDNS's loop plugin does.

    A random name under `clusterdns-loop.` is sent through each forwarder once at start.
    Only we know the name, so if it ever arrives as an incoming query, an upstream sent it
    back to us: `seen()` returns True and `tripped` is set with a plain explanation.
    """

    def __init__(self) -> None:
        rand = secrets.token_hex(8)
        self.name = to_wire(f"{rand}.{secrets.token_hex(4)}.{LOOP_ZONE}")
        self.tripped: asyncio.Event = asyncio.Event()
        self.message = ""
        self._upstreams: list[str] = []

    def seen(self, name: bytes) -> bool:
        """Call on every incoming question that is about to be forwarded."""
        if name != self.name:
            return False
        if not self.tripped.is_set():
            self.message = LOOP_HELP.format(probe=to_text(self.name),
                                            upstreams=", ".join(self._upstreams) or "?")
            log.error(self.message)
            self.tripped.set()
        return True

    async def probe(self, forwarders: Iterable[Forwarder]) -> None:
        """Send the probe through every forwarder; the answer itself does not matter."""
        fwds = list(forwarders)
        self._upstreams = sorted({str(u.spec) for f in fwds for u in f.upstreams})
        for f in fwds:
            try:
                await f.query(self.name, RRType.HINFO, RRClass.IN)
            except ForwardError:
                pass  # upstream down or answered nothing useful: no loop seen through it


def check_self_forwarding(upstreams: Iterable[UpstreamSpec],
                          listen: Iterable[tuple[str, int]]) -> str | None:
    """A plain message if an upstream is one of our own listen addresses (a sure loop)."""
    mine = set()
    for host, port in listen:
        try:
            mine.add((ipaddress.ip_address(host), port))
        except ValueError:
            continue
    for up in upstreams:
        addr = ipaddress.ip_address(up.host.split("%")[0])
        if (addr, up.port) in mine or (any(h.is_unspecified and h.version == addr.version
                                           and p == up.port for h, p in mine)
                                       and addr.is_loopback):
            return (f"forwarding loop: upstream {up} is this server's own listen address. "
                    "If it came from a resolv.conf, the node points at a local resolver "
                    "(e.g. 127.0.0.53, systemd-resolved); start kubelet with "
                    "--resolv-conf=/run/systemd/resolve/resolv.conf or pass --upstream.")
    return None
