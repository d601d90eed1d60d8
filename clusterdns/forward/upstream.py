"""One upstream server: its address, its counters and its health (marked down after
`max_fails` consecutive failures, probed with `. IN NS` until it answers again).

The forwarder (forwarder.py) decides which upstream to ask; this is what it asks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from clusterdns.forward.tcppool import TcpPool
from clusterdns.forward.udppool import UdpPool
from clusterdns.net.addr import host_port
from clusterdns.obs.counters import RCODES, TIME_BUCKETS, _Hist, rcode_label
from clusterdns.wire import scan as W
from clusterdns.wire.constants import RRClass, RRType
from clusterdns.wire.names import Malformed

if TYPE_CHECKING:
    from clusterdns.forward.forwarder import Forwarder

log = logging.getLogger("clusterdns.forward")
_T = TypeVar("_T")  # what a settled Future holds: bytes, or a Scan


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
    host, port = host_port(s, default_port)
    return UpstreamSpec(host, port, force_tcp)


@dataclass(slots=True)
class UpstreamStats:
    """One upstream's counters for the coredns_proxy_* metrics (plain ints, slow path)."""

    durations: dict[str, _Hist] = field(default_factory=dict)  # rcode name -> exchange times
    health_failures: int = 0
    conn_hits: int = 0  # pooled TCP connection reused
    conn_misses: int = 0  # TCP connection opened

    def observe(self, rcode: int, seconds: float) -> None:
        """One exchange's time, by rcode (once per forwarded miss: kept to a few lookups)."""
        name = RCODES.get(rcode) or rcode_label(rcode)
        hist = self.durations.get(name)
        if hist is None:
            hist = self.durations[name] = _Hist(len(TIME_BUCKETS))
        hist.counts[bisect_left(TIME_BUCKETS, seconds)] += 1  # `_Hist.observe` inlined
        hist.sum += seconds


class Upstream:
    """One upstream server: its UDP socket pool, TCP pool and health state."""

    def __init__(self, spec: UpstreamSpec, fwd: Forwarder) -> None:
        self.spec = spec
        self._fwd = fwd
        self.fails = 0
        self.stats = UpstreamStats()
        self._probe: asyncio.Task[None] | None = None
        self._peer = (str(ipaddress.ip_address(spec.host.split("%")[0])), spec.port)
        self.pool = UdpPool(
            self._peer,
            spec.family,
            fwd.stats,
            rotate_queries=fwd.udp_rotate_queries,
            rotate_seconds=fwd.udp_rotate_seconds,
        )
        self.tcp = TcpPool(self._peer, fwd, self.stats)

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
            return await self.tcp.exchange(name, qtype, qclass, do, cd)
        answer = await self._udp(W.build_query(0, name, qtype, qclass, do=do, cd=cd))
        if answer[2] & 0x02:  # TC: the full answer needs TCP (RFC 7766 5)
            stats.tc_retries += 1
            return await self.tcp.exchange(name, qtype, qclass, do, cd)
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

    def failed(self) -> None:
        self.fails += 1
        if not self.healthy and self._probe is None and not self._fwd.closed:
            log.warning("upstream %s marked down after %d consecutive failures", self.spec, self.fails)
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
        self.tcp.close()
        self.pool.close()
        if self._probe is not None:
            self._probe.cancel()


def _settle(fut: asyncio.Future[_T], answer: _T | None, exc: BaseException | None) -> None:
    """A Done callback that resolves `fut` (unless its awaiter gave up)."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(answer)  # type: ignore[arg-type]  # no exc: the answer is there
