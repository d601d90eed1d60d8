"""`clusterdns node-cache` as a process, in front of `clusterdns serve` and dnsmasq."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.rcode
import pytest

from fakedns import Dnsmasq, addresses, ask, free_port, ttls
from helpers import DEMO, ServerProcess

#: starts clusterdns processes end to end: left out of the quick subset (`-m "not slow"`)
pytestmark = pytest.mark.slow

UPSTREAM_RECORDS = ("--host-record=web.example.test,192.0.2.7",
                    "--host-record=my.database.example.com,192.0.2.99",
                    "--ptr-record=5.0.0.10.in-addr.arpa,ext.example.test")


@pytest.fixture(scope="module")
def upstream() -> Iterator[Dnsmasq]:
    with Dnsmasq(*UPSTREAM_RECORDS) as dm:
        yield dm


@pytest.fixture(scope="module")
def cluster(upstream: Dnsmasq) -> Iterator[ServerProcess]:
    with ServerProcess("serve", "--manifests", str(DEMO), "--listen", "127.0.0.1:0",
                       "--upstream", f"127.0.0.1:{upstream.port}") as srv:
        yield srv


@pytest.fixture(scope="module")
def node_cache(cluster: ServerProcess, upstream: Dnsmasq) -> Iterator[ServerProcess]:
    with (
        Dnsmasq("--host-record=db.consul.local,10.150.0.9") as stub,
        ServerProcess("node-cache", "--listen", "127.0.0.1:0", "--health", "127.0.0.1:0",
                      "--cluster-dns", f"127.0.0.1:{cluster.port}",
                      "--upstream", f"127.0.0.1:{upstream.port}",
                      "--stub", f"consul.local=127.0.0.1:{stub.port}") as nc,
    ):
        yield nc


def test_cluster_names_go_to_the_cluster_dns(node_cache: ServerProcess) -> None:
    """cluster.local is answered by the cluster server behind the cache (over TCP)."""
    r = ask(node_cache.port, "httpd-svc.default.svc.cluster.local")
    assert r.rcode() == dns.rcode.NOERROR and addresses(r) == ["10.99.229.179"]
    nx = ask(node_cache.port, "nope.default.svc.cluster.local")
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert nx.authority[0].name.to_text() == "cluster.local."


def test_other_names_go_to_the_upstream(node_cache: ServerProcess) -> None:
    r = ask(node_cache.port, "web.example.test")
    assert addresses(r) == ["192.0.2.7"] and r.flags & dns.flags.RA
    assert addresses(ask(node_cache.port, "web.example.test", tcp=True)) == ["192.0.2.7"]


def test_stub_domain_is_routed_to_its_server(node_cache: ServerProcess) -> None:
    assert addresses(ask(node_cache.port, "db.consul.local")) == ["10.150.0.9"]


def test_reverse_names_reach_the_cluster_dns_and_fall_through(node_cache: ServerProcess) -> None:
    """A Service's IP gets its cluster PTR; an address the cluster does not know falls
    through (at the cluster server) to the upstream."""
    known = ask(node_cache.port, "179.229.99.10.in-addr.arpa", "PTR")
    assert [rd.to_text() for rrs in known.answer for rd in rrs] == ["httpd-svc.default.svc.cluster.local."]
    other = ask(node_cache.port, "5.0.0.10.in-addr.arpa", "PTR")
    assert [rd.to_text() for rrs in other.answer for rd in rrs] == ["ext.example.test."]


def test_external_name_is_chased_through_both_layers(node_cache: ServerProcess) -> None:
    r = ask(node_cache.port, "my-service.prod.svc.cluster.local")
    kinds = [(rrs.name.to_text(), rrs.rdtype) for rrs in r.answer]
    assert kinds[0] == ("my-service.prod.svc.cluster.local.", dns.rdatatype.CNAME)
    assert addresses(r) == ["192.0.2.99"]


def test_health_endpoint_answers_ok(node_cache: ServerProcess) -> None:
    port = int(re.search(r"health on port (\d+)", node_cache.output()).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as resp:
        assert resp.status == 200 and resp.read() == b"OK"


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "node-cache.yaml"
    path.write_text(text)
    return str(path)


def test_cluster_dns_outage_is_bridged_by_stale_answers(tmp_path: Path, upstream: Dnsmasq) -> None:
    """The point of serve-stale in node-cache: with the cluster DNS stopped, names that
    were cached keep resolving (TTL 30); when it is back, fresh answers return."""
    port = free_port()
    cfg = _config(tmp_path, """
cache: {min_ttl: 1, cluster_success_ttl: 1, stale_answer_timeout: 0.3, stale_recheck: 0.3}
forward: {read_timeout: 0.4, timeout: 0.8}
""")
    with ServerProcess("serve", "--manifests", str(DEMO), "--listen", f"127.0.0.1:{port}") as srv, \
            ServerProcess("node-cache", "--config", cfg, "--listen", "127.0.0.1:0", "--health", "",
                          "--cluster-dns", f"127.0.0.1:{port}",
                          "--upstream", f"127.0.0.1:{upstream.port}") as nc:
        name = "my-nginx.default.svc.cluster.local"
        assert addresses(ask(nc.port, name)) == ["10.96.162.149"]
        srv.stop()
        time.sleep(1.2)  # the cached answer has expired
        stale = ask(nc.port, name)
        assert addresses(stale) == ["10.96.162.149"] and ttls(stale) == {30}
        never_cached = ask(nc.port, "httpd2-svc.default.svc.cluster.local")
        assert never_cached.rcode() == dns.rcode.SERVFAIL
        with ServerProcess("serve", "--manifests", str(DEMO), "--listen", f"127.0.0.1:{port}"):
            time.sleep(0.4)  # past the failure recheck
            fresh = ask(nc.port, name)
            assert addresses(fresh) == ["10.96.162.149"] and max(ttls(fresh)) <= 1


def test_loop_through_the_upstream_exits_with_a_plain_message() -> None:
    """An upstream that forwards back to us (systemd-resolved in the node's resolv.conf)
    is detected by the start-up probe; the process exits 1 and says how to fix it."""
    port = free_port()
    with Dnsmasq(f"--server=127.0.0.1#{port}") as loopy:
        nc = ServerProcess("node-cache", "--listen", f"127.0.0.1:{port}", "--health", "",
                           "--cluster-dns", "127.0.0.1:9", "--upstream", f"127.0.0.1:{loopy.port}")
        nc.start()
        try:
            assert nc.wait_exit(10) == 1
        finally:
            nc.stop()
    out = nc.output()
    assert "forwarding loop detected" in out
    assert "127.0.0.53" in out and "--resolv-conf=/run/systemd/resolve/resolv.conf" in out


def test_upstream_that_is_our_own_address_is_a_loop() -> None:
    """--upstream pointing at our own listen address is refused at start."""
    port = free_port()
    nc = ServerProcess("node-cache", "--listen", f"127.0.0.1:{port}", "--health", "",
                       "--cluster-dns", "127.0.0.1:9", "--upstream", f"127.0.0.1:{port}",
                       "--no-loop-detect")
    nc.start()
    try:
        assert nc.wait_exit(10) == 1
    finally:
        nc.stop()
    assert "forwarding loop: upstream 127.0.0.1:" in nc.output()


def test_upstreams_from_resolv_conf_and_kube_dns_configmap(tmp_path: Path) -> None:
    """Without --upstream, other names go to the resolv.conf's nameservers (port 53, so
    that dnsmasq listens on 127.0.0.2:53); the kube-dns ConfigMap, mounted as a
    directory, adds stub domains."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# the node's resolver\nsearch example.test\nnameserver 127.0.0.2\n")
    cm = tmp_path / "kube-dns"
    cm.mkdir()
    with Dnsmasq(*UPSTREAM_RECORDS, host="127.0.0.2", port=53), \
            Dnsmasq("--host-record=db.acme.local,10.1.2.3") as stub:
        (cm / "stubDomains").write_text(f'{{"acme.local": ["127.0.0.1:{stub.port}"]}}')
        with ServerProcess("node-cache", "--listen", "127.0.0.1:0", "--health", "",
                           "--cluster-dns", "127.0.0.1:9", "--kube-dns-configmap", str(cm),
                           "--resolv-conf", str(resolv)) as nc:
            assert addresses(ask(nc.port, "db.acme.local")) == ["10.1.2.3"]
            assert addresses(ask(nc.port, "web.example.test")) == ["192.0.2.7"]
            assert ". -> 127.0.0.2:53" in nc.output()


def test_bad_config_exits_2_with_the_reason(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "cache: {max_entriez: 5}\n")
    nc = ServerProcess("node-cache", "--config", cfg, "--cluster-dns", "127.0.0.1:9",
                       "--upstream", "127.0.0.1:9", ready_timeout=10)
    with pytest.raises(RuntimeError, match=r"cache\.max_entriez: unknown key"):
        nc.start()
    assert nc.proc is not None and nc.proc.wait(5) == 2


def test_cache_hit_ttl_counts_down_in_the_running_process(tmp_path: Path) -> None:
    """A TTL-3 record asked again 1.5 s later says 1 or 2 (counted from the entry's
    stored time, to the sub-second), on the UDP plain lane and over TCP; never 3."""
    cfg = tmp_path / "node-cache.yaml"
    cfg.write_text("cache:\n  min_ttl: 0\n")
    with Dnsmasq("--host-record=short.example.test,192.0.2.33", "--local-ttl=3") as up, \
            ServerProcess("node-cache", "--config", str(cfg), "--listen", "127.0.0.1:0", "--health", "127.0.0.1:0",
                          "--cluster-dns", f"127.0.0.1:{up.port}", "--upstream", f"127.0.0.1:{up.port}",
                          "--no-loop-detect") as nc:
        first = ask(nc.port, "short.example.test")
        assert addresses(first) == ["192.0.2.33"] and ttls(first) == {3}
        time.sleep(1.5)
        udp = ask(nc.port, "short.example.test")
        again = ask(nc.port, "SHORT.example.test")
        tcp = ask(nc.port, "short.example.test", tcp=True)
        for r in (udp, again, tcp):
            assert addresses(r) == ["192.0.2.33"] and ttls(r) <= {1, 2} and ttls(r)
        assert again.question[0].name.to_text() == "SHORT.example.test."
