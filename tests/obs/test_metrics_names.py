"""Lint every metric the registry exposes (CoreDNS's test/metric_naming_test.go):
prefixes, `_total` on counters only, units in names, CoreDNS's exact names, labels and
buckets for the dashboards and alerts operators already have, and a docs/metrics.md entry each."""

from __future__ import annotations

import re

import pytest
from prometheus_client.metrics_core import Metric

from clusterdns.obs import metrics as M
from helpers import ROOT
from metrics_fixtures import populated

OWN_PREFIXES = ("coredns_", "clusterdns_")
BUILTIN_PREFIXES = ("process_", "python_")  # prometheus_client's process/platform/gc collectors
SNAKE = re.compile(r"^[a-z_][a-z0-9_]*$")

#: the names and labels dashboards and alerts query (operators.md 1.4)
COREDNS = {
    "coredns_dns_requests_total": {"server", "zone", "view", "proto", "family", "type"},
    "coredns_dns_responses_total": {"server", "zone", "view", "rcode", "plugin"},
    "coredns_dns_request_duration_seconds": {"server", "zone", "view", "type"},
    "coredns_dns_request_size_bytes": {"server", "zone", "view", "proto"},
    "coredns_dns_response_size_bytes": {"server", "zone", "view", "proto"},
    "coredns_dns_do_requests_total": {"server", "zone", "view"},
    "coredns_build_info": {"version", "revision", "goversion"},
    "coredns_panics_total": set(),
    "coredns_plugin_enabled": {"server", "zone", "view", "name"},
    "coredns_cache_entries": {"server", "type", "zones", "view"},
    "coredns_cache_hits_total": {"server", "type", "zones", "view"},
    "coredns_cache_misses_total": {"server", "zones", "view"},
    "coredns_cache_requests_total": {"server", "zones", "view"},
    "coredns_cache_prefetch_total": {"server", "zones", "view"},
    "coredns_cache_served_stale_total": {"server", "zones", "view"},
    "coredns_cache_evictions_total": {"server", "type", "zones", "view"},
    "coredns_forward_max_concurrent_rejects_total": set(),
    "coredns_forward_healthcheck_broken_total": set(),
    "coredns_proxy_request_duration_seconds": {"proxy_name", "to", "rcode"},
    "coredns_proxy_healthcheck_failures_total": {"proxy_name", "to", "rcode"},
    "coredns_proxy_conn_cache_hits_total": {"proxy_name", "to", "proto"},
    "coredns_proxy_conn_cache_misses_total": {"proxy_name", "to", "proto"},
    "coredns_kubernetes_dns_programming_duration_seconds": {"service_kind"},
    "coredns_reload_failed_total": set(),
}


def exposed_name(m: Metric) -> str:
    """The name a PromQL query uses: counters carry `_total` on the wire."""
    return m.name + "_total" if m.type == "counter" else m.name


@pytest.fixture(scope="module")
def families() -> list[Metric]:
    return list(populated().registry.collect())


def own(families: list[Metric]) -> list[Metric]:
    return [m for m in families if not m.name.startswith(BUILTIN_PREFIXES)]


def test_prefixes(families: list[Metric]) -> None:
    bad = [m.name for m in families if not m.name.startswith(OWN_PREFIXES + BUILTIN_PREFIXES)]
    assert not bad


def test_counters_end_in_total_and_nothing_else_does(families: list[Metric]) -> None:
    for m in own(families):
        names = {s.name for s in m.samples}
        if m.type == "counter":
            assert names <= {m.name + "_total", m.name + "_created"}, (m.name, names)
            assert not m.name.endswith("_total"), f"{m.name}: prometheus_client adds _total itself"
        else:
            assert not m.name.endswith("_total"), m.name


def test_units_are_in_the_names(families: list[Metric]) -> None:
    for m in own(families):
        name = exposed_name(m)
        if m.type == "histogram":
            assert name.endswith(("_seconds", "_bytes")), name
        if re.search(r"duration|latency|timestamp|_time", name):
            assert re.search(r"_seconds(_total)?$", name), name
        if re.search(r"size", name):
            assert name.endswith("_bytes"), name


def test_names_labels_and_help_are_well_formed(families: list[Metric]) -> None:
    for m in own(families):
        assert SNAKE.match(m.name) and m.documentation.strip(), m.name
        for s in m.samples:
            assert all(SNAKE.match(k) for k in s.labels), (m.name, s.labels)


def test_coredns_names_and_labels(families: list[Metric]) -> None:
    by_name = {exposed_name(m): m for m in families}
    for name, labels in COREDNS.items():
        assert name in by_name, f"{name} missing"
        m = by_name[name]
        assert m.samples, f"{name} has no sample to check the labels of"
        for s in m.samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)


def test_coredns_buckets(families: list[Metric]) -> None:
    by_name = {m.name: m for m in families}

    def les(name: str) -> list[float]:
        out = []
        for s in by_name[name].samples:
            if s.name.endswith("_bucket") and s.labels["le"] not in out:
                out.append(s.labels["le"])
        return [float(x) for x in out]

    assert les("coredns_dns_request_duration_seconds") == [0.00025 * 2 ** i for i in range(16)] + [float("inf")]
    assert les("coredns_dns_request_size_bytes") == [0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291,
                                                     16e3, 32e3, 48e3, 64e3, float("inf")]
    assert les("coredns_kubernetes_dns_programming_duration_seconds") == \
        [0.001 * 2 ** i for i in range(20)] + [float("inf")]


def test_every_metric_is_documented_in_docs_metrics_md(families: list[Metric]) -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    assert re.search(r"^#+ .*metrics", text, re.I | re.M), "docs/metrics.md has a Metrics section"
    missing = [exposed_name(m) for m in own(families) if exposed_name(m) not in text]
    assert not missing, f"not in docs/metrics.md: {missing}"


def test_the_documentation_list_covers_every_metric(families: list[Metric]) -> None:
    """`M.DOCUMENTED` (docs/metrics.md's metric list, generated from one place) is complete."""
    assert {exposed_name(m) for m in own(families)} <= set(M.DOCUMENTED)
