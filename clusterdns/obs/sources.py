"""What /metrics reads at scrape time, and the few samples the server records for it.

Kept apart from `obs/metrics.py` (the prometheus_client collector and the endpoint) so
that a process without /metrics never imports prometheus_client: ~25 ms of start-up and
5 MB of RSS.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from clusterdns.obs.counters import PROGRAMMING_BUCKETS, _Hist


@dataclass
class ReloadStats:
    """Config reloads (SIGHUP or a changed file)."""

    succeeded: int = 0
    failed: int = 0
    last_success: float = 0.0  # time.time()


@dataclass
class Sources:
    """What the collector reads at scrape time; the app fills it and may swap parts on reload.

    Every field is optional: a mode without a Kubernetes watch leaves `kube` None.
    """

    handler: Any = None  # server.handler.Handler: `errors` (internal errors caught = panics)
    forwarding: Any = None  # forward.forwarding.Forwarding: `.table.zones`, `.errors`
    kube: Any = None  # kube.watch.KubeSource: `.states`
    store: Any = None  # kube.store.ClusterStore: object dicts, `synced`, `last_change`
    tcp_limits: Any = None  # server.tcp.TCPLimits: `open`, optional `refused`
    transfers: Any = None  # server.tcp.Transfers: `results` by `RESULTS`
    rrl: Any = None  # server.rrl.RRL: `dropped`, `slipped` per listener slot, `table`; None: RRL off
    plugins: tuple[str, ...] = ()  # CoreDNS plugin names this process runs (coredns_plugin_enabled)
    reloads: ReloadStats = field(default_factory=ReloadStats)
    programming: dict[str, _Hist] = field(default_factory=dict)  # service_kind -> histogram
    started: float = field(default_factory=time.time)


def observe_programming(sources: Sources, service_kind: str, seconds: float) -> None:
    """One DNS programming latency sample (slow path: a watch event)."""
    hist = sources.programming.get(service_kind)
    if hist is None:
        hist = sources.programming[service_kind] = _Hist(len(PROGRAMMING_BUCKETS))
    hist.observe(PROGRAMMING_BUCKETS, max(0.0, seconds))
