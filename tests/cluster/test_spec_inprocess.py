"""The spec table of tests/cluster/test_spec_table.py, answered in-process.

Same cases, same manifests and options as the `cluster_server` process, but the query
bytes go straight to `handler.handle`: no subprocess, no sockets, so the whole table
runs in milliseconds and can be run on every change to the compiled zone.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from clusterdns.app.cluster import build_cluster
from clusterdns.kube.manifests import load_manifests
from clusterdns.server.handler import Handler
from clusterdns.settings.schema import ServeConfig
from helpers import DEMO, TEST_CLUSTER
from test_spec_table import CASES

MANIFESTS = [str(DEMO), str(TEST_CLUSTER)]
LISTEN = ["127.0.0.1:0", "[::1]:0"]  # as conftest.cluster_server starts the process
NX = "NXDOMAIN"


@pytest.fixture(scope="module")
def handler() -> Handler:
    objects, skipped = load_manifests(MANIFESTS)
    assert not skipped, "the demo manifests load cleanly"
    store, handler = build_cluster(ServeConfig(manifests=MANIFESTS, listen=LISTEN))
    store.load(objects)
    return handler


def lines(section: list) -> list[str]:
    return sorted(" ".join(rr.to_text().split()) for rr in section)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("qname,qtype,rcode,answer", CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_spec_rule_in_process(handler: Handler, qname: str, qtype: str, rcode: str, answer: list[str],
                              tcp: bool) -> None:
    q = dns.message.make_query(qname, dns.rdatatype.from_text(qtype))
    wire = handler.handle(q.to_wire(), tcp)
    assert isinstance(wire, bytes), "cluster answers are immediate"
    r = dns.message.from_wire(wire, one_rr_per_rrset=True)
    assert r.id == q.id
    assert dns.rcode.to_text(r.rcode()) == rcode
    got = lines(r.answer)
    serial = next((g.split()[6] for g in got if " SOA " in g), "SERIAL")
    assert got == sorted(" ".join(a.replace("SERIAL", serial).split()) for a in answer)
    assert r.flags & dns.flags.AA and not r.flags & dns.flags.RA and not r.flags & dns.flags.TC
    if rcode == NX or not answer:  # negative answers carry their zone's SOA, MINIMUM = ttl
        soa = [rr for rr in r.authority if rr.rdtype == dns.rdatatype.SOA]
        apex = next((z for z in ("in-addr.arpa.", "ip6.arpa.") if qname.endswith(z)), "cluster.local.")
        assert [rr.name.to_text() for rr in soa] == [apex]
        assert soa[0][0].minimum == 5 and soa[0].ttl == 5
