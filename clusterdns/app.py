"""Composition root: builds the parts for a mode, starts them in order, stops them in order.

Data flows one way: source (manifests, later the API watch) -> ClusterStore ->
ClusterZone -> Handler/AnswerTable -> UDP/TCP listeners.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field

from clusterdns.kube.manifests import load_manifests
from clusterdns.kube.store import ClusterStore
from clusterdns.server.handler import Handler
from clusterdns.server.table import AnswerTable
from clusterdns.server.tcp import TCPLimits, TCPProtocol
from clusterdns.server.udp import UDPProtocol
from clusterdns.zones.kubernetes import ClusterZone
from clusterdns.zones.router import Router

log = logging.getLogger("clusterdns")

# CORE-READY


@dataclass
class ServeOptions:
    """Everything `clusterdns serve` needs; built once by the CLI (uvicorn's Config habit)."""

    manifests: list[str] = field(default_factory=list)
    listen: list[str] = field(default_factory=lambda: ["0.0.0.0:53"])
    zone: str = "cluster.local"
    ttl: int = 5  # CoreDNS default; kubeadm sets 30
    pods: str = "insecure"  # kube-dns compatible, kubeadm's Corefile
    endpoint_pod_names: bool = False
    ignore_empty_service: bool = False
    max_udp: int = 1232  # DNS flag day 2020
    tcp_idle_timeout: float = 10.0
    max_tcp_connections: int = 1024
    answer_cache_size: int = 200_000


class StartupError(Exception):
    """A start-up failure with one line that says what to do."""


def parse_listen(spec: str, default_port: int = 53) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT`, `:PORT` (all IPv4 addresses) or `HOST`."""
    host, port = spec, default_port
    if spec.startswith("["):
        close = spec.find("]")
        if close < 0:
            raise ValueError(f"bad listen address {spec!r}: missing ']'")
        host, rest = spec[1:close], spec[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad listen address {spec!r}")
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, p = spec.split(":")
        port = int(p)
    if not 0 <= port < 65536:
        raise ValueError(f"bad port in listen address {spec!r}")
    return host or "0.0.0.0", port


class Listeners:
    """UDP and TCP sockets for every listen address, sharing one handler."""

    def __init__(self, handler: Handler, limits: TCPLimits) -> None:
        self.handler = handler
        self.limits = limits
        self.udp: list[asyncio.DatagramTransport] = []
        self.tcp: list[asyncio.AbstractServer] = []
        self.bound: list[tuple[str, int]] = []

    async def start(self, addresses: list[tuple[str, int]]) -> None:
        loop = asyncio.get_running_loop()
        for host, port in addresses:
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: UDPProtocol(self.handler), local_addr=(host, port))
                self.udp.append(transport)
                bound_port = transport.get_extra_info("sockname")[1]
                server = await loop.create_server(
                    lambda: TCPProtocol(self.handler, self.limits), host, bound_port, reuse_address=True)
                self.tcp.append(server)
            except PermissionError:
                raise StartupError(f"cannot listen on {host}:{port}: permission denied "
                                   "(ports below 1024 need root or CAP_NET_BIND_SERVICE; try --listen 127.0.0.1:5353)") from None
            except OSError as exc:
                raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                                   "(is another DNS server using it? pick another with --listen)") from None
            self.bound.append((host, bound_port))

    def close(self) -> None:
        for t in self.udp:
            t.close()
        for s in self.tcp:
            s.close()


def build_cluster(opts: ServeOptions) -> tuple[ClusterStore, Handler]:
    """Store, zone, table and handler, wired so store changes reach the table."""
    store = ClusterStore(endpoint_pod_names=opts.endpoint_pod_names)
    own = tuple(h for h, _ in map(parse_listen, opts.listen) if h not in ("0.0.0.0", "::"))
    zone = ClusterZone(store, opts.zone, opts.ttl, opts.pods, opts.ignore_empty_service, own)
    table = AnswerTable(opts.answer_cache_size)
    store.subscribe(table.invalidate)
    return store, Handler(Router(zone), table, opts.max_udp)


async def serve(opts: ServeOptions) -> int:
    """Run the cluster DNS server until SIGTERM/SIGINT."""
    started = time.monotonic()
    store, handler = build_cluster(opts)
    objects, skipped = load_manifests(opts.manifests)
    store.load(objects)
    listeners = Listeners(handler, TCPLimits(opts.tcp_idle_timeout, opts.max_tcp_connections))
    try:
        await listeners.start([parse_listen(s) for s in opts.listen])
    except StartupError:
        listeners.close()
        raise
    log.info("serving %s on %s (udp+tcp): %d services, %d endpoint slices, %d skipped objects; ready in %.2fs",
             opts.zone, ", ".join(f"{h}:{p}" for h, p in listeners.bound), len(store.services),
             len(store.slices), skipped, time.monotonic() - started)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    listeners.close()
    return 0


def run(coro) -> int:  # noqa: ANN001 - a coroutine returning an exit code
    """Run on uvloop when it imports (uvicorn loops/auto.py), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
