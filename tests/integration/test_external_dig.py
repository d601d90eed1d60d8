"""External zones against a running `clusterdns serve --external-zone example.com`: the demo
cluster's LoadBalancer and externalIPs Services, asked with the real `dig` and with dnspython."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from helpers import DEMO, ServerProcess


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("serve", "--manifests", str(DEMO), "--listen", "127.0.0.1:0",
                       "--external-zone", "example.com") as srv:
        yield srv


def dig(server: ServerProcess, *args: str) -> str:
    exe = shutil.which("dig")
    assert exe, "dig is missing: `make test` installs bind9-dnsutils with apt-get"
    out = subprocess.run([exe, "@127.0.0.1", "-p", str(server.port), "+time=2", "+tries=1", *args],
                         capture_output=True, text=True, timeout=20)
    return out.stdout


def ask(server: ServerProcess, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    r = send(q, "127.0.0.1", port=server.port, timeout=2)
    assert r.id == q.id
    return r


@pytest.mark.parametrize("tcp", ["+notcp", "+tcp"])
def test_dig_finds_the_loadbalancer_and_the_external_ip(server: ServerProcess, tcp: str) -> None:
    assert dig(server, tcp, "+short", "web-lb.default.example.com").split() == ["203.0.113.10"]
    assert dig(server, tcp, "+short", "metrics-ext.kube-public.example.com").split() == ["198.51.100.20"]
    assert dig(server, tcp, "+short", "SRV", "_http._tcp.web-lb.default.example.com").split() == \
        ["0", "100", "80", "web-lb.default.example.com."]


def test_dig_apex_ns_carries_this_servers_address(server: ServerProcess) -> None:
    out = dig(server, "+noall", "+answer", "+additional", "NS", "example.com")
    assert re.search(r"^example\.com\.\s+5\s+IN\s+NS\s+ns1\.dns\.example\.com\.$", out, re.M), out
    assert re.search(r"^ns1\.dns\.example\.com\.\s+5\s+IN\s+A\s+127\.0\.0\.1$", out, re.M), out


def test_dig_nxdomain_carries_the_external_soa_and_no_cluster_ip(server: ServerProcess) -> None:
    out = dig(server, "httpd-svc.default.example.com")  # a ClusterIP Service: not published
    assert "status: NXDOMAIN" in out and re.search(r";; flags: [a-z ]*\baa\b", out), out
    assert re.search(r"^example\.com\.\s+5\s+IN\s+SOA\s+ns1\.dns\.example\.com\. hostmaster\.example\.com\.", out, re.M)
    assert "10.99.229.179" not in out


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dnspython_answers_authoritatively_and_without_cluster_ips(server: ServerProcess, tcp: bool) -> None:
    r = ask(server, "web-lb.default.example.com", tcp=tcp)
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA and not r.flags & dns.flags.RA
    assert [rd.to_text() for rrset in r.answer for rd in rrset] == ["203.0.113.10"]
    assert ask(server, "web-lb.default.svc.cluster.local", tcp=tcp).answer[0][0].to_text() == "10.96.200.10"
    nodata = ask(server, "web-lb.default.example.com", "AAAA", tcp=tcp)
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA and nodata.authority[0].name.to_text() == "example.com."


def test_names_under_no_zone_stay_refused(server: ServerProcess) -> None:
    assert ask(server, "web-lb.default.example.org").rcode() == dns.rcode.REFUSED
