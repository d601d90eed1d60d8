"""What happens around answering, the same in both modes: the /metrics endpoint, the
query log, periodic log flushing, and the ordered stop on SIGTERM.

Stop order (CoreDNS `health { lameduck }`, uvicorn's shutdown):

1. /ready fails (when it is served) and the lame duck keeps answering for `lameduck`
   seconds, so Service endpoints drain before anything closes; a second SIGTERM or
   SIGINT ends the lame duck at once;
2. the listeners stop taking queries: UDP sockets drop new datagrams (uvloop cannot
   pause a UDP socket, and closing it would lose the answers still to be sent), TCP
   servers stop accepting, connections stop reading;
3. answers already in the works (forwarded questions, pipelined TCP queries) are sent,
   for at most `shutdown_timeout` seconds;
4. the sockets close; the caller then stops the watch, the probes and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from clusterdns.obs import logs
from clusterdns.obs.logs import QueryLog
from clusterdns.obs.sources import Sources, observe_programming

if TYPE_CHECKING:
    from clusterdns.obs.metrics import Metrics

log = logging.getLogger("clusterdns")


class StartupError(Exception):
    """A start-up failure with one line that says what to do."""


class Draining(Protocol):
    """What `drain` needs from the listeners (app.Listeners)."""

    def stop_reading(self) -> None: ...
    def pending(self) -> int: ...
    def close(self) -> None: ...


async def listen(listeners: Any, addresses: list[str], reuse_port: bool = False) -> None:
    """Bind every listen address (server/listeners.py); a failure is a StartupError."""
    from clusterdns.server.listeners import BindFailed, parse_listen

    try:
        await listeners.start([parse_listen(s) for s in addresses], reuse_port=reuse_port)
    except BindFailed as exc:
        raise StartupError(str(exc)) from None


def bind_address(address: str, endpoint: str, option: str) -> str:
    """`address` with a `${VAR}` host read from the environment (obs/bind.py); a StartupError
    naming the endpoint, the option and the variable when it is unset or not an IP."""
    from clusterdns.obs.bind import BindError, resolve

    try:
        return resolve(address, option)
    except BindError as exc:
        raise StartupError(f"cannot serve {endpoint}: {exc}") from None


async def start_metrics(address: str | None, sources: Sources) -> Metrics | None:
    """Serve /metrics on `address` from the handler's counters; None when off."""
    if not address:
        return None
    from clusterdns.obs.metrics import (
        Metrics,  # prometheus_client only when /metrics is served
    )

    address = bind_address(address, "/metrics", "--metrics (config `metrics:`)")
    metrics = Metrics(sources, stats=sources.handler.stats)
    metrics.calibrate()
    try:
        await metrics.start(address)
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot serve /metrics on {address}: {getattr(exc, 'strerror', None) or exc} "
                           "(pick another address with --metrics or `metrics:` in the config)") from None
    return metrics


async def worker_families(fds: list[int]) -> Callable[[], list[list[Any]]]:
    """Read the workers' metric pipes; returns what the collector calls at scrape time."""
    from clusterdns.obs.metrics import FamilyReader

    loop = asyncio.get_running_loop()
    readers = []
    for fd in fds:
        _, reader = await loop.connect_read_pipe(FamilyReader, os.fdopen(fd, "rb", buffering=0))
        readers.append(reader)
    return lambda: [r.latest for r in readers]


def query_log(enabled: bool, sample: int) -> QueryLog | None:
    return QueryLog(sample) if enabled else None


async def lame_duck(stop: asyncio.Event, seconds: float, health: Any) -> None:
    """Fail /ready and keep answering for `seconds`, or until `stop` is set again."""
    if health is None or seconds <= 0:
        return
    health.draining = True
    stop.clear()
    log.info("lame duck: /ready fails, still answering for %g s (signal again to stop now)", seconds)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


async def drain(listeners: Draining, timeout: float) -> None:
    """Stop taking queries, let the answers in flight go out (bounded), close."""
    listeners.stop_reading()
    pending = listeners.pending()
    log.info("listeners closed to new queries; %d answers in flight (waiting at most %g s)", pending, timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while listeners.pending() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    left = listeners.pending()
    if left:
        log.warning("%d answers still in flight after %g s; closing anyway", left, timeout)
    listeners.close()


async def flush_logs(interval: float = 5.0) -> None:
    """Write the counts of collapsed error bursts as their windows end (runs until cancelled)."""
    while True:
        await asyncio.sleep(interval)
        logs.flush()


def programming_observer(store: Any, sources: Sources) -> Callable[[Any], None]:
    """A KubeSource observer feeding `coredns_kubernetes_dns_programming_duration_seconds`
    from EndpointSlice events (CoreDNS measures endpoints changes only)."""

    def observe(timing: Any) -> None:
        if timing.resource != "endpointslices":
            return
        ns, _, name = timing.ref.partition("/")
        sl = store.slices.get((ns, name))
        svc = store.services.get((ns, sl.service)) if sl is not None and sl.service else None
        kind = "headless_with_selector" if svc is not None and svc.headless else "cluster_ip"
        observe_programming(sources, kind, timing.latency)

    return observe


def plugins(**enabled: bool) -> tuple[str, ...]:
    """CoreDNS plugin names this process stands in for (`coredns_plugin_enabled`)."""
    return tuple(sorted(name for name, on in enabled.items() if on))
