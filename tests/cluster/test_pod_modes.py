"""Pod records in each `--pods` mode (dns-spec.md 3.8), from manifests."""

from __future__ import annotations

import dns.rcode
import pytest

from helpers import DEMO, ServerProcess, query

KNOWN = "10-244-1-2.default.pod.cluster.local."  # httpd pod in the demo cluster
UNKNOWN = "1-2-3-4.default.pod.cluster.local."


@pytest.mark.parametrize("mode,known,unknown,ns_name", [
    ("insecure", "NOERROR", "NOERROR", "NOERROR"),
    ("verified", "NOERROR", "NXDOMAIN", "NOERROR"),
    ("disabled", "NXDOMAIN", "NXDOMAIN", "NXDOMAIN"),
])
def test_pod_records_per_mode(mode: str, known: str, unknown: str, ns_name: str) -> None:
    with ServerProcess("serve", "--manifests", str(DEMO), "--listen", "127.0.0.1:0", "--pods", mode) as srv:
        r = query(srv, KNOWN, "A")
        assert dns.rcode.to_text(r.rcode()) == known
        if known == "NOERROR":
            assert r.answer[0][0].address == "10.244.1.2"
        assert dns.rcode.to_text(query(srv, UNKNOWN, "A").rcode()) == unknown
        assert dns.rcode.to_text(query(srv, "default.pod.cluster.local.", "A").rcode()) == ns_name
        # pod.<zone> itself always exists
        assert query(srv, "pod.cluster.local.", "A").rcode() == dns.rcode.NOERROR
