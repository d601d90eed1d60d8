"""Prometheus metrics under CoreDNS's names, fed by plain-int counters.

Operators already have CoreDNS dashboards and alerts (`CoreDNSErrorsHigh`,
`CoreDNSLatencyHigh`, ...), so the names, labels and buckets are CoreDNS's
(operators.md 1.4); clusterdns's own metrics use the `clusterdns_` prefix.

Nothing on the query path calls prometheus_client: a labelled `Counter.inc()` costs
about as much as a whole cached answer (~1 us). Instead:

* every distinct kind of answer -- (proto, plugin, zone, qtype, rcode, DO, request
  size, response size) -- gets one `list[int]` of per-listener counts, a *traffic
  class*. Each compiled answer keeps references to its classes, keyed by the query's
  size and shape, so the hot path pays one dict lookup and one `counts[slot] += 1`; the
  sizes are exact without per-query work;
* general-path answers (parsed, forwarded, errors) are counted into the same
  classes and timed exactly with `perf_counter`;
* hot-path answers are synchronous Python of about a microsecond, so they fall in the
  first duration bucket (<= 0.25 ms) by construction; their share of `_sum` is the
  count times a per-process calibration of that path (`calibrate_hot_path`);
* `DNSCollector` folds the classes (a few hundred, not one per name) into CoreDNS's
  metric families at scrape time, and reads the caches, forwarders, Kubernetes watch
  and the hot path's counters the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from clusterdns import __version__
from clusterdns.obs.counters import (  # noqa: F401 - re-exported: the metric side's vocabulary
    DROPPED,
    MAX_CLASSES,
    MONITORED_TYPES,
    PROGRAMMING_BUCKETS,
    RCODES,
    SIZE_BUCKETS,
    TIME_BUCKETS,
    Listener,
    QueryStats,
    _bucket_index,
    _Hist,
    calibrate_hot_path,
    question_info,
    rcode_label,
    server_label,
    type_label,
)
from clusterdns.obs.sources import ReloadStats, Sources, observe_programming  # noqa: F401 - re-exported

log = logging.getLogger("clusterdns")

#: every metric this module exports -> "{labels} - meaning", the metric list of docs/metrics.md
#: (tests/ops/test_metrics_names.py checks it is complete)
DOCUMENTED: dict[str, str] = {
    "coredns_dns_requests_total": "{server, zone, view, proto, family, type} - queries; `zone` is `.` "
    "(one server block, as kubeadm's Corefile), `dropped` for packets "
    "answered with nothing.",
    "coredns_dns_responses_total": "{server, zone, view, rcode, plugin} - answers by rcode and by who "
    "answered: `kubernetes`, `cache`, `forward`, or empty (the server "
    "itself: FORMERR, NOTIMP, REFUSED).",
    "coredns_dns_request_duration_seconds": "{server, zone, view, type} - time to answer; CoreDNS's "
    "buckets (0.25 ms doubling, 16). Hot-path answers are "
    "counted in the first bucket, their `_sum` share is "
    "calibrated at start.",
    "coredns_dns_request_size_bytes": "{server, zone, view, proto} - query sizes.",
    "coredns_dns_response_size_bytes": "{server, zone, view, proto} - answer sizes.",
    "coredns_dns_do_requests_total": "{server, zone, view} - queries with the DNSSEC OK bit.",
    "coredns_build_info": "{version, revision, goversion} - 1; clusterdns's version, "
    "$CLUSTERDNS_REVISION and the Python version (dashboards count pods with it).",
    "coredns_panics_total": "{} - internal errors caught while answering (each cost one SERVFAIL).",
    "coredns_plugin_enabled": "{server, zone, view, name} - 1 per CoreDNS plugin this process "
    "stands in for (kubernetes, forward, cache, log, ...).",
    "coredns_reload_failed_total": "{} - config reloads that were rejected (the old config stayed).",
    "coredns_cache_entries": "{server, type, zones, view} - forward-cache entries, type success|denial.",
    "coredns_cache_hits_total": "{server, type, zones, view} - forward-cache hits.",
    "coredns_cache_misses_total": "{server, zones, view} - forward-cache misses (deprecated in CoreDNS).",
    "coredns_cache_requests_total": "{server, zones, view} - forward-cache lookups.",
    "coredns_cache_prefetch_total": "{server, zones, view} - background refreshes of popular entries.",
    "coredns_cache_served_stale_total": "{server, zones, view} - answers served stale (RFC 8767).",
    "coredns_cache_evictions_total": "{server, type, zones, view} - entries evicted when the cache was full.",
    "coredns_forward_max_concurrent_rejects_total": "{} - questions REFUSED over forward.max_concurrent.",
    "coredns_forward_healthcheck_broken_total": "{} - times every upstream of a forwarder was down.",
    "coredns_proxy_request_duration_seconds": "{proxy_name, to, rcode} - upstream exchange times.",
    "coredns_proxy_healthcheck_failures_total": "{proxy_name, to, rcode} - failed `. IN NS` probes.",
    "coredns_proxy_conn_cache_hits_total": "{proxy_name, to, proto} - pooled TCP connections reused.",
    "coredns_proxy_conn_cache_misses_total": "{proxy_name, to, proto} - TCP connections opened.",
    "coredns_kubernetes_dns_programming_duration_seconds": "{service_kind} - from a watch event's "
    "arrival to its answers being served "
    "(CoreDNS measures from the "
    "EndpointSlice's last-change-trigger-time).",
    "clusterdns_dropped_packets_total": "{server, proto, reason} - packets answered with nothing: "
    "`short` (no header), `response` (QR set: answering could loop), "
    "`tcp_connection_cap`.",
    "clusterdns_config_reloads_total": "{result} - config reloads, success|failure.",
    "clusterdns_config_last_reload_success_timestamp_seconds": "{} - when the running config was loaded.",
    "clusterdns_hot_path_answers_total": "{proto} - queries answered on the hot path: compiled "
    "cluster answers and plain-lane cache hits.",
    "clusterdns_tcp_connections": "{} - open DNS-over-TCP connections.",
    "clusterdns_zone_transfers_total": "{result} - zone transfers asked over TCP: `success`, `refused` "
    "(client not in transfer_to), `busy` (over max_transfers), `notauth` (not a zone "
    "served), `aborted` (the connection went first).",
    "coredns_rrl_responses_exceeded_total": "{server} - UDP answers over the response-rate limit "
    "(dropped or slipped); only with RRL on. CoreDNS's rrl "
    "plugin labels it `client_ip`: here `server`, so spoofed "
    "sources cannot grow the series.",
    "clusterdns_rrl_responses_total": "{server, action} - UDP answers RRL did not send as computed: "
    "`dropped`, or `slipped` (sent empty with TC=1); only with RRL on.",
    "clusterdns_rrl_table_entries": "{} - client prefixes RRL tracks (at most rrl.max_table_size); only with RRL on.",
    "clusterdns_forward_queries_total": "{zone} - questions sent upstream (cache misses).",
    "clusterdns_forward_failures_total": "{zone} - upstream exchanges that timed out or failed.",
    "clusterdns_forward_spoofed_total": "{zone} - upstream packets dropped: wrong address, ID or "
    "question (RFC 5452); a rise means spoofing or a broken middlebox.",
    "clusterdns_forward_tc_retries_total": "{zone} - truncated UDP answers retried over TCP.",
    "clusterdns_kubernetes_objects": "{kind} - objects in the record store.",
    "clusterdns_kubernetes_synced": "{} - 1 once every watched resource has been listed.",
    "clusterdns_kubernetes_last_change_timestamp_seconds": "{} - when the record store last changed.",
    "clusterdns_kubernetes_relists_total": "{resource} - full re-lists after the first (410 Gone, errors).",
    "clusterdns_kubernetes_watch_restarts_total": "{resource} - watch streams opened after the first.",
    "clusterdns_kubernetes_watch_events_total": "{resource} - watch events applied.",
    "clusterdns_kubernetes_watch_failures": "{resource} - consecutive list/watch failures (0 = healthy).",
    "clusterdns_kubernetes_last_sync_timestamp_seconds": "{resource} - when the API last confirmed the "
    "resource (list, event or bookmark); alert on "
    "`time() - x > 300`.",
}


# --------------------------------------------------------------------------- other sources


# --------------------------------------------------------------------------- the collector


def _counter(name: str, doc: str, labels: Iterable[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: Iterable[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class DNSCollector(Collector):
    """Turns `QueryStats` and `Sources` into CoreDNS-named metric families at scrape time."""

    def __init__(self, stats: QueryStats, sources: Sources, view: str = "") -> None:
        self.stats = stats
        self.sources = sources
        self.view = view
        self.remote: Callable[[], list[list[Metric]]] | None = None
        """With --workers: the latest families each worker sent (`merge` adds them in)."""

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: names are linted by tests/ops/test_metrics_names.py

    def collect(self) -> Iterator[Metric]:
        if self.remote is None:
            yield from self.local()
        else:
            yield from merge(list(self.local()), self.remote())

    def local(self) -> Iterator[Metric]:
        """This process's families."""
        yield from self._dns()
        yield from self._server()
        yield from self._cache()
        yield from self._forward()
        yield from self._kubernetes()
        yield from self._rrl()

    # -- coredns_dns_* ---------------------------------------------------------------

    def _primary_server(self) -> str:
        ls = self.stats.listeners
        return ls[0].server if ls else "dns://:53"

    def _dns(self) -> Iterator[Metric]:
        st, view = self.stats, self.view
        requests: dict[tuple[str, ...], int] = {}
        responses: dict[tuple[str, ...], int] = {}
        do: dict[tuple[str, ...], int] = {}
        req_size: dict[tuple[str, ...], _Hist] = {}
        resp_size: dict[tuple[str, ...], _Hist] = {}
        hot_dur: dict[tuple[int, str, str], int] = {}
        k: tuple[Any, ...]  # one scratch key, reused for each table
        for (tcp, hot, plugin, zone, qtype, rcode, dobit, rq, rs), counts in list(st.classes.items()):
            proto = "tcp" if tcp else "udp"
            tlabel = type_label(qtype)
            for slot, n in enumerate(counts):
                if not n or slot >= len(st.listeners):
                    continue
                lst = st.listeners[slot]
                k = (lst.server, zone, view, proto, lst.family, tlabel)
                requests[k] = requests.get(k, 0) + n
                k = (lst.server, zone, view, rcode_label(rcode), plugin)
                responses[k] = responses.get(k, 0) + n
                if dobit:
                    k = (lst.server, zone, view)
                    do[k] = do.get(k, 0) + n
                k = (lst.server, zone, view, proto)
                for table, size in ((req_size, rq), (resp_size, rs)):
                    h = table.get(k)
                    if h is None:
                        h = table[k] = _Hist(len(SIZE_BUCKETS))
                    h.counts[_bucket_index(SIZE_BUCKETS, size)] += n
                    h.sum += size * n
                if hot:
                    hk = (slot, zone, tlabel)
                    hot_dur[hk] = hot_dur.get(hk, 0) + n
        for (slot, tcp, _reason), n in list(st.dropped.items()):
            if slot < len(st.listeners):
                lst = st.listeners[slot]
                k = (lst.server, DROPPED, view, "tcp" if tcp else "udp", lst.family, "other")
                requests[k] = requests.get(k, 0) + n

        m = _counter(
            "coredns_dns_requests",
            "Counter of DNS requests made per zone, protocol and family.",
            ("server", "zone", "view", "proto", "family", "type"),
        )
        for k, n in sorted(requests.items()):
            m.add_metric(list(k), n)
        yield m
        m = _counter(
            "coredns_dns_responses", "Counter of response status codes.", ("server", "zone", "view", "rcode", "plugin")
        )
        for k, n in sorted(responses.items()):
            m.add_metric(list(k), n)
        yield m
        m = _counter(
            "coredns_dns_do_requests", "Counter of DNS requests with DO bit set per zone.", ("server", "zone", "view")
        )
        for k, n in sorted(do.items()):
            m.add_metric(list(k), n)
        yield m
        for name, doc, table in (
            ("coredns_dns_request_size_bytes", "Size of the request in bytes.", req_size),
            ("coredns_dns_response_size_bytes", "Size of the returned response in bytes.", resp_size),
        ):
            fam = HistogramMetricFamily(name, doc, labels=["server", "zone", "view", "proto"])
            for k, hist in sorted(table.items()):
                fam.add_metric(list(k), hist.cumulative(SIZE_BUCKETS), hist.sum)
            yield fam
        # durations: slow path timed, hot path in the first bucket with the calibrated cost
        merged: dict[tuple[int, str, str], _Hist] = {}
        for (slot, zone, qtype), hist in list(st.durations.items()):
            k = (slot, zone, type_label(qtype))
            acc = merged.get(k)
            if acc is None:
                acc = merged[k] = _Hist(len(TIME_BUCKETS))
            acc.counts = [a + b for a, b in zip(acc.counts, hist.counts, strict=True)]
            acc.sum += hist.sum
        for k, n in hot_dur.items():
            acc = merged.get(k)
            if acc is None:
                acc = merged[k] = _Hist(len(TIME_BUCKETS))
            acc.counts[0] += n
            acc.sum += n * st.hot_seconds
        fam = HistogramMetricFamily(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took per zone.",
            labels=["server", "zone", "view", "type"],
        )
        for (slot, zone, tlabel), hist in sorted(merged.items()):
            if slot < len(st.listeners):
                fam.add_metric([st.listeners[slot].server, zone, view, tlabel], hist.cumulative(TIME_BUCKETS), hist.sum)
        yield fam
        d = _counter(
            "clusterdns_dropped_packets", "Queries answered with nothing, by reason.", ("server", "proto", "reason")
        )
        for (slot, tcp, reason), n in sorted(st.dropped.items()):
            if slot < len(st.listeners):
                d.add_metric([st.listeners[slot].server, "tcp" if tcp else "udp", reason], n)
        if self.sources.tcp_limits is not None:
            refused = getattr(self.sources.tcp_limits, "refused", 0)
            if refused:
                d.add_metric([self._primary_server(), "tcp", "tcp_connection_cap"], refused)
        yield d

    # -- process, build, plugins, answer table, reload --------------------------------

    def _server(self) -> Iterator[Metric]:
        src, server, view = self.sources, self._primary_server(), self.view
        m: CounterMetricFamily | GaugeMetricFamily
        m = _gauge(
            "coredns_build_info",
            "A metric with a constant '1' value labeled by version, revision, and goversion "
            "from which CoreDNS was built (here: clusterdns's version and Python).",
            ("version", "revision", "goversion"),
        )
        m.add_metric([__version__, os.environ.get("CLUSTERDNS_REVISION", ""), f"python{platform.python_version()}"], 1)
        yield m
        panics = 0
        for part in (src.handler, src.forwarding):
            panics += getattr(part, "errors", 0) if part is not None else 0
        m = _counter(
            "coredns_panics", "A metrics that counts the number of panics (internal errors caught while answering).", ()
        )
        m.add_metric([], panics)
        yield m
        m = _gauge(
            "coredns_plugin_enabled",
            "A metric that monitors which plugin(s) is(are) enabled.",
            ("server", "zone", "view", "name"),
        )
        for name in src.plugins:
            m.add_metric([server, ".", view, name], 1)
        yield m
        m = _counter("coredns_reload_failed", "Counter of the number of failed reload attempts.", ())
        m.add_metric([], src.reloads.failed)
        yield m
        m = _counter("clusterdns_config_reloads", "Config reloads (SIGHUP or a changed file) by result.", ("result",))
        m.add_metric(["success"], src.reloads.succeeded)
        m.add_metric(["failure"], src.reloads.failed)
        yield m
        m = _gauge(
            "clusterdns_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load (start-up counts).",
            (),
        )
        m.add_metric([], src.reloads.last_success or src.started)
        yield m
        if src.handler is not None:
            m = _counter(
                "clusterdns_hot_path_answers",
                "Queries answered on the hot path (compiled answers, plain-lane cache hits).",
                ("proto",),
            )
            hits = {False: 0, True: 0}
            for k, counts in list(self.stats.classes.items()):
                if k[1]:
                    hits[k[0]] += sum(counts)
            m.add_metric(["udp"], hits[False])
            m.add_metric(["tcp"], hits[True])
            yield m
        if src.tcp_limits is not None:
            m = _gauge("clusterdns_tcp_connections", "Open DNS-over-TCP connections.", ())
            m.add_metric([], len(src.tcp_limits.open))
            yield m
        if src.transfers is not None:
            m = _counter("clusterdns_zone_transfers", "Zone transfers asked over TCP, by result.", ("result",))
            for result in src.transfers.RESULTS:
                m.add_metric([result], src.transfers.results.get(result, 0))
            yield m

    # -- coredns_rrl_* (only while response-rate limiting is on) ----------------------

    def _rrl(self) -> Iterator[Metric]:
        rrl = self.sources.rrl
        if rrl is None:
            return
        m: CounterMetricFamily | GaugeMetricFamily
        ls = self.stats.listeners
        servers = sorted({lst.server for lst in ls}) or [self._primary_server()]
        dropped: dict[str, int] = dict.fromkeys(servers, 0)
        slipped: dict[str, int] = dict.fromkeys(servers, 0)
        for table, counts in ((dropped, rrl.dropped), (slipped, rrl.slipped)):
            for slot, n in list(counts.items()):
                server = ls[slot].server if slot < len(ls) else self._primary_server()
                table[server] = table.get(server, 0) + n
        m = _counter("coredns_rrl_responses_exceeded", "Counter of responses exceeding QPS limit.", ("server",))
        for server in sorted(dropped):
            m.add_metric([server], dropped[server] + slipped.get(server, 0))
        yield m
        m = _counter(
            "clusterdns_rrl_responses",
            "UDP answers response-rate limiting dropped or sent empty with TC=1 (slipped).",
            ("server", "action"),
        )
        for server in sorted(dropped):
            m.add_metric([server, "dropped"], dropped[server])
            m.add_metric([server, "slipped"], slipped.get(server, 0))
        yield m
        m = _gauge("clusterdns_rrl_table_entries", "Client prefixes response-rate limiting tracks.", ())
        m.add_metric([], len(rrl.table))
        yield m

    # -- coredns_cache_* -------------------------------------------------------------

    def _caches(self) -> list[tuple[str, Any]]:
        fw = self.sources.forwarding
        if fw is None:
            return []
        return [(z.zone, z.cache) for z in fw.table.zones if getattr(z, "cache", None) is not None]

    def _cache(self) -> Iterator[Metric]:
        caches = self._caches()
        if not caches:
            return
        server, view = self._primary_server(), self.view
        entries = _gauge(
            "coredns_cache_entries", "The number of elements in the cache.", ("server", "type", "zones", "view")
        )
        hits = _counter("coredns_cache_hits", "The count of cache hits.", ("server", "type", "zones", "view"))
        misses = _counter(
            "coredns_cache_misses",
            "The count of cache misses. Deprecated, derive misses from cache hits/requests counters.",
            ("server", "zones", "view"),
        )
        requests = _counter("coredns_cache_requests", "The count of cache requests.", ("server", "zones", "view"))
        prefetch = _counter(
            "coredns_cache_prefetch",
            "The number of times the cache has prefetched a cached item.",
            ("server", "zones", "view"),
        )
        stale = _counter(
            "coredns_cache_served_stale",
            "The number of requests served from stale cache entries.",
            ("server", "zones", "view"),
        )
        evictions = _counter(
            "coredns_cache_evictions", "The count of cache evictions.", ("server", "type", "zones", "view")
        )
        for zone, cache in caches:
            sizes = cache.sizes  # the two parts' lengths: no walk over the entries per scrape
            entries.add_metric([server, "success", zone, view], sizes["success"])
            entries.add_metric([server, "denial", zone, view], sizes["denial"])
            denial_hits = getattr(cache, "denial_hits", 0)
            hits.add_metric([server, "success", zone, view], cache.hits - denial_hits)
            hits.add_metric([server, "denial", zone, view], denial_hits)
            misses.add_metric([server, zone, view], cache.misses)
            requests.add_metric([server, zone, view], cache.hits + cache.misses)
            prefetch.add_metric([server, zone, view], cache.prefetches)
            stale.add_metric([server, zone, view], cache.stale)
            by_kind = getattr(cache, "evictions_by_type", None)
            if by_kind is not None:
                for kind, n in sorted(by_kind.items()):
                    evictions.add_metric([server, kind, zone, view], n)
            else:
                evictions.add_metric([server, "success", zone, view], cache.evictions)
        yield from (entries, hits, misses, requests, prefetch, stale, evictions)

    # -- coredns_forward_* / coredns_proxy_* ------------------------------------------

    def _forward(self) -> Iterator[Metric]:
        fw = self.sources.forwarding
        if fw is None:
            return
        forwarders = fw.forwarders
        rejects = _counter(
            "coredns_forward_max_concurrent_rejects",
            "Counter of the number of queries rejected because the concurrent queries were at maximum.",
            (),
        )
        rejects.add_metric([], sum(f.stats.refused for f in forwarders))
        yield rejects
        broken = _counter(
            "coredns_forward_healthcheck_broken", "Counter of the number of complete failures of the healthchecks.", ()
        )
        broken.add_metric([], sum(getattr(f.stats, "all_down", 0) for f in forwarders))
        yield broken
        duration = HistogramMetricFamily(
            "coredns_proxy_request_duration_seconds",
            "Histogram of the time each request took.",
            labels=["proxy_name", "to", "rcode"],
        )
        hc = _counter(
            "coredns_proxy_healthcheck_failures", "Count of failed health checks.", ("proxy_name", "to", "rcode")
        )
        conn_hits = _counter(
            "coredns_proxy_conn_cache_hits",
            "Counter of connection cache hits per upstream and protocol.",
            ("proxy_name", "to", "proto"),
        )
        conn_misses = _counter(
            "coredns_proxy_conn_cache_misses",
            "Counter of connection cache misses per upstream and protocol.",
            ("proxy_name", "to", "proto"),
        )
        own = {
            name: _counter(f"clusterdns_forward_{name}", doc, ("zone",))
            for name, doc in (
                ("queries", "Questions sent to a forward zone's upstreams (after the cache)."),
                ("failures", "Upstream exchanges that timed out or failed."),
                ("spoofed", "Upstream datagrams or TCP messages dropped: wrong address, ID or question (RFC 5452)."),
                ("tc_retries", "UDP answers with TC retried over TCP."),
            )
        }
        for f in forwarders:
            for name, m in own.items():
                m.add_metric([f.name], getattr(f.stats, name))
            for up in f.upstreams:
                to = str(up.spec)
                us = getattr(up, "stats", None)
                if us is None:
                    continue
                for rcode, hist in sorted(getattr(us, "durations", {}).items()):
                    duration.add_metric(["forward", to, rcode], hist.cumulative(TIME_BUCKETS), hist.sum)
                hc.add_metric(["forward", to, ""], getattr(us, "health_failures", 0))
                conn_hits.add_metric(["forward", to, "tcp"], getattr(us, "conn_hits", 0))
                conn_misses.add_metric(["forward", to, "tcp"], getattr(us, "conn_misses", 0))
        yield from (duration, hc, conn_hits, conn_misses, *own.values())

    # -- kubernetes ------------------------------------------------------------------

    def _kubernetes(self) -> Iterator[Metric]:
        src = self.sources
        h = HistogramMetricFamily(
            "coredns_kubernetes_dns_programming_duration_seconds",
            "Histogram of the time (in seconds) it took to program a dns instance.",
            labels=["service_kind"],
        )
        for kind, hist in sorted(src.programming.items()):
            h.add_metric([kind], hist.cumulative(PROGRAMMING_BUCKETS), hist.sum)
        yield h
        store = src.store
        if store is not None:
            m = _gauge("clusterdns_kubernetes_objects", "Objects held in the record store, by kind.", ("kind",))
            for kind, attr in (
                ("Service", "services"),
                ("EndpointSlice", "slices"),
                ("Endpoints", "endpoints"),
                ("Pod", "pods"),
                ("Namespace", "namespaces"),
            ):
                m.add_metric([kind], len(getattr(store, attr, ())))
            yield m
            m = _gauge("clusterdns_kubernetes_synced", "1 once every watched resource has been listed.", ())
            m.add_metric([], 1 if store.synced else 0)
            yield m
            m = _gauge(
                "clusterdns_kubernetes_last_change_timestamp_seconds", "Unix time the record store last changed.", ()
            )
            m.add_metric([], time.time() - (time.monotonic() - store.last_change))
            yield m
        kube = src.kube
        if kube is None:
            return
        relists = _counter(
            "clusterdns_kubernetes_relists",
            "Full re-lists after the first list (410 Gone, expired continue tokens, errors).",
            ("resource",),
        )
        restarts = _counter(
            "clusterdns_kubernetes_watch_restarts",
            "Watch streams opened after the first (timeouts, dropped connections, errors).",
            ("resource",),
        )
        events = _counter("clusterdns_kubernetes_watch_events", "Watch events applied to the store.", ("resource",))
        failures = _gauge(
            "clusterdns_kubernetes_watch_failures",
            "Consecutive failures of a resource's list/watch loop (0 when healthy).",
            ("resource",),
        )
        last_sync = _gauge(
            "clusterdns_kubernetes_last_sync_timestamp_seconds",
            "Unix time the API last confirmed a resource's state (list, event or bookmark).",
            ("resource",),
        )
        for name, st in sorted(kube.states.items()):
            relists.add_metric([name], max(0, st.lists - 1))
            restarts.add_metric([name], max(0, st.watches - 1))
            events.add_metric([name], st.events)
            failures.add_metric([name], st.failures)
            seen = getattr(st, "last_seen", None)
            if seen:
                last_sync.add_metric([name], seen)
        yield from (relists, restarts, events, failures, last_sync)


# --------------------------------------------------------------------------- workers

#: families that describe the process, not traffic: merged by max, not summed
PER_PROCESS = frozenset(
    {
        "coredns_build_info",
        "coredns_plugin_enabled",
        "coredns_reload_failed",
        "clusterdns_config_reloads",
        "clusterdns_config_last_reload_success_timestamp_seconds",
    }
)


def merge(local: list[Metric], remote: list[list[Metric]]) -> list[Metric]:
    """This process's families plus the workers': same name and labels are summed (max for
    PER_PROCESS), so /metrics shows the pod as one server, as CoreDNS's single process does.
    Families only the leader has (process_*, the Kubernetes watch) pass through."""
    by_name: dict[str, Metric] = {m.name: m for m in local}
    order = [m.name for m in local]
    for families in remote:
        for m in families:
            if m.name.startswith(("process_", "python_")):
                continue  # about the leader's process; workers are separate processes
            mine = by_name.get(m.name)
            if mine is None:
                by_name[m.name] = m
                order.append(m.name)
                continue
            combine = max if m.name in PER_PROCESS else (lambda a, b: a + b)
            values: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {
                (s.name, tuple(sorted(s.labels.items()))): s for s in mine.samples
            }
            for s in m.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                old = values.get(key)
                values[key] = s if old is None else old._replace(value=combine(old.value, s.value))
            merged = Metric(mine.name, mine.documentation, mine.type, mine.unit)
            merged.samples = list(values.values())
            by_name[m.name] = merged
    return [by_name[n] for n in order]


class FamilyFeed:
    """Worker side of --workers metrics: every `interval` s, this process's families go
    down a pipe to the leader, which merges the latest of each worker at scrape time.

    The pipe is an asyncio transport (never blocks the worker's answering); a snapshot is
    skipped while the previous one still waits in the buffer, so a stuck leader costs
    no memory."""

    def __init__(self, collector: DNSCollector, fd: int, interval: float = 2.0) -> None:
        self.collector, self.fd, self.interval = collector, fd, interval
        self.transport: asyncio.WriteTransport | None = None

    def send(self) -> None:
        t = self.transport
        if t is None or t.is_closing() or t.get_write_buffer_size():
            return
        data = pickle.dumps(list(self.collector.local()), protocol=pickle.HIGHEST_PROTOCOL)
        t.write(len(data).to_bytes(4, "big") + data)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(self.fd, "wb", buffering=0))
        while True:
            await asyncio.sleep(self.interval)
            self.send()


class FamilyReader(asyncio.Protocol):
    """Leader side: keeps the latest families one worker sent."""

    def __init__(self) -> None:
        self.latest: list[Metric] = []
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            size = int.from_bytes(self.buf[:4], "big")
            if len(self.buf) < 4 + size:
                return
            self.latest = pickle.loads(self.buf[4 : 4 + size])  # our own worker, over a private pipe
            del self.buf[: 4 + size]


# --------------------------------------------------------------------------- wiring


class Metrics:
    """The private registry, the counters the server writes, and the /metrics endpoint."""

    def __init__(self, sources: Sources | None = None, process: bool = True, stats: QueryStats | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.stats = stats if stats is not None else QueryStats()
        self.sources = sources or Sources()
        self.collector = DNSCollector(self.stats, self.sources)
        self.registry.register(self.collector)
        if process:  # CoreDNS dashboards chart process_resident_memory_bytes and CPU
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self._runner: Any = None
        self.port = 0

    def calibrate(self) -> None:
        self.stats.hot_seconds = calibrate_hot_path()

    async def start(self, address: str) -> None:
        """Serve GET /metrics on `address` (HOST:PORT, :PORT); port 0 picks one (see `port`)."""
        import gzip

        from prometheus_client.exposition import choose_encoder, gzip_accepted

        from clusterdns.obs.health import parse_address
        from clusterdns.obs.http import HttpResponder, Reply, Request

        def scrape(request: Request) -> Reply:
            """As prometheus_client's handlers: Accept picks text 0.0.4 or OpenMetrics,
            `name[]` goes to restricted_registry, gzip when accepted."""
            encoder, content_type = choose_encoder(request.headers.get("accept", ""))
            names = request.query.get("name[]")
            body = encoder(self.registry.restricted_registry(names) if names else self.registry)
            if gzip_accepted(request.headers.get("accept-encoding", "")):
                return Reply(200, content_type, gzip.compress(body), (("Content-Encoding", "gzip"),))
            return Reply(200, content_type, body)

        host, port = parse_address(address, 9153)
        server = HttpResponder({"/metrics": scrape})  # not aiohttp: node-cache's RSS budget (obs/http.py)
        self.port = await server.start(host, port)
        self._runner = server
        log.info("metrics on %s:%d/metrics", host or "*", self.port)

    async def stop(self) -> None:
        server, self._runner = self._runner, None
        if server is not None:
            await server.stop()


def families(registry: CollectorRegistry) -> dict[str, Metric]:
    """name -> metric family (tests and debugging)."""
    return {m.name: m for m in registry.collect()}


def text(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()
