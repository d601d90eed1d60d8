"""The Kubernetes DNS specification as a table: one case per rule, over UDP and TCP.

Each case is (qname, qtype, rcode, expected answer records as zone-file lines). The
client is dnspython talking to a real `clusterdns serve` process on loopback.
Rules and sources: shared/docs/dns-spec.md (section numbers in the comments).
"""

from __future__ import annotations

import dns.flags
import dns.rcode
import pytest

from helpers import ServerProcess, query

Z = "cluster.local."
NX, OK = "NXDOMAIN", "NOERROR"

CASES: list[tuple[str, str, str, list[str]]] = [
    # 3.2 ClusterIP services
    ("httpd-svc.default.svc.cluster.local.", "A", OK, ["httpd-svc.default.svc.cluster.local. 5 IN A 10.99.229.179"]),
    ("httpd-svc.default.svc.cluster.local.", "AAAA", OK, []),  # v4-only: NODATA, never NXDOMAIN
    ("my-dual-service.default.svc.cluster.local.", "A", OK, ["my-dual-service.default.svc.cluster.local. 5 IN A 10.96.77.12"]),
    ("my-dual-service.default.svc.cluster.local.", "AAAA", OK, ["my-dual-service.default.svc.cluster.local. 5 IN AAAA fd00:10:96::4d0c"]),
    ("kubernetes.default.svc.cluster.local.", "A", OK, ["kubernetes.default.svc.cluster.local. 5 IN A 10.96.0.1"]),
    ("httpd2-svc.kube-public.svc.cluster.local.", "A", OK, ["httpd2-svc.kube-public.svc.cluster.local. 5 IN A 10.102.0.20"]),
    ("lonely.team.svc.cluster.local.", "A", OK, ["lonely.team.svc.cluster.local. 5 IN A 10.96.50.50"]),  # no endpoints
    ("httpd-svc.default.svc.cluster.local.", "TXT", OK, []),
    ("httpd-svc.default.svc.cluster.local.", "CNAME", OK, []),
    ("httpd-svc.default.svc.cluster.local.", "TYPE1000", OK, []),  # unknown type: NODATA
    ("nope.default.svc.cluster.local.", "A", NX, []),
    ("nope.default.svc.cluster.local.", "AAAA", NX, []),
    # 3.3 SRV for named ports (ClusterIP: service port, target the service)
    ("_http._tcp.my-nginx.default.svc.cluster.local.", "SRV", OK,
     ["_http._tcp.my-nginx.default.svc.cluster.local. 5 IN SRV 0 100 80 my-nginx.default.svc.cluster.local."]),
    ("_https._tcp.my-nginx.default.svc.cluster.local.", "SRV", OK,
     ["_https._tcp.my-nginx.default.svc.cluster.local. 5 IN SRV 0 100 443 my-nginx.default.svc.cluster.local."]),
    ("_dns._udp.kube-dns.kube-system.svc.cluster.local.", "SRV", OK,
     ["_dns._udp.kube-dns.kube-system.svc.cluster.local. 5 IN SRV 0 100 53 kube-dns.kube-system.svc.cluster.local."]),
    ("_http._udp.my-nginx.default.svc.cluster.local.", "SRV", NX, []),  # wrong protocol
    ("_ftp._tcp.my-nginx.default.svc.cluster.local.", "SRV", NX, []),  # unknown port name
    ("_tcp.my-nginx.default.svc.cluster.local.", "SRV", OK, []),  # empty non-terminal (RFC 8020)
    ("_http._tcp.my-nginx.default.svc.cluster.local.", "A", OK, []),
    # 3.4 headless: ready endpoints only, hostnames, duplicates once, nil ready = ready
    ("busybox-subdomain.default.svc.cluster.local.", "A", OK,
     ["busybox-subdomain.default.svc.cluster.local. 5 IN A 10.244.1.10",
      "busybox-subdomain.default.svc.cluster.local. 5 IN A 10.244.2.10"]),
    ("busybox-1.busybox-subdomain.default.svc.cluster.local.", "A", OK,
     ["busybox-1.busybox-subdomain.default.svc.cluster.local. 5 IN A 10.244.1.10"]),
    ("busybox-3.busybox-subdomain.default.svc.cluster.local.", "A", NX, []),  # not ready
    ("_foo._tcp.busybox-subdomain.default.svc.cluster.local.", "SRV", OK,
     ["_foo._tcp.busybox-subdomain.default.svc.cluster.local. 5 IN SRV 0 50 1234 busybox-1.busybox-subdomain.default.svc.cluster.local.",
      "_foo._tcp.busybox-subdomain.default.svc.cluster.local. 5 IN SRV 0 50 1234 busybox-2.busybox-subdomain.default.svc.cluster.local."]),
    ("db.team.svc.cluster.local.", "A", OK,
     ["db.team.svc.cluster.local. 5 IN A 10.244.5.1", "db.team.svc.cluster.local. 5 IN A 10.244.5.2",
      "db.team.svc.cluster.local. 5 IN A 10.244.5.4"]),
    ("db.team.svc.cluster.local.", "AAAA", OK, ["db.team.svc.cluster.local. 5 IN AAAA fd00:10:244:5::1"]),
    ("db-0.db.team.svc.cluster.local.", "A", OK, ["db-0.db.team.svc.cluster.local. 5 IN A 10.244.5.1"]),
    ("db-0.db.team.svc.cluster.local.", "AAAA", OK, ["db-0.db.team.svc.cluster.local. 5 IN AAAA fd00:10:244:5::1"]),
    ("db-1.db.team.svc.cluster.local.", "AAAA", OK, []),  # v4-only endpoint name: NODATA
    ("db-2.db.team.svc.cluster.local.", "A", NX, []),  # ready: false
    ("10-244-5-4.db.team.svc.cluster.local.", "A", OK, ["10-244-5-4.db.team.svc.cluster.local. 5 IN A 10.244.5.4"]),
    ("10-244-5-1.db.team.svc.cluster.local.", "A", NX, []),  # has a hostname: no dashed name
    ("_pg._tcp.db.team.svc.cluster.local.", "SRV", OK,
     ["_pg._tcp.db.team.svc.cluster.local. 5 IN SRV 0 33 5432 db-0.db.team.svc.cluster.local.",
      "_pg._tcp.db.team.svc.cluster.local. 5 IN SRV 0 33 5432 db-1.db.team.svc.cluster.local.",
      "_pg._tcp.db.team.svc.cluster.local. 5 IN SRV 0 33 5432 10-244-5-4.db.team.svc.cluster.local."]),
    ("unready.team.svc.cluster.local.", "A", NX, []),  # headless, no ready endpoints
    ("unready.team.svc.cluster.local.", "AAAA", NX, []),
    ("_http._tcp.unready.team.svc.cluster.local.", "SRV", NX, []),
    ("placeholder.team.svc.cluster.local.", "A", NX, []),  # endpoints: null
    ("peers.team.svc.cluster.local.", "A", OK, ["peers.team.svc.cluster.local. 5 IN A 10.244.6.1"]),  # publishNotReadyAddresses
    ("legacy.team.svc.cluster.local.", "A", OK,  # v1 Endpoints when there are no slices
     ["legacy.team.svc.cluster.local. 5 IN A 192.0.2.10", "legacy.team.svc.cluster.local. 5 IN A 192.0.2.11"]),
    ("old-a.legacy.team.svc.cluster.local.", "A", OK, ["old-a.legacy.team.svc.cluster.local. 5 IN A 192.0.2.10"]),
    # 3.5 endpoint names under a ClusterIP service (CoreDNS)
    ("10-244-1-2.httpd-svc.default.svc.cluster.local.", "A", OK,
     ["10-244-1-2.httpd-svc.default.svc.cluster.local. 5 IN A 10.244.1.2"]),
    # 3.6 ExternalName: CNAME for every type; chased inside the zone
    ("my-service.prod.svc.cluster.local.", "A", OK, ["my-service.prod.svc.cluster.local. 5 IN CNAME my.database.example.com."]),
    ("my-service.prod.svc.cluster.local.", "TXT", OK, ["my-service.prod.svc.cluster.local. 5 IN CNAME my.database.example.com."]),
    ("my-service.prod.svc.cluster.local.", "CNAME", OK, ["my-service.prod.svc.cluster.local. 5 IN CNAME my.database.example.com."]),
    ("alias.team.svc.cluster.local.", "A", OK,
     ["alias.team.svc.cluster.local. 5 IN CNAME my-nginx.default.svc.cluster.local.",
      "my-nginx.default.svc.cluster.local. 5 IN A 10.96.162.149"]),
    ("dangling.team.svc.cluster.local.", "A", NX,  # RFC 6604: CNAME kept, rcode of the target
     ["dangling.team.svc.cluster.local. 5 IN CNAME missing.default.svc.cluster.local."]),
    ("by-ip.team.svc.cluster.local.", "A", NX, []),  # an IP is not a valid externalName
    ("x.my-service.prod.svc.cluster.local.", "A", NX, []),  # nothing below an ExternalName
    ("_http._tcp.my-service.prod.svc.cluster.local.", "SRV", NX, []),
    # 3.7 PTR: cluster IPs (v4 and v6) and endpoints
    ("179.229.99.10.in-addr.arpa.", "PTR", OK, ["179.229.99.10.in-addr.arpa. 5 IN PTR httpd-svc.default.svc.cluster.local."]),
    ("10.1.244.10.in-addr.arpa.", "PTR", OK,
     ["10.1.244.10.in-addr.arpa. 5 IN PTR busybox-1.busybox-subdomain.default.svc.cluster.local."]),
    ("2.1.244.10.in-addr.arpa.", "PTR", OK, ["2.1.244.10.in-addr.arpa. 5 IN PTR 10-244-1-2.httpd-svc.default.svc.cluster.local."]),
    ("c.0.d.4.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.", "PTR", OK,
     ["c.0.d.4.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa. 5 IN PTR my-dual-service.default.svc.cluster.local."]),
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.5.0.0.0.4.4.2.0.0.1.0.0.0.0.d.f.ip6.arpa.", "PTR", OK,
     ["1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.5.0.0.0.4.4.2.0.0.1.0.0.0.0.d.f.ip6.arpa. 5 IN PTR db-0.db.team.svc.cluster.local."]),
    ("4.3.2.1.in-addr.arpa.", "PTR", NX, []),
    ("179.229.99.10.in-addr.arpa.", "A", OK, []),  # a PTR name, another type: NODATA
    ("229.99.10.in-addr.arpa.", "PTR", OK, []),  # empty non-terminal
    ("1.3.244.10.in-addr.arpa.", "PTR", NX, []),  # not-ready endpoint: no PTR
    # 3.8 pod records (pods insecure)
    ("10-244-1-2.default.pod.cluster.local.", "A", OK, ["10-244-1-2.default.pod.cluster.local. 5 IN A 10.244.1.2"]),
    ("fd00-10-244-1--5.default.pod.cluster.local.", "AAAA", OK, ["fd00-10-244-1--5.default.pod.cluster.local. 5 IN AAAA fd00:10:244:1::5"]),
    ("1-2-3-999.default.pod.cluster.local.", "A", NX, []),
    ("1-2-3-4.nosuchns.pod.cluster.local.", "A", NX, []),  # namespace must exist
    ("x.1-2-3-4.default.pod.cluster.local.", "A", NX, []),
    ("default.pod.cluster.local.", "A", OK, []),
    ("pod.cluster.local.", "A", OK, []),
    # 3.9 apex and structural names; 3.1 schema version
    ("cluster.local.", "SOA", OK, ["cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 5"]),
    ("cluster.local.", "NS", OK, ["cluster.local. 5 IN NS ns.dns.cluster.local."]),
    ("cluster.local.", "A", OK, []),
    ("ns.dns.cluster.local.", "A", OK, ["ns.dns.cluster.local. 5 IN A 10.96.0.10"]),
    ("dns-version.cluster.local.", "TXT", OK, ['dns-version.cluster.local. 28800 IN TXT "1.1.0"']),
    ("dns-version.cluster.local.", "A", OK, []),
    ("svc.cluster.local.", "A", OK, []),
    ("default.svc.cluster.local.", "A", OK, []),
    ("empty-ns.svc.cluster.local.", "A", OK, []),  # exists, empty
    ("nosuchns.svc.cluster.local.", "A", NX, []),
    ("foo.cluster.local.", "A", NX, []),
    ("a.b.c.httpd-svc.default.svc.cluster.local.", "A", NX, []),
    ("www.example.com.default.svc.cluster.local.", "A", NX, []),  # search-path miss
    ("httpd-svc.default.svc.cluster.local.", "SOA", OK, []),  # SOA at an existing non-apex name
    ("nope.default.svc.cluster.local.", "SOA", NX, []),
    # RFC 8482: ANY gets one RRset
    ("httpd-svc.default.svc.cluster.local.", "ANY", OK, ["httpd-svc.default.svc.cluster.local. 5 IN A 10.99.229.179"]),
]


def _lines(msg, section: str) -> set[str]:
    out = set()
    for rrset in getattr(msg, section):
        for line in rrset.to_text().splitlines():
            out.add(" ".join(line.split()))
    return out


def _normalise(expected: list[str], got: set[str]) -> set[str]:
    """SOA serials change with the store; compare the rest of the record."""
    serial = next((g.split()[6] for g in got if " SOA " in g), "SERIAL")
    return {" ".join(e.replace("SERIAL", serial).split()) for e in expected}


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("qname,qtype,rcode,answer", CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_spec_rule(cluster_server: ServerProcess, qname: str, qtype: str, rcode: str, answer: list[str], tcp: bool) -> None:
    r = query(cluster_server, qname, qtype, tcp=tcp)
    assert dns.rcode.to_text(r.rcode()) == rcode
    got = _lines(r, "answer")
    assert got == _normalise(answer, got)
    assert r.flags & dns.flags.AA, "cluster-zone answers are authoritative"
    assert not r.flags & dns.flags.RA, "the cluster zone does not claim recursion"
    if rcode == NX or not answer:
        # every negative answer carries its zone's SOA; MINIMUM (negative TTL) = ttl
        soa = [rr for rr in r.authority if rr.rdtype == 6]
        assert soa, "negative answers carry the SOA"
        apex = "in-addr.arpa." if qname.endswith("in-addr.arpa.") else "ip6.arpa." if qname.endswith("ip6.arpa.") else Z
        assert soa[0].name.to_text() == apex
        assert soa[0][0].minimum == 5 and soa[0].ttl == 5
