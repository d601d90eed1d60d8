"""The UDP and TCP sockets of every listen address, sharing one handler.

Bound at start-up, retuned on reload (query log, RRL, TCP limits), and drained in order
on shutdown (app/server.py): stop reading, let the answers in flight go out, close.
"""

from __future__ import annotations

import asyncio

from clusterdns.net.addr import host_port
from clusterdns.obs.logs import QueryLog
from clusterdns.server import udp as udp_listener
from clusterdns.server.handler import Handler
from clusterdns.server.rrl import RRL
from clusterdns.server.tcp import TCPLimits, TCPProtocol
from clusterdns.server.udp import UDPListener


class BindFailed(Exception):
    """A listen address that cannot be bound; the message says what to do."""


def parse_listen(spec: str, default_port: int = 53) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT`, `:PORT` (every IPv4 address) or `HOST` (net/addr.py)."""
    host, port = host_port(spec, default_port)
    return host or "0.0.0.0", port


class Listeners:
    """UDP and TCP sockets for every listen address, sharing one handler."""

    def __init__(
        self, handler: Handler, limits: TCPLimits, query_log: QueryLog | None = None, rrl: RRL | None = None
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.query_log = query_log
        self.rrl = rrl  # one limiter for every UDP socket of this process (TCP is never limited)
        self.udp: list[UDPListener] = []
        self.tcp: list[asyncio.AbstractServer] = []
        self.bound: list[tuple[str, int]] = []

    async def start(self, addresses: list[tuple[str, int]], reuse_port: bool = False) -> None:
        for host, port in addresses:
            try:
                bound_port = await self._bind(host, port, reuse_port)
            except PermissionError:
                raise BindFailed(
                    f"cannot listen on {host}:{port}: permission denied "
                    "(ports below 1024 need root or CAP_NET_BIND_SERVICE; "
                    "try --listen 127.0.0.1:5353)"
                ) from None
            except OSError as exc:
                raise BindFailed(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                    "(is another DNS server using it? pick another with --listen)"
                ) from None
            self.bound.append((host, bound_port))

    async def _bind(self, host: str, port: int, reuse_port: bool) -> int:
        """UDP and TCP on one port. For port 0 the kernel picks the UDP port, which a TCP
        socket may already hold: then try another (bounded)."""
        loop = asyncio.get_running_loop()
        stats = self.handler.stats
        slot = len(stats.listeners)  # this address's counters; registered once bound
        for attempt in range(20):
            sock = udp_listener.bind(host, port, reuse_port)
            bound_port = sock.getsockname()[1]
            try:
                server = await loop.create_server(
                    lambda: TCPProtocol(self.handler, self.limits, slot, self.query_log),
                    host,
                    bound_port,
                    reuse_address=True,
                    reuse_port=reuse_port or None,
                )
            except OSError:
                sock.close()
                if port != 0 or attempt == 19:
                    raise
                continue
            stats.add_listener(host, bound_port)
            self.udp.append(UDPListener(self.handler, sock, slot, self.query_log, self.rrl))
            self.tcp.append(server)
            return bound_port
        raise AssertionError("unreachable")

    def set_query_log(self, query_log: QueryLog | None) -> None:
        """Turn the query log on or off for every socket and open connection."""
        self.query_log = query_log
        for p in self.udp:
            p.set_query_log(query_log)
        for c in list(self.limits.open):
            c.set_query_log(query_log)

    def set_rrl(self, rrl: RRL | None) -> None:
        """Turn response-rate limiting on (a limiter) or off (None) for every UDP socket."""
        self.rrl = rrl
        for p in self.udp:
            p.set_rrl(rrl)

    def stop_reading(self) -> None:
        """Take no new queries (draining); answers in flight still go out."""
        for s in self.tcp:
            s.close()
        for p in self.udp:
            p.stop_reading()
        for c in list(self.limits.open):
            c.stop_reading()

    def pending(self) -> int:
        """Answers still being worked on (forwarded or pipelined)."""
        return sum(p.pending for p in self.udp) + sum(c.pending for c in self.limits.open)

    def close(self) -> None:
        for t in self.udp:
            t.close()
        for s in self.tcp:
            s.close()
        for c in list(self.limits.open):
            if c.transport is not None:
                c.transport.close()
