"""The cache's two parts (CoreDNS `success` / `denial`): a flood of never-repeated names
fills the denial part only, so the positive answers pods need stay cached; and a miss
scans its upstream answer once. Real upstreams on loopback throughout."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import dns.rcode
import pytest

from clusterdns.cache.settings import cache_kwargs
from clusterdns.cli import build_parser
from clusterdns.forward.table import ForwardZone
from clusterdns.forward.upstream import UpstreamSpec
from clusterdns.obs import metrics as M
from clusterdns.settings import config as C
from clusterdns.wire import scan as W
from components import cache_options, make_forwarder
from fakedns import addresses, ask, decode, question
from helpers import DEMO, ServerProcess

POSITIVES = [f"p{i}.example.test" for i in range(4)]
RECORDS = [f"{name}. 300 IN A 192.0.2.{i + 1}" for i, name in enumerate(POSITIVES)]


def zone_for(port: int, clock, cached: bool = True, **cache: object) -> ForwardZone:
    fwd = make_forwarder([UpstreamSpec("127.0.0.1", port)], read_timeout=0.3, timeout=0.6, health_interval=0.05)
    return ForwardZone(".", fwd, cache_options(timer=clock, **cache) if cached else None)


async def test_nxdomain_flood_larger_than_both_parts_leaves_every_positive_cached(fake, clock) -> None:
    """40 distinct NXDOMAIN answers, more than both capacities together (4 + 4), evict
    denials only: the denial part stays at its cap and every positive answer is still a
    hit, with no second upstream query for it."""
    up = await fake(*RECORDS)
    z = zone_for(up.port, clock, max_entries=4, max_denial_entries=4)
    try:
        for name in POSITIVES:
            assert decode(await z.resolve(question(name)[0], None)).rcode() == dns.rcode.NOERROR
        for i in range(40):
            r = decode(await z.resolve(question(f"junk{i}.example.test")[0], None))
            assert r.rcode() == dns.rcode.NXDOMAIN
        cache = z.cache
        assert cache.sizes == {"success": 4, "denial": 4} and len(cache) == 8
        assert cache.evictions_by_type == {"success": 0, "denial": 36}
        hits = cache.hits
        for i, name in enumerate(POSITIVES):
            q = question(name)[0]
            assert cache.hot(q.key) is not None  # the listeners' plain lane
            assert addresses(decode(z.lookup(q, None))) == [f"192.0.2.{i + 1}"]
            assert up.count(name) == 1
        assert cache.hits == hits + 2 * len(POSITIVES) and cache.denial_hits == 0
        newest = question("junk39.example.test")[0]
        assert cache.hot(newest.key) is not None and cache.denial_hits == 1  # denials still served
        assert z.lookup(question("junk0.example.test")[0], None) is None  # the oldest went
    finally:
        z.close()


async def test_key_moving_between_denial_and_positive_lives_in_one_part(fake, clock) -> None:
    """A name that was NXDOMAIN and then gets a record moves to the success part (and back
    when the record goes): never in both, so the cache counts it once and serves the
    answer stored last."""
    up = await fake(*RECORDS)
    z = zone_for(up.port, clock, max_ttl=30, max_negative_ttl=30)
    try:
        q = question("new.example.test")[0]
        assert decode(await z.resolve(q, None)).rcode() == dns.rcode.NXDOMAIN
        assert z.cache.sizes == {"success": 0, "denial": 1}
        up.records.append("new.example.test. 300 IN A 192.0.2.50")
        clock.advance(31)  # the denial expired
        assert addresses(decode(await z.resolve(q, None))) == ["192.0.2.50"]
        assert z.cache.sizes == {"success": 1, "denial": 0} and len(z.cache) == 1
        assert addresses(decode(z.lookup(q, None))) == ["192.0.2.50"]
        up.records.remove("new.example.test. 300 IN A 192.0.2.50")
        clock.advance(31)
        assert decode(await z.resolve(q, None)).rcode() == dns.rcode.NXDOMAIN
        assert z.cache.sizes == {"success": 0, "denial": 1} and len(z.cache) == 1
        assert decode(z.lookup(q, None)).rcode() == dns.rcode.NXDOMAIN
        assert z.cache.evictions == 0
    finally:
        z.close()


async def test_stale_nxdomain_from_the_denial_part_is_served_when_the_upstream_fails(fake, clock) -> None:
    """Serve-stale finds candidates in the denial part too: an expired NXDOMAIN is served
    (TTL stale_ttl) when the upstream is gone."""
    up = await fake(*RECORDS)
    z = zone_for(up.port, clock, max_negative_ttl=30, serve_stale=3600.0, stale_ttl=7)
    try:
        q = question("gone.example.test")[0]
        assert decode(await z.resolve(q, None)).rcode() == dns.rcode.NXDOMAIN
        await up.stop()
        clock.advance(31)
        r = decode(await z.resolve(q, None))
        assert r.rcode() == dns.rcode.NXDOMAIN and z.cache.stale == 1
        assert {rrs.ttl for rrs in r.authority} == {7}
    finally:
        z.close()


async def test_metrics_report_each_part_size(fake, clock) -> None:
    """coredns_cache_entries{type=success|denial} are the two parts' sizes."""
    up = await fake(*RECORDS)
    z = zone_for(up.port, clock, max_denial_entries=2)
    try:
        for name in POSITIVES[:3]:
            await z.resolve(question(name)[0], None)
        for i in range(5):
            await z.resolve(question(f"junk{i}.example.test")[0], None)
        m = M.Metrics(M.Sources(forwarding=SimpleNamespace(table=SimpleNamespace(zones=[z]), forwarders=[])),
                      process=False)
        labels = {"server": "dns://:53", "zones": ".", "view": ""}
        assert m.registry.get_sample_value("coredns_cache_entries", dict(type="success", **labels)) == 3
        assert m.registry.get_sample_value("coredns_cache_entries", dict(type="denial", **labels)) == 2
        assert m.registry.get_sample_value("coredns_cache_evictions_total", dict(type="denial", **labels)) == 3
    finally:
        z.close()


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "uncached"])
async def test_a_miss_scans_the_upstream_answer_once(fake, clock, monkeypatch, cached: bool) -> None:
    """The forwarder scans an answer to accept it and hands that Scan on: the cache (or
    the uncached zone's reply) does not scan the same bytes again."""
    up = await fake(*RECORDS)
    scans: list[int] = []
    real = W.scan_response

    def counting(data: bytes) -> W.Scan:
        scans.append(len(data))
        return real(data)

    monkeypatch.setattr(W, "scan_response", counting)
    z = zone_for(up.port, clock, cached=cached)
    try:
        r = decode(await z.resolve(question(POSITIVES[0])[0], None))
        assert addresses(r) == ["192.0.2.1"]
        nx = decode(await z.resolve(question("junk.example.test")[0], None))
        assert nx.rcode() == dns.rcode.NXDOMAIN
        assert len(scans) == 2 and up.count() == 2
    finally:
        z.close()


def test_node_cache_process_keeps_positives_through_an_nxdomain_flood(tmp_path: Path) -> None:
    """`clusterdns node-cache --cache-denial-entries 3` with 4 success entries: 30 junk
    cluster names later, the 4 Service names still come from the cache (the cluster DNS is
    stopped by then, so a miss could only SERVFAIL) and /metrics shows both parts."""
    cfg = tmp_path / "node-cache.yaml"
    cfg.write_text("cache:\n  max_entries: 4\n  serve_stale: 0\n")
    names = [f"{s}.svc.cluster.local" for s in ("kubernetes.default", "httpd-svc.default", "my-nginx.default",
                                                 "kube-dns.kube-system")]
    with ServerProcess("serve", "--manifests", str(DEMO), "--listen", "127.0.0.1:0") as cluster, \
            ServerProcess("node-cache", "--config", str(cfg), "--listen", "127.0.0.1:0", "--health", "",
                          "--metrics", "127.0.0.1:0", "--cache-denial-entries", "3",
                          "--cluster-dns", f"127.0.0.1:{cluster.port}", "--upstream", f"127.0.0.1:{cluster.port}",
                          "--no-loop-detect") as nc:
        first = {name: addresses(ask(nc.port, name)) for name in names}
        assert all(first.values())
        for i in range(30):
            assert ask(nc.port, f"junk{i}.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
        cluster.stop()
        for name in names:
            r = ask(nc.port, name)
            assert r.rcode() == dns.rcode.NOERROR and addresses(r) == first[name]
        port = int(re.search(r"metrics on \S+:(\d+)/metrics", nc.output()).group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
            body = resp.read().decode()
    entries = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^coredns_cache_entries\{[^}]*type="(\w+)"[^}]*zones="cluster.local."[^}]*\} (\S+)$', body, re.MULTILINE)}
    assert entries == {"success": 4.0, "denial": 3.0}


def test_denial_capacity_reaches_the_cache_from_yaml_and_the_flag(tmp_path: Path) -> None:
    """`cache.max_denial_entries` in serve's YAML and node-cache's `--cache-denial-entries`
    both land in the ResponseCache options, next to max_entries."""
    path = tmp_path / "serve.yaml"
    path.write_text("cache:\n  max_entries: 100\n  max_denial_entries: 7\n")
    opts = cache_kwargs(C.load(path, "serve").cache, 30, 30)
    assert (opts["max_entries"], opts["max_denial_entries"]) == (100, 7)
    p = build_parser()
    cfg = C.resolve("node-cache", p.parse_args(["node-cache", "--cache-denial-entries", "5"]), environ={})
    assert cache_kwargs(cfg.cache, 30, 30)["max_denial_entries"] == 5
    default = C.resolve("node-cache", p.parse_args(["node-cache"]), environ={})
    assert cache_kwargs(default.cache, 30, 30)["max_denial_entries"] == 9984
