"""Forwarding inside `clusterdns serve`: names outside the zone, PTR fallthrough,
ExternalName chasing, stub domains, the kube-dns ConfigMap, and loop detection."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from clusterdns.app.cluster import build_cluster
from clusterdns.kube.manifests import load_manifests
from clusterdns.settings.schema import ServeConfig
from fakedns import Dnsmasq, addresses, ask, decode, free_port
from helpers import DEMO, ServerProcess

RECORDS = ("--host-record=web.example.test,192.0.2.7",
           "--host-record=my.database.example.com,192.0.2.99",
           "--ptr-record=5.0.0.10.in-addr.arpa,ext.example.test")


@pytest.fixture(scope="module")
def upstream() -> Iterator[Dnsmasq]:
    with Dnsmasq(*RECORDS) as dm:
        yield dm


@pytest.fixture(scope="module")
def server(upstream: Dnsmasq, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """serve with upstreams from a kube-dns ConfigMap file and a --stub flag."""
    cm = tmp_path_factory.mktemp("cm") / "kube-dns.yaml"
    cm.write_text(json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": "kube-dns", "namespace": "kube-system"},
                              "data": {"upstreamNameservers": json.dumps([f"127.0.0.1:{upstream.port}"])}}))
    with (
        Dnsmasq("--host-record=db.consul.local,10.150.0.9") as stub,
        ServerProcess("serve", "--manifests", str(DEMO), "--listen", "127.0.0.1:0",
                      "--kube-dns-configmap", str(cm),
                      "--stub", f"consul.local=127.0.0.1:{stub.port}") as srv,
    ):
        yield srv


def test_names_outside_the_zone_are_forwarded(server: ServerProcess) -> None:
    """ClusterFirst pods send every name here; non-cluster names get the upstream's answer."""
    for tcp in (False, True):
        r = ask(server.port, "web.example.test", tcp=tcp)
        assert r.rcode() == dns.rcode.NOERROR and addresses(r) == ["192.0.2.7"]
        assert r.flags & dns.flags.RA
    assert addresses(ask(server.port, "db.consul.local")) == ["10.150.0.9"]


def test_cluster_names_are_still_answered_by_the_cluster(server: ServerProcess) -> None:
    r = ask(server.port, "nope.default.svc.cluster.local")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA
    assert addresses(ask(server.port, "httpd-svc.default.svc.cluster.local")) == ["10.99.229.179"]


def test_unknown_reverse_address_falls_through_to_the_upstream(server: ServerProcess) -> None:
    """kubeadm's `fallthrough in-addr.arpa ip6.arpa`: not a cluster IP -> upstream PTR."""
    r = ask(server.port, "5.0.0.10.in-addr.arpa", "PTR")
    assert [rd.to_text() for rrs in r.answer for rd in rrs] == ["ext.example.test."]
    known = ask(server.port, "179.229.99.10.in-addr.arpa", "PTR")
    assert known.flags & dns.flags.AA
    assert [rd.to_text() for rrs in known.answer for rd in rrs] == ["httpd-svc.default.svc.cluster.local."]


def test_external_name_target_is_resolved_upstream_after_the_cname(server: ServerProcess) -> None:
    r = ask(server.port, "my-service.prod.svc.cluster.local")
    assert r.rcode() == dns.rcode.NOERROR
    assert [rrs.rdtype for rrs in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert r.answer[0].name.to_text() == "my-service.prod.svc.cluster.local."
    assert r.answer[1].name.to_text() == "my.database.example.com."
    assert addresses(r) == ["192.0.2.99"]


async def test_cluster_zone_is_not_cached_but_forwarded_names_are(fake) -> None:
    """Cluster answers come from the store (never the forward cache, never upstream);
    forwarded ones are cached, so the second one is a synchronous hit."""
    up = await fake("www.example.test. 300 IN A 192.0.2.1")
    store, handler = build_cluster(ServeConfig(manifests=[str(DEMO)],
                                                upstreams=[f"127.0.0.1:{up.port}"]))
    store.load(load_manifests([str(DEMO)])[0])
    fwd = handler.forwarding
    assert fwd is not None
    try:
        for name in ("httpd-svc.default.svc.cluster.local", "nope.default.svc.cluster.local",
                     "kubernetes.default.svc.cluster.local"):
            reply = handler.handle(dns.message.make_query(name, "A").to_wire(), False)
            assert isinstance(reply, bytes)  # answered on the spot from the store
        assert sum(len(z.cache) for z in fwd.table.zones) == 0 and up.count() == 0
        wire = dns.message.make_query("www.example.test", "A").to_wire()
        pending = handler.handle(wire, False)
        assert inspect.isawaitable(pending)
        assert addresses(decode(await pending)) == ["192.0.2.1"]
        hit = handler.handle(wire, False)
        assert isinstance(hit, bytes) and addresses(decode(hit)) == ["192.0.2.1"]
        assert up.count() == 1
    finally:
        fwd.close()


def test_without_forwarding_flags_outside_names_are_refused() -> None:
    """Forwarding is opt-in: a plain authoritative server refuses other names."""
    with ServerProcess("serve", "--manifests", str(DEMO), "--listen", "127.0.0.1:0") as srv:
        assert ask(srv.port, "web.example.test").rcode() == dns.rcode.REFUSED


def test_serve_exits_on_a_forwarding_loop() -> None:
    """CoreDNS `loop`: the upstream sends our probe back -> exit 1, with the fix."""
    port = free_port()
    with Dnsmasq(f"--server=127.0.0.1#{port}") as loopy:
        srv = ServerProcess("serve", "--manifests", str(DEMO), "--listen", f"127.0.0.1:{port}",
                            "--upstream", f"127.0.0.1:{loopy.port}")
        srv.start()
        try:
            assert srv.wait_exit(10) == 1
        finally:
            srv.stop()
    assert "forwarding loop detected" in srv.output()
    assert "--resolv-conf=/run/systemd/resolve/resolv.conf" in srv.output()


def test_bad_forwarding_flag_is_a_startup_error(tmp_path: Path) -> None:
    srv = ServerProcess("serve", "--manifests", str(DEMO), "--listen", "127.0.0.1:0",
                        "--stub", "consul.local", ready_timeout=10)
    with pytest.raises(RuntimeError, match="stub domain must look like"):
        srv.start()
