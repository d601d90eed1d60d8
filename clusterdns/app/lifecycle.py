"""The start-up helpers every mode's stack uses: binding the listen addresses and the
/metrics endpoint with one-line errors (StartupError), the query log, the workers' metric
pipes, and the CoreDNS plugin names. When the parts serve and stop is server.py's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clusterdns.obs.logs import QueryLog
from clusterdns.obs.sources import Sources, observe_programming

if TYPE_CHECKING:
    from clusterdns.obs.metrics import Metrics


class StartupError(Exception):
    """A start-up failure with one line that says what to do."""


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
        raise StartupError(
            f"cannot serve /metrics on {address}: {getattr(exc, 'strerror', None) or exc} "
            "(pick another address with --metrics or `metrics:` in the config)"
        ) from None
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
