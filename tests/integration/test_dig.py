"""The real `dig` (bind9-dnsutils) against the server: what a user poking at it sees.

`make test` installs dig when it is missing; if it still is, these tests fail (a skip
would hide a missing install step).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from helpers import ServerProcess


def dig(server: ServerProcess, *args: str) -> str:
    exe = shutil.which("dig")
    assert exe, "dig is missing: `make test` installs bind9-dnsutils with apt-get"
    out = subprocess.run([exe, "@127.0.0.1", "-p", str(server.port), "+time=2", "+tries=1", *args],
                         capture_output=True, text=True, timeout=20)
    return out.stdout


def status(text: str) -> str:
    m = re.search(r"status: (\w+)", text)
    assert m, text
    return m.group(1)


def flags(text: str) -> set[str]:
    m = re.search(r";; flags: ([a-z ]+);", text)
    assert m, text
    return set(m.group(1).split())


@pytest.mark.parametrize("tcp", ["+notcp", "+tcp"])
def test_dig_short_answers(cluster_server: ServerProcess, tcp: str) -> None:
    assert dig(cluster_server, tcp, "+short", "httpd-svc.default.svc.cluster.local").split() == ["10.99.229.179"]
    assert sorted(dig(cluster_server, tcp, "+short", "busybox-subdomain.default.svc.cluster.local").split()) == \
        ["10.244.1.10", "10.244.2.10"]
    assert dig(cluster_server, tcp, "+short", "SRV", "_https._tcp.my-nginx.default.svc.cluster.local").split() == \
        ["0", "100", "443", "my-nginx.default.svc.cluster.local."]
    assert dig(cluster_server, tcp, "+short", "-x", "10.99.229.179").split() == ["httpd-svc.default.svc.cluster.local."]
    assert dig(cluster_server, tcp, "+short", "AAAA", "my-dual-service.default.svc.cluster.local").split() == ["fd00:10:96::4d0c"]


def test_dig_nxdomain_and_nodata_carry_the_soa(cluster_server: ServerProcess) -> None:
    nx = dig(cluster_server, "nope.default.svc.cluster.local")
    assert status(nx) == "NXDOMAIN" and "aa" in flags(nx) and "ra" not in flags(nx)
    assert re.search(r"^cluster\.local\.\s+5\s+IN\s+SOA\s+ns\.dns\.cluster\.local\.", nx, re.M)
    nodata = dig(cluster_server, "AAAA", "httpd-svc.default.svc.cluster.local")
    assert status(nodata) == "NOERROR" and "ANSWER: 0" in nodata and " SOA " in nodata.replace("\t", " ")


def test_dig_plain_dns_gets_no_opt(cluster_server: ServerProcess) -> None:
    out = dig(cluster_server, "+norec", "+noedns", "SOA", "cluster.local")
    assert status(out) == "NOERROR" and "OPT PSEUDOSECTION" not in out


def test_dig_edns_version_1_gets_badvers(cluster_server: ServerProcess) -> None:
    out = dig(cluster_server, "+edns=1", "+noednsneg", "httpd-svc.default.svc.cluster.local")
    assert status(out) == "BADVERS"
    assert "EDNS: version: 0" in out


def test_dig_dnssec_ok_is_echoed_and_cookie_option_ignored(cluster_server: ServerProcess) -> None:
    out = dig(cluster_server, "+dnssec", "+cookie", "httpd-svc.default.svc.cluster.local")
    assert status(out) == "NOERROR"
    assert re.search(r"EDNS: version: 0, flags: do;", out)
    assert "10.99.229.179" in out


def test_dig_unknown_option_and_z_flags(cluster_server: ServerProcess) -> None:
    out = dig(cluster_server, "+ednsopt=100", "+ednsflags=0x80", "httpd-svc.default.svc.cluster.local")
    assert status(out) == "NOERROR" and "10.99.229.179" in out
    assert "MBZ" not in out, "undefined EDNS flags are not echoed"


def test_dig_unknown_type_and_opcode(cluster_server: ServerProcess) -> None:
    assert status(dig(cluster_server, "TYPE1000", "httpd-svc.default.svc.cluster.local")) == "NOERROR"
    assert status(dig(cluster_server, "+opcode=15", "httpd-svc.default.svc.cluster.local")) == "NOTIMP"


def test_dig_large_answer_truncates_then_tcp_completes(cluster_server: ServerProcess) -> None:
    out = dig(cluster_server, "+bufsize=512", "+ignore", "big.team.svc.cluster.local")
    assert "tc" in flags(out)
    assert int(re.search(r"MSG SIZE  rcvd: (\d+)", out).group(1)) <= 512
    full = dig(cluster_server, "+tcp", "+short", "big.team.svc.cluster.local").split()
    assert len(full) == 300
    retried = dig(cluster_server, "+bufsize=512", "+short", "big.team.svc.cluster.local").split()
    assert len(retried) == 300, "dig retries over TCP on TC and gets everything"


def test_dig_out_of_zone_is_refused(cluster_server: ServerProcess) -> None:
    assert status(dig(cluster_server, "example.com")) == "REFUSED"
    # dig prints no header for a refused transfer, only that it failed
    assert "Transfer failed" in dig(cluster_server, "AXFR", "cluster.local")
