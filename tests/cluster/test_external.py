"""External zones (`--external-zone`, CoreDNS k8s_external), answered in-process.

The query bytes go straight to `Handler.handle` of a stack built as `serve` builds it; the
store is fed slim objects parsed from API-shaped dicts, so the new Service fields are read
the way the watch and manifests read them.
"""

from __future__ import annotations

from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from clusterdns.app.cluster import build_cluster
from clusterdns.kube.objects import parse_object
from clusterdns.kube.store import ClusterStore
from clusterdns.server.handler import Handler
from clusterdns.settings.schema import ServeConfig
from kubeapi import endpoint_slice, namespace, service

ZONE = "example.com."
CLUSTER_IPS = {"10.96.0.50", "10.96.0.51", "10.96.0.52", "10.96.0.53", "10.96.0.10", "fd00:10:96::50"}


def lb(ns: str, name: str, ips: tuple[str, ...] | list[str] = (), hosts: tuple[str, ...] | list[str] = (),
       **kw: Any) -> dict[str, Any]:
    """A LoadBalancer Service with status.loadBalancer.ingress."""
    obj = service(ns, name, type="LoadBalancer", **kw)
    ingress = [{"ip": ip} for ip in ips] + [{"hostname": h} for h in hosts]
    obj["status"] = {"loadBalancer": {"ingress": ingress}}
    return obj


def objects() -> list[dict[str, Any]]:
    ports = [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]
    return [
        namespace("shop"),
        lb("shop", "web", ["203.0.113.10", "2001:db8::10"], cluster_ip="10.96.0.50", ports=ports),
        service("shop", "api", "10.96.0.51", externalIPs=["198.51.100.7"]),
        lb("shop", "elb", hosts=["abc.elb.amazonaws.com"], cluster_ip="10.96.0.52"),
        service("shop", "internal", "10.96.0.53"),  # a ClusterIP only: not published
        service("shop", "db", "None", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]),
        endpoint_slice("shop", "db-1", "db", ["10.244.0.7"], ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]),
        service("kube-system", "kube-dns", "10.96.0.10", externalIPs=["198.51.100.53"]),
    ]


def stack(*objs: dict[str, Any], **opts: Any) -> tuple[ClusterStore, Handler]:
    store, handler = build_cluster(ServeConfig(**({"external_zones": ["example.com"], "listen": ["127.0.0.1:0"]} | opts)))
    store.load([o for o in map(parse_object, objs) if o is not None])
    store.mark_synced()
    return store, handler


@pytest.fixture(scope="module")
def handler() -> Handler:
    return stack(*objects())[1]


def ask(handler: Handler, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
    wire = handler.handle(q.to_wire(), tcp)
    assert isinstance(wire, bytes)
    r = dns.message.from_wire(wire)
    assert r.id == q.id
    return r


def texts(section: list) -> list[str]:
    return sorted(" ".join(line.split()) for rrset in section for line in rrset.to_text().splitlines())


def rdatas(section: list) -> list[str]:
    return sorted(rd.to_text() for rrset in section for rd in rrset)


def test_loadbalancer_ingress_ips_answer_a_and_aaaa(handler: Handler) -> None:
    a = ask(handler, "web.shop.example.com")
    assert a.rcode() == dns.rcode.NOERROR and a.flags & dns.flags.AA
    assert rdatas(a.answer) == ["203.0.113.10"] and a.answer[0].ttl == 5
    assert rdatas(ask(handler, "web.shop.example.com", "AAAA").answer) == ["2001:db8::10"]


def test_external_ips_answer_for_any_service_type(handler: Handler) -> None:
    assert rdatas(ask(handler, "api.shop.example.com").answer) == ["198.51.100.7"]


def test_ingress_hostname_is_a_cname_for_every_type(handler: Handler) -> None:
    for rdtype in ("A", "AAAA", "CNAME", "TXT"):
        r = ask(handler, "elb.shop.example.com", rdtype)
        assert r.rcode() == dns.rcode.NOERROR
        assert [(rr.rdtype, rd.to_text()) for rr in r.answer for rd in rr] == [
            (dns.rdatatype.CNAME, "abc.elb.amazonaws.com.")
        ]


def test_named_ports_get_srv_with_the_service_as_target_and_its_addresses_as_glue(handler: Handler) -> None:
    r = ask(handler, "_http._tcp.web.shop.example.com", "SRV")
    assert rdatas(r.answer) == ["0 100 80 web.shop.example.com."]
    assert rdatas(r.additional) == ["2001:db8::10", "203.0.113.10"]
    assert rdatas(ask(handler, "_dns._udp.web.shop.example.com", "SRV").answer) == ["0 100 53 web.shop.example.com."]
    assert rdatas(ask(handler, "web.shop.example.com", "SRV").answer) == [
        "0 50 53 web.shop.example.com.", "0 50 80 web.shop.example.com."]
    ent = ask(handler, "_tcp.web.shop.example.com", "SRV")  # the `_proto` empty non-terminal
    assert ent.rcode() == dns.rcode.NOERROR and not ent.answer
    assert rdatas(ask(handler, "_http._tcp.elb.shop.example.com", "SRV").answer) == ["0 100 80 abc.elb.amazonaws.com."]


def test_cluster_ips_never_appear_in_the_external_zone(handler: Handler) -> None:
    seen: set[str] = set()
    for name in ("web", "api", "elb", "internal", "db"):
        for rdtype in ("A", "AAAA", "SRV", "ANY"):
            r = ask(handler, f"{name}.shop.example.com", rdtype)
            seen |= {rd.to_text() for rrset in r.answer + r.additional for rd in rrset}
    for rdtype in ("NS", "A"):
        r = ask(handler, "example.com" if rdtype == "NS" else "ns1.dns.example.com", rdtype)
        seen |= {rd.to_text() for rrset in r.answer + r.additional for rd in rrset}
    assert seen and not seen & CLUSTER_IPS
    assert ask(handler, "internal.shop.example.com").rcode() == dns.rcode.NXDOMAIN
    # the cluster zone still answers the ClusterIP
    assert rdatas(ask(handler, "web.shop.svc.cluster.local").answer) == ["10.96.0.50"]


def test_headless_endpoints_are_published_only_when_asked(handler: Handler) -> None:
    assert ask(handler, "db.shop.example.com").rcode() == dns.rcode.NXDOMAIN
    _, with_headless = stack(*objects(), external_headless=True)
    assert rdatas(ask(with_headless, "db.shop.example.com").answer) == ["10.244.0.7"]
    assert rdatas(ask(with_headless, "10-244-0-7.db.shop.example.com").answer) == ["10.244.0.7"]
    srv = ask(with_headless, "_pg._tcp.db.shop.example.com", "SRV")
    assert rdatas(srv.answer) == ["0 100 5432 10-244-0-7.db.shop.example.com."]
    assert rdatas(srv.additional) == ["10.244.0.7"]


def test_apex_has_soa_and_ns_with_this_servers_outside_address(handler: Handler) -> None:
    soa = ask(handler, ZONE, "SOA")
    assert soa.rcode() == dns.rcode.NOERROR and soa.flags & dns.flags.AA
    (rd,) = soa.answer[0]
    assert (rd.mname.to_text(), rd.rname.to_text(), rd.minimum) == ("ns1.dns.example.com.", "hostmaster.example.com.", 5)
    ns = ask(handler, ZONE, "NS")
    assert rdatas(ns.answer) == ["ns1.dns.example.com."]
    assert texts(ns.additional) == ["ns1.dns.example.com. 5 IN A 198.51.100.53"]  # kube-dns's externalIPs
    assert rdatas(ask(handler, "ns1.dns.example.com").answer) == ["198.51.100.53"]
    ent = ask(handler, "dns.example.com")
    assert ent.rcode() == dns.rcode.NOERROR and not ent.answer


def test_ns_glue_falls_back_to_the_listen_addresses() -> None:
    _, h = stack(lb("shop", "web", ["203.0.113.10"]))
    assert rdatas(ask(h, "ns1.dns.example.com").answer) == ["127.0.0.1"]


def test_apex_label_and_ttl_follow_the_options() -> None:
    _, h = stack(lb("shop", "web", ["203.0.113.10"]), external_apex="ext", external_ttl=60)
    assert rdatas(ask(h, ZONE, "NS").answer) == ["ns1.ext.example.com."]
    assert ask(h, "web.shop.example.com").answer[0].ttl == 60
    nx = ask(h, "nope.shop.example.com")
    assert nx.authority[0].ttl == 60 and nx.authority[0][0].minimum == 60


def test_missing_names_are_nxdomain_and_other_types_nodata_with_the_zone_soa(handler: Handler) -> None:
    for name, rdtype, rcode in (
        ("nope.shop.example.com", "A", dns.rcode.NXDOMAIN),
        ("x.web.shop.example.com", "A", dns.rcode.NXDOMAIN),
        ("nope.example.com", "AAAA", dns.rcode.NXDOMAIN),
        ("api.shop.example.com", "AAAA", dns.rcode.NOERROR),  # NODATA
        ("shop.example.com", "A", dns.rcode.NOERROR),  # the namespace: an empty non-terminal
        ("web.shop.example.com", "TXT", dns.rcode.NOERROR),
    ):
        r = ask(handler, name, rdtype)
        assert r.rcode() == rcode, name
        assert not r.answer and r.flags & dns.flags.AA
        assert [(rr.name.to_text(), rr.rdtype) for rr in r.authority] == [(ZONE, dns.rdatatype.SOA)], name


def test_any_gets_one_rrset(handler: Handler) -> None:
    r = ask(handler, "web.shop.example.com", "ANY")
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.A]


def test_answers_over_tcp_are_the_same(handler: Handler) -> None:
    assert rdatas(ask(handler, "web.shop.example.com", tcp=True).answer) == ["203.0.113.10"]


def test_names_outside_every_zone_stay_refused(handler: Handler) -> None:
    assert ask(handler, "web.shop.example.org").rcode() == dns.rcode.REFUSED
    assert ask(handler, "example").rcode() == dns.rcode.REFUSED


def test_a_store_change_recompiles_the_external_names() -> None:
    store, h = stack(service("shop", "web", "10.96.0.50", type="LoadBalancer"))
    assert ask(h, "web.shop.example.com").rcode() == dns.rcode.NXDOMAIN  # no ingress yet
    serial = ask(h, ZONE, "SOA").answer[0][0].serial
    store.upsert(parse_object(lb("shop", "web", ["203.0.113.10"], cluster_ip="10.96.0.50")))
    assert rdatas(ask(h, "web.shop.example.com").answer) == ["203.0.113.10"]
    assert ask(h, ZONE, "SOA").answer[0][0].serial != serial
    store.upsert(parse_object(lb("shop", "web", ["203.0.113.11"], cluster_ip="10.96.0.50")))
    assert rdatas(ask(h, "web.shop.example.com").answer) == ["203.0.113.11"]
    store.delete("Service", "shop", "web")
    assert ask(h, "web.shop.example.com").rcode() == dns.rcode.NXDOMAIN
    assert ask(h, "shop.example.com").rcode() == dns.rcode.NXDOMAIN  # its namespace name went with it


def test_before_the_first_sync_absence_is_servfail() -> None:
    store, h = build_cluster(ServeConfig(external_zones=["example.com"], listen=["127.0.0.1:0"]))
    assert ask(h, "web.shop.example.com").rcode() == dns.rcode.SERVFAIL
    store.mark_synced()
    assert ask(h, "web.shop.example.com").rcode() == dns.rcode.NXDOMAIN


def test_several_zones_each_publish_the_service() -> None:
    _, h = stack(lb("shop", "web", ["203.0.113.10"]), external_zones=["example.com", "Example.NET."])
    for zone in ("example.com", "example.net"):
        assert rdatas(ask(h, f"web.shop.{zone}").answer) == ["203.0.113.10"]
        nx = ask(h, f"nope.{zone}")
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].name.to_text() == zone + "."


def test_malformed_external_values_are_skipped_and_the_service_kept(caplog: pytest.LogCaptureFixture) -> None:
    bad = lb("shop", "web", ["203.0.113.10", "not-an-ip"], cluster_ip="10.96.0.50", externalIPs=[7, "198.51.100.9"])
    _, h = stack(bad)
    assert rdatas(ask(h, "web.shop.example.com").answer) == ["198.51.100.9", "203.0.113.10"]
    assert rdatas(ask(h, "web.shop.svc.cluster.local").answer) == ["10.96.0.50"]
    logged = caplog.text
    assert "status.loadBalancer.ingress[1].ip" in logged and "spec.externalIPs[0]" in logged


def test_an_external_zone_inside_the_cluster_zone_is_a_startup_error() -> None:
    from clusterdns.app.lifecycle import StartupError

    with pytest.raises(StartupError, match="overlaps the cluster zone"):
        build_cluster(ServeConfig(external_zones=["ext.cluster.local"], listen=["127.0.0.1:0"]))


def test_a_reload_rebuilds_the_external_zones_with_the_new_options() -> None:
    from dataclasses import replace

    from clusterdns.app.cluster import ClusterStack

    opts = ServeConfig(external_zones=["example.com"], listen=["127.0.0.1:0"], manifests=["unused.yaml"])
    stack_ = ClusterStack(opts)
    stack_.store.load([parse_object(lb("shop", "web", ["203.0.113.10"]))])
    stack_.store.mark_synced()
    old = stack_.handler.external
    stack_.rebuild(replace(opts, external_zones=["example.net"], external_ttl=60))
    r = ask(stack_.handler, "web.shop.example.net")
    assert rdatas(r.answer) == ["203.0.113.10"] and r.answer[0].ttl == 60
    assert ask(stack_.handler, "web.shop.example.com").rcode() == dns.rcode.REFUSED
    assert old is not None and old.apply not in stack_.store._listeners  # the old zones stopped following
