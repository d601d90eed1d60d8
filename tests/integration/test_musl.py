"""musl's own resolver (Alpine pods) against `clusterdns serve` on 127.0.0.1:53.

musl up to 1.2.3 (Alpine <= 3.17) sends plain 512-byte UDP queries without EDNS and
never retries over TCP: a TC answer is all it ever sees. So a headless Service with
more ready endpoints than fit in 512 bytes resolves for those pods only if the
truncated answer still carries as many whole A records as fit (CoreDNS sends 28).

The resolver program is built with `musl-gcc -static` (`make test` installs
musl-tools; if it is still missing these tests fail rather than skip). musl only
talks to port 53 and reads /etc/resolv.conf, so, as in tests/forward/test_pod_view.py,
the server takes 127.0.0.1:53 in the suite's private network namespace (`unshare -n`)
and the client runs under `unshare -m` with a pod's resolv.conf bind-mounted over
/etc/resolv.conf. The dnspython checks pin the same wire behaviour independently of
the installed musl (a musl that does retry over TCP would hide a truncation bug).
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from helpers import ServerProcess, port_53_free

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "musl_resolve.c"

HEADLESS = "crowd.default.svc.cluster.local"
CLUSTER_IP_NAME = "api.default.svc.cluster.local"
CLUSTER_IP = "10.96.40.10"
ENDPOINTS = [f"10.244.40.{i}" for i in range(1, 41)]
CLASSIC_UDP = 512
COREDNS_FILL = 28  # A records CoreDNS packs into 512 bytes for a name this long

POD_RESOLV_CONF = """\
search default.svc.cluster.local svc.cluster.local cluster.local
nameserver 127.0.0.1
options ndots:5 timeout:2 attempts:2
"""


def _manifest() -> str:
    """A ClusterIP Service and a headless one whose 40 ready endpoints span two slices."""
    docs = [
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: default}\n"
        f"spec: {{clusterIP: {CLUSTER_IP}, ports: [{{name: http, port: 80, protocol: TCP}}]}}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: crowd, namespace: default}\n"
        "spec: {clusterIP: None, ports: [{name: http, port: 80, protocol: TCP}]}\n",
    ]
    for part, chunk in (("a", ENDPOINTS[:20]), ("b", ENDPOINTS[20:])):
        endpoints = "".join(f"- {{addresses: [{ip}], conditions: {{ready: true}}}}\n" for ip in chunk)
        docs.append(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata: {{name: crowd-{part}, namespace: default, "
            "labels: {kubernetes.io/service-name: crowd}}\n"
            f"addressType: IPv4\nendpoints:\n{endpoints}"
            "ports: [{name: http, port: 80, protocol: TCP}]\n")
    return "---\n".join(docs)


@pytest.fixture(scope="module")
def musl_resolve(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The static musl getaddrinfo client, built fresh so it always matches the source."""
    cc = shutil.which("musl-gcc")
    if cc is None:
        pytest.fail("musl-gcc is missing: `make test` installs musl-tools with apt-get")
    exe = tmp_path_factory.mktemp("musl") / "musl_resolve"
    done = subprocess.run([cc, "-static", "-O2", "-Wall", "-Werror", "-o", str(exe), str(SOURCE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"musl-gcc failed:\n{done.stdout}{done.stderr}"
    return exe


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`clusterdns serve` on 127.0.0.1:53, the only port musl's resolver uses."""
    port_53_free()
    manifest = tmp_path_factory.mktemp("cluster") / "crowd.yaml"
    manifest.write_text(_manifest())
    with ServerProcess("serve", "--manifests", str(manifest), "--listen", "127.0.0.1:53") as srv:
        yield srv


@pytest.fixture(scope="module")
def pod_resolv_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pod") / "resolv.conf"
    path.write_text(POD_RESOLV_CONF)
    return path


def musl_lookup(exe: Path, resolv_conf: Path, name: str) -> list[str]:
    """Addresses musl's getaddrinfo returns for `name` in a pod's mount namespace."""
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, str(resolv_conf), str(exe), name],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, f"musl getaddrinfo({name!r}) failed (rc {done.returncode}): " \
                                 f"{done.stderr.strip() or done.stdout.strip()}"
    return done.stdout.split()


def test_musl_resolves_a_cluster_ip_service(server: ServerProcess, musl_resolve: Path,
                                            pod_resolv_conf: Path) -> None:
    assert musl_lookup(musl_resolve, pod_resolv_conf, CLUSTER_IP_NAME) == [CLUSTER_IP]


@pytest.mark.parametrize("name", ["api", "api.default"])
def test_musl_resolves_short_names_through_the_search_path(server: ServerProcess, musl_resolve: Path,
                                                           pod_resolv_conf: Path, name: str) -> None:
    assert musl_lookup(musl_resolve, pod_resolv_conf, name) == [CLUSTER_IP]


@pytest.mark.parametrize("name", [HEADLESS, "crowd"])
def test_musl_gets_a_full_512_byte_answer_for_a_big_headless_service(
        server: ServerProcess, musl_resolve: Path, pod_resolv_conf: Path, name: str) -> None:
    """musl <= 1.2.3 has only the truncated UDP answer: it must be filled, not emptied."""
    got = musl_lookup(musl_resolve, pod_resolv_conf, name)
    assert len(got) == len(set(got)), f"duplicate addresses: {got}"
    assert set(got) <= set(ENDPOINTS), f"addresses outside the 40 endpoints: {set(got) - set(ENDPOINTS)}"
    assert len(got) >= COREDNS_FILL, f"musl got {len(got)} of {len(ENDPOINTS)} endpoints, want >= {COREDNS_FILL}"


def _udp_no_edns(server: ServerProcess, name: str) -> bytes:
    """Raw reply bytes to a plain (no EDNS) UDP A query, as musl sends it."""
    q = dns.message.make_query(name, dns.rdatatype.A, use_edns=False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(q.to_wire(), ("127.0.0.1", server.port))
        wire, _ = s.recvfrom(65535)
    return wire


def test_plain_udp_truncation_keeps_as_many_whole_a_records_as_fit(server: ServerProcess) -> None:
    """TC=1 with a non-empty answer: clients that never retry over TCP still get addresses."""
    wire = _udp_no_edns(server, HEADLESS)
    assert len(wire) <= CLASSIC_UDP, f"{len(wire)}-byte answer to a query without EDNS"
    msg = dns.message.from_wire(wire, ignore_trailing=False)  # raises on a partial record
    assert msg.flags & dns.flags.TC, "an answer cut to 512 bytes must set TC"
    ancount = struct.unpack("!H", wire[6:8])[0]
    records = [(rrset.rdtype, rd.address) for rrset in msg.answer for rd in rrset]
    assert ancount == len(records) > 0, \
        f"TC answer has ANCOUNT {ancount} and {len(records)} records: the answer section was emptied"
    assert all(rrset.name.to_text() == HEADLESS + "." for rrset in msg.answer)
    assert {rdtype for rdtype, _ in records} == {dns.rdatatype.A}
    addresses = [a for _, a in records]
    assert len(addresses) == len(set(addresses)) and set(addresses) <= set(ENDPOINTS)
    assert len(addresses) >= COREDNS_FILL, f"{len(addresses)} A records in {len(wire)} bytes, want >= {COREDNS_FILL}"


def test_tcp_returns_every_ready_endpoint(server: ServerProcess) -> None:
    """TCP has no 512-byte limit: the whole RRset, untruncated."""
    q = dns.message.make_query(HEADLESS, dns.rdatatype.A, use_edns=False)
    msg = dns.query.tcp(q, "127.0.0.1", port=server.port, timeout=3)
    assert not msg.flags & dns.flags.TC
    assert sorted(rd.address for rrset in msg.answer for rd in rrset) == sorted(ENDPOINTS)
