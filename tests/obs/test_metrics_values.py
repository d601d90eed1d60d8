"""Metric values from the plain-int counters: what the listeners count is what a scrape
shows, with CoreDNS's labels (in-process; tests/app/test_running.py does it over sockets)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiohttp
import pytest

from clusterdns.cache.cache import ResponseCache
from clusterdns.cache.entry import NXDOMAIN, POSITIVE
from clusterdns.obs import metrics as M
from components import cache_options
from metrics_fixtures import populated, wire

V4 = "dns://127.0.0.1:5353"
V6 = "dns://[::1]:5353"


def value(m: M.Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_hot_and_slow_answers_by_listener_proto_type_and_rcode() -> None:
    m = populated()  # 3 hot UDP answers on v4, 1 on v6, 1 slow TCP answer on v4, 1 short packet
    base = dict(zone=".", view="", type="A")
    assert value(m, "coredns_dns_requests_total", server=V4, proto="udp", family="1", **base) == 3
    assert value(m, "coredns_dns_requests_total", server=V6, proto="udp", family="2", **base) == 1
    assert value(m, "coredns_dns_requests_total", server=V4, proto="tcp", family="1", **base) == 1
    assert value(m, "coredns_dns_requests_total", server=V4, zone="dropped", view="", proto="udp", family="1",
                 type="other") == 1
    assert value(m, "coredns_dns_responses_total", server=V4, zone=".", view="", rcode="NOERROR",
                 plugin="kubernetes") == 4
    assert value(m, "coredns_dns_do_requests_total", server=V4, zone=".", view="") == 4
    assert value(m, "clusterdns_hot_path_answers_total", proto="udp") == 4
    assert value(m, "clusterdns_dropped_packets_total", server=V4, proto="udp", reason="short") == 1


def test_sizes_are_exact() -> None:
    m = populated()
    q = wire(use_edns=0, want_dnssec=True)
    labels = dict(server=V4, zone=".", view="", proto="udp")
    assert value(m, "coredns_dns_request_size_bytes_count", **labels) == 3
    assert value(m, "coredns_dns_request_size_bytes_sum", **labels) == 3 * len(q)
    assert value(m, "coredns_dns_request_size_bytes_bucket", le="0.0", **labels) == 0
    assert value(m, "coredns_dns_request_size_bytes_bucket", le="100.0", **labels) == 3


def test_durations_hot_in_the_first_bucket_slow_where_timed() -> None:
    m = populated()
    m.stats.hot_seconds = 2e-6
    v4 = dict(server=V4, zone=".", view="", type="A")
    # 3 hot (<= 0.25 ms) + 1 slow at 3 ms (bucket le=0.004)
    assert value(m, "coredns_dns_request_duration_seconds_bucket", le="0.00025", **v4) == 3
    assert value(m, "coredns_dns_request_duration_seconds_bucket", le="0.002", **v4) == 3
    assert value(m, "coredns_dns_request_duration_seconds_bucket", le="0.004", **v4) == 4
    assert value(m, "coredns_dns_request_duration_seconds_count", **v4) == 4
    assert value(m, "coredns_dns_request_duration_seconds_sum", **v4) == pytest.approx(0.003 + 3 * 2e-6)


def test_counts_move_when_the_hot_path_increments() -> None:
    m = populated()
    q = wire(use_edns=0, want_dnssec=True)
    reply = m.sources.handler.handle(q, False)
    counts = m.stats.hot_class(q, reply, False)  # the same class: the same list
    labels = dict(server=V4, zone=".", view="", proto="udp", family="1", type="A")
    before = value(m, "coredns_dns_requests_total", **labels)
    counts[0] += 10
    assert value(m, "coredns_dns_requests_total", **labels) == before + 10


def test_listener_added_later_gets_its_own_slot() -> None:
    s = M.QueryStats()
    c = s.hot_class(wire(), b"\x00\x00\x84\x03" + b"\x00" * 8, False)
    a = s.add_listener("0.0.0.0", 53)
    b = s.add_listener("::", 53)
    c[a] += 1
    c[b] += 2
    assert [li.server for li in s.listeners] == ["dns://:53", "dns://:53"] and c == [1, 2]


def test_class_table_is_bounded() -> None:
    s = M.QueryStats()
    s.add_listener("127.0.0.1", 53)
    reply = b"\x00\x00\x81\x80" + b"\x00" * 8
    for i in range(M.MAX_CLASSES + 500):
        s.observe(0, False, b"\x00\x00\x01\x00\x00\x01" + b"\x00" * 6 + b"\x01a\x00\x00\x01\x00\x01", reply + b"x" * i,
                  0.001, "forward")
    assert len(s.classes) <= M.MAX_CLASSES + len(M.SIZE_BUCKETS) + 1
    assert sum(sum(c) for c in s.classes.values()) == M.MAX_CLASSES + 500


@pytest.mark.parametrize("make,expected", [
    (lambda: wire("a.b.", "AAAA"), (28, False)),
    (lambda: wire("a.b.", "SRV", use_edns=0, want_dnssec=True), (33, True)),
    (lambda: wire("a.b.", "TXT", use_edns=0), (16, False)),
    (lambda: b"\x00" * 11, None),
    (lambda: b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab", None),
])
def test_question_info(make, expected) -> None:
    assert M.question_info(make()) == expected


def test_type_and_rcode_labels() -> None:
    assert [M.type_label(t) for t in (1, 28, 33, 65, 13, 99)] == ["A", "AAAA", "SRV", "HTTPS", "other", "other"]
    assert [M.rcode_label(r) for r in (0, 2, 3, 5, 14)] == ["NOERROR", "SERVFAIL", "NXDOMAIN", "REFUSED", "RCODE14"]
    assert M.server_label("::1", 53) == "dns://[::1]:53" and M.server_label("0.0.0.0", 53) == "dns://:53"


def test_cache_metrics_from_a_response_cache() -> None:
    async def fetch(q: object) -> bytes:
        raise AssertionError("not called")

    cache = ResponseCache(fetch, **cache_options(max_entries=10))
    cache.hits, cache.misses, cache.prefetches, cache.stale = 7, 3, 1, 2
    cache._entries["a"] = SimpleNamespace(kind=POSITIVE)
    cache._denials["b"] = SimpleNamespace(kind=NXDOMAIN)  # the denial part
    cache._entries["c"] = SimpleNamespace(kind=POSITIVE)
    m = M.Metrics(M.Sources(forwarding=SimpleNamespace(
        table=SimpleNamespace(zones=[SimpleNamespace(zone=".", cache=cache)]), forwarders=[])), process=False)
    labels = dict(server="dns://:53", zones=".", view="")
    assert value(m, "coredns_cache_entries", type="success", **labels) == 2
    assert value(m, "coredns_cache_entries", type="denial", **labels) == 1
    assert value(m, "coredns_cache_requests_total", **labels) == 10
    assert value(m, "coredns_cache_misses_total", **labels) == 3
    assert value(m, "coredns_cache_prefetch_total", **labels) == 1
    assert value(m, "coredns_cache_served_stale_total", **labels) == 2


def test_programming_duration_and_kubernetes_counters() -> None:
    m = populated()
    assert value(m, "coredns_kubernetes_dns_programming_duration_seconds_bucket", service_kind="cluster_ip",
                 le="0.064") == 1
    assert value(m, "coredns_kubernetes_dns_programming_duration_seconds_bucket", service_kind="cluster_ip",
                 le="0.032") == 0
    assert value(m, "clusterdns_kubernetes_objects", kind="Service") > 0
    assert value(m, "clusterdns_kubernetes_synced") == 1
    st = m.sources.kube.states["services"]
    st.lists, st.watches = 3, 5
    assert value(m, "clusterdns_kubernetes_relists_total", resource="services") == 2
    assert value(m, "clusterdns_kubernetes_watch_restarts_total", resource="services") == 4


def test_panics_count_internal_errors() -> None:
    m = populated()
    m.sources.handler.errors = 2
    assert value(m, "coredns_panics_total") == 2


def test_calibration_is_a_plausible_microsecond() -> None:
    assert 1e-8 < M.calibrate_hot_path(500) < 1e-4


async def test_metrics_endpoint_serves_the_registry() -> None:
    m = populated()
    await m.start("127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{m.port}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            body = await resp.text()
        assert resp.status == 200
        assert 'coredns_dns_requests_total{family="1",proto="udp",server="dns://127.0.0.1:5353"' in body
        assert "process_resident_memory_bytes" in body
    finally:
        await m.stop()
    await asyncio.sleep(0)


def test_proxy_metrics_per_upstream() -> None:
    m = populated()  # one NOERROR exchange of 12 ms with 127.0.0.1:9, one TCP connection opened
    to = dict(proxy_name="forward", to="127.0.0.1:9")
    assert value(m, "coredns_proxy_request_duration_seconds_bucket", rcode="NOERROR", le="0.008", **to) == 0
    assert value(m, "coredns_proxy_request_duration_seconds_bucket", rcode="NOERROR", le="0.016", **to) == 1
    assert value(m, "coredns_proxy_conn_cache_misses_total", proto="tcp", **to) == 1
    assert value(m, "coredns_proxy_healthcheck_failures_total", rcode="", **to) == 0
    fwd = m.sources.forwarding.forwarders[0]
    fwd.stats.refused, fwd.stats.all_down = 3, 2
    assert value(m, "coredns_forward_max_concurrent_rejects_total") == 3
    assert value(m, "coredns_forward_healthcheck_broken_total") == 2


def test_workers_families_are_summed_but_process_facts_are_not() -> None:
    leader, worker = populated(), populated()
    merged = {f.name: f for f in M.merge(list(leader.collector.local()), [list(worker.collector.local())])}
    req = merged["coredns_dns_requests"]
    v4 = [s for s in req.samples if s.labels.get("server") == V4 and s.labels.get("proto") == "udp"
          and s.labels.get("zone") == "."]
    assert [s.value for s in v4] == [6]  # 3 hot answers in each process
    assert [s.value for s in merged["coredns_build_info"].samples] == [1]
