"""Composition root: builds the parts for a mode, starts them in order, stops them in order.

Data flows one way: source (manifests or the API watch) -> ClusterStore ->
ClusterZone -> Handler/AnswerTable -> UDP/TCP listeners. With the API watch, /health
and /ready are served too, and SIGTERM starts a lame-duck period (CoreDNS `health
{ lameduck }`): /ready fails while queries are still answered, then the listeners close.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field

from clusterdns.kube.client import ApiConfigError, load_connection
from clusterdns.kube.manifests import load_manifests
from clusterdns.kube.store import ClusterStore
from clusterdns.kube.watch import KubeSource, WatchSettings
from clusterdns.obs.health import HealthServer
from clusterdns.server.handler import Handler
from clusterdns.server.table import AnswerTable
from clusterdns.server.tcp import TCPLimits, TCPProtocol
from clusterdns.server.udp import UDPProtocol
from clusterdns.workers import Journal
from clusterdns.zones.kubernetes import ClusterZone
from clusterdns.zones.router import Router
from clusterdns.zones.upstreams import cluster_forwarding

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
    workers: int = 1  # processes sharing the port (SO_REUSEPORT); one owns the source
    # the API source (used when there are no manifests)
    kubeconfig: str | None = None  # None: in-cluster, else $KUBECONFIG / ~/.kube/config
    context: str | None = None
    namespaces: tuple[str, ...] = ()  # CoreDNS `namespaces`: only these exist
    labels: str | None = None  # CoreDNS `labels`: selector for Services/EndpointSlices
    sync_timeout: float = 5.0  # CoreDNS `startup_timeout`
    # None: served only with the API source (:8080 / :8181, CoreDNS's ports)
    health: str | None = None
    ready: str | None = None
    lameduck: float = 5.0  # kubeadm's `health { lameduck 5s }`; applies when /ready is served
    # forwarding of names outside the zone (zones/upstreams.py); off unless one is given
    upstreams: list[str] = field(default_factory=list)
    resolv_conf: str | None = None  # `forward . /etc/resolv.conf`
    stubs: list[str] = field(default_factory=list)  # ZONE=IP[:PORT][,IP...]
    kube_dns_configmap: str | None = None  # stubDomains / upstreamNameservers
    loop_detect: bool = True  # CoreDNS `loop`: exit when the upstreams send our probe back


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

    async def start(self, addresses: list[tuple[str, int]], reuse_port: bool = False) -> None:
        for host, port in addresses:
            try:
                bound_port = await self._bind(host, port, reuse_port)
            except PermissionError:
                raise StartupError(f"cannot listen on {host}:{port}: permission denied "
                                   "(ports below 1024 need root or CAP_NET_BIND_SERVICE; try --listen 127.0.0.1:5353)") from None
            except OSError as exc:
                raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                                   "(is another DNS server using it? pick another with --listen)") from None
            self.bound.append((host, bound_port))

    async def _bind(self, host: str, port: int, reuse_port: bool) -> int:
        """UDP and TCP on one port. For port 0 the kernel picks the UDP port, which a TCP
        socket may already hold: then try another (bounded)."""
        loop = asyncio.get_running_loop()
        for attempt in range(20):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: UDPProtocol(self.handler), local_addr=(host, port), reuse_port=reuse_port or None)
            bound_port = transport.get_extra_info("sockname")[1]
            try:
                server = await loop.create_server(
                    lambda: TCPProtocol(self.handler, self.limits), host, bound_port, reuse_address=True,
                    reuse_port=reuse_port or None)
            except OSError:
                transport.close()
                if port != 0 or attempt == 19:
                    raise
                continue
            self.udp.append(transport)
            self.tcp.append(server)
            return bound_port
        raise AssertionError("unreachable")

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
    try:
        forwarding = cluster_forwarding(
            zone.zone, upstreams=opts.upstreams, resolv_conf=opts.resolv_conf, stubs=opts.stubs,
            kube_dns_configmap=opts.kube_dns_configmap, max_udp=opts.max_udp,
            loop_detect=opts.loop_detect)
    except (ValueError, OSError) as exc:
        raise StartupError(f"forwarding: {exc}") from None
    return store, Handler(Router(zone), table, opts.max_udp, forwarding)


def build_source(opts: ServeOptions, store: ClusterStore) -> KubeSource:
    """The API watch feeding `store`; a bad kubeconfig is a StartupError."""
    try:
        conn = load_connection(opts.kubeconfig, opts.context)
    except ApiConfigError as exc:
        raise StartupError(f"{exc} (pass --kubeconfig PATH [--context NAME], or run in a pod)") from None
    settings = WatchSettings(namespaces=frozenset(opts.namespaces), labels=opts.labels,
                             pods=opts.pods == "verified")
    return KubeSource(store, conn, settings)


def _log_source_end(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the Kubernetes API watch stopped; answers will not change any more",
                  exc_info=task.exception())


async def serve(opts: ServeOptions, journal: Journal | None = None) -> int:
    """Run the cluster DNS server until SIGTERM/SIGINT; with `journal`, feed the workers."""
    started = time.monotonic()
    store, handler = build_cluster(opts)
    if journal is not None:
        await journal.connect()
        store.follow(journal.send)
    source: KubeSource | None = None
    source_task: asyncio.Task | None = None
    health: HealthServer | None = None
    skipped = 0
    if opts.manifests:
        objects, skipped = load_manifests(opts.manifests)
        store.load(objects)
    else:
        source = build_source(opts, store)
    listeners = Listeners(handler, TCPLimits(opts.tcp_idle_timeout, opts.max_tcp_connections))
    try:
        if source is not None or opts.health or opts.ready:
            health = HealthServer(opts.health or ":8080", opts.ready or ":8181",
                                  source.missing if source is not None else None)
            try:
                await health.start()
            except OSError as exc:
                raise StartupError(f"cannot serve /health or /ready: {exc.strerror or exc} "
                                   "(pick other addresses with --health / --ready)") from None
        if source is not None:
            source_task = asyncio.create_task(source.run(), name="kube-source")
            source_task.add_done_callback(_log_source_end)
            await source.wait_synced(opts.sync_timeout)
        await listeners.start([parse_listen(s) for s in opts.listen], reuse_port=opts.workers > 1)
    except BaseException:
        await _shutdown(listeners, source_task, health)
        raise
    what = f"{len(store.services)} services, {len(store.slices)} endpoint slices"
    what += f", {skipped} skipped objects" if source is None else f" from the API ({'synced' if store.synced else 'not synced yet'})"
    log.info("serving %s on %s (udp+tcp): %s; ready in %.2fs",
             opts.zone, ", ".join(f"{h}:{p}" for h, p in listeners.bound), what, time.monotonic() - started)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    forwarding = handler.forwarding
    if forwarding is not None:
        forwarding.start(stop.set, listeners.bound)  # a forwarding loop sets `stop`
    await stop.wait()
    if forwarding is not None and forwarding.looped:
        await _shutdown(listeners, source_task, health)
        forwarding.close()
        return 1  # the cause was logged plainly
    if health is not None and opts.lameduck > 0:
        # lame duck: readiness fails so endpoints drain, queries are still answered
        health.draining = True
        stop.clear()
        log.info("lame duck: /ready fails, still answering for %g s (signal again to stop now)", opts.lameduck)
        try:
            async with asyncio.timeout(opts.lameduck):
                await stop.wait()
        except TimeoutError:
            pass
    log.info("shutting down")
    await _shutdown(listeners, source_task, health)
    if forwarding is not None:
        forwarding.close()
    return 0


async def _shutdown(listeners: Listeners, source_task: asyncio.Task | None, health: HealthServer | None) -> None:
    """DNS listeners first, then the watch, then the health endpoints."""
    listeners.close()
    if source_task is not None:
        source_task.cancel()
        try:
            await source_task
        except (asyncio.CancelledError, Exception):
            pass
    if health is not None:
        await health.stop()


def run(coro) -> int:  # noqa: ANN001 - a coroutine returning an exit code
    """Run on uvloop when it imports (uvicorn loops/auto.py), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
