"""`--refuse-tld-namespaces` (CVE-2022-2837): a namespace named like a TLD captures pods'
lookups of names under that TLD through the search path; with the option its svc tree
answers NXDOMAIN.

In-process first (the query bytes straight to the handler), then one pod-like resolver
(dnspython with a pod's search path and ndots:5) against a running server.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from clusterdns.app.cluster import build_cluster, build_zone
from clusterdns.cluster import tld
from clusterdns.kube.manifests import load_manifests
from clusterdns.kube.store import ClusterStore
from clusterdns.server.handler import Handler
from clusterdns.settings.schema import ServeConfig
from helpers import ServerProcess

CAPTURED_IP = "10.96.7.7"  # Service example in namespace com: what example.com.svc.<zone> holds
UPSTREAM_IP = "192.0.2.80"  # what the world's example.com is, from the loopback upstream
OPTION = "--refuse-tld-namespaces"

CLUSTER = f"""\
apiVersion: v1
kind: List
items:
- {{apiVersion: v1, kind: Namespace, metadata: {{name: default}}}}
- {{apiVersion: v1, kind: Namespace, metadata: {{name: com}}}}
- {{apiVersion: v1, kind: Namespace, metadata: {{name: example}}}}
- apiVersion: v1
  kind: Service
  metadata: {{name: example, namespace: com}}
  spec:
    type: ClusterIP
    clusterIP: {CAPTURED_IP}
    clusterIPs: [{CAPTURED_IP}, "fd00::7:7"]
    ports:
    - {{name: http, port: 80, protocol: TCP}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: example-abcde
    namespace: com
    labels: {{kubernetes.io/service-name: example}}
  addressType: IPv4
  endpoints:
  - addresses: [10.244.7.7]
    hostname: web-0
    conditions: {{ready: true}}
  ports:
  - {{name: http, port: 80, protocol: TCP}}
- apiVersion: v1
  kind: Service
  metadata: {{name: example, namespace: example}}
  spec:
    type: ClusterIP
    clusterIP: 10.96.8.8
    clusterIPs: [10.96.8.8]
    ports:
    - {{name: http, port: 80, protocol: TCP}}
- apiVersion: v1
  kind: Service
  metadata: {{name: kubernetes, namespace: default}}
  spec:
    type: ClusterIP
    clusterIP: 10.96.0.1
    clusterIPs: [10.96.0.1]
    ports:
    - {{name: https, port: 443, protocol: TCP}}
"""

LATER = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: api, namespace: com}
  spec: {type: ClusterIP, clusterIP: 10.96.7.8, clusterIPs: [10.96.7.8], ports: [{port: 80, protocol: TCP}]}
- apiVersion: v1
  kind: Service
  metadata: {name: github, namespace: io}
  spec: {type: ClusterIP, clusterIP: 10.96.9.9, clusterIPs: [10.96.9.9], ports: [{port: 80, protocol: TCP}]}
"""

#: every kind of name under com.svc.cluster.local: the namespace apex, the Service, an
#: endpoint, its SRV names and the `_proto` empty non-terminal
TLD_NAMES = [
    ("com.svc.cluster.local.", "A"),
    ("com.svc.cluster.local.", "SOA"),
    ("example.com.svc.cluster.local.", "A"),
    ("example.com.svc.cluster.local.", "AAAA"),
    ("example.com.svc.cluster.local.", "SRV"),
    ("example.com.svc.cluster.local.", "TXT"),
    ("example.com.svc.cluster.local.", "ANY"),
    ("_http._tcp.example.com.svc.cluster.local.", "SRV"),
    ("_tcp.example.com.svc.cluster.local.", "A"),
    ("web-0.example.com.svc.cluster.local.", "A"),
]


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tld") / "cluster.yaml"
    path.write_text(CLUSTER)
    return path


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees its own first warnings (they are once a process)."""
    monkeypatch.setattr(tld, "_warned", set())


def serve(manifests: Path, refuse: bool) -> tuple[ClusterStore, Handler]:
    opts = ServeConfig(manifests=[str(manifests)], listen=["127.0.0.1:0"], refuse_tld_namespaces=refuse)
    store, handler = build_cluster(opts)
    objects, skipped = load_manifests([str(manifests)])
    assert not skipped
    store.load(objects)
    return store, handler


def ask(handler: Handler, name: str, rdtype: str) -> dns.message.Message:
    q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
    wire = handler.handle(q.to_wire(), False)
    assert isinstance(wire, bytes)
    return dns.message.from_wire(wire)


def later_objects(tmp_path: Path) -> list:
    path = tmp_path / "later.yaml"
    path.write_text(LATER)
    objects, _ = load_manifests([str(path)])
    return objects


def tld_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and OPTION in r.getMessage()]


# ---------------------------------------------------------------------- the TLD list
@pytest.mark.parametrize("label", ["com", "io", "dev", "co", "ck", "xn--fiqs8s", "COM"])
def test_tlds_of_the_public_suffix_list_are_tlds(label: str) -> None:
    assert tld.is_tld(label)


@pytest.mark.parametrize("label", ["default", "kube-system", "kube-public", "example", "local", "svc", "github.io", ""])
def test_ordinary_namespaces_are_not_tlds(label: str) -> None:
    assert not tld.is_tld(label)


def test_the_list_is_not_read_with_the_option_off(manifests: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable() -> None:
        raise AssertionError("the public suffix list was read with the option off")

    monkeypatch.setattr(tld, "_suffixes", unavailable)
    _, handler = serve(manifests, refuse=False)
    assert ask(handler, "example.com.svc.cluster.local.", "A").rcode() == dns.rcode.NOERROR


# ---------------------------------------------------------------------- answers
def test_tld_namespace_answered_without_the_option(manifests: Path) -> None:
    """The spec's answer, and CoreDNS's: the capture the option exists to stop."""
    _, handler = serve(manifests, refuse=False)
    r = ask(handler, "example.com.svc.cluster.local.", "A")
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == CAPTURED_IP
    assert ask(handler, "example.com.svc.cluster.local.", "AAAA").answer[0][0].address == "fd00::7:7"
    assert ask(handler, "_http._tcp.example.com.svc.cluster.local.", "SRV").answer[0][0].port == 80
    assert ask(handler, "example.com.svc.cluster.local.", "SRV").answer
    apex = ask(handler, "com.svc.cluster.local.", "A")
    assert apex.rcode() == dns.rcode.NOERROR and not apex.answer  # the namespace exists: NODATA


@pytest.mark.parametrize("name,rdtype", TLD_NAMES, ids=[f"{n}{t}" for n, t in TLD_NAMES])
def test_tld_namespace_is_nxdomain_with_the_option(manifests: Path, name: str, rdtype: str) -> None:
    _, handler = serve(manifests, refuse=True)
    r = ask(handler, name, rdtype)
    assert dns.rcode.to_text(r.rcode()) == "NXDOMAIN" and not r.answer
    soa = [rr for rr in r.authority if rr.rdtype == dns.rdatatype.SOA]
    assert [rr.name.to_text() for rr in soa] == ["cluster.local."]  # like every other NXDOMAIN


def test_tld_namespace_appearing_later_is_nxdomain(manifests: Path, tmp_path: Path) -> None:
    """Decided when the namespace appears (a watch event), not only at start."""
    store, handler = serve(manifests, refuse=True)
    store.upsert(later_objects(tmp_path)[1])  # Service github in namespace io
    assert ask(handler, "github.io.svc.cluster.local.", "A").rcode() == dns.rcode.NXDOMAIN
    assert ask(handler, "io.svc.cluster.local.", "A").rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("refuse", [False, True], ids=["off", "on"])
def test_other_namespaces_are_unaffected(manifests: Path, refuse: bool) -> None:
    _, handler = serve(manifests, refuse=refuse)
    r = ask(handler, "example.example.svc.cluster.local.", "A")
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "10.96.8.8"
    assert ask(handler, "kubernetes.default.svc.cluster.local.", "A").answer[0][0].address == "10.96.0.1"
    assert ask(handler, "_http._tcp.example.example.svc.cluster.local.", "SRV").answer[0][0].port == 80
    for ns in ("default", "example"):
        assert ask(handler, f"{ns}.svc.cluster.local.", "A").rcode() == dns.rcode.NOERROR


# ---------------------------------------------------------------------- the warning
def test_refusal_is_logged_once_per_namespace(
    manifests: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clusterdns")
    store, _ = serve(manifests, refuse=True)
    for obj in later_objects(tmp_path):  # another Service in com, a first one in io
        store.upsert(obj)
    opts = ServeConfig(manifests=[str(manifests)], listen=["127.0.0.1:0"], refuse_tld_namespaces=True)
    build_zone(opts, store).close()  # a reload compiles everything again
    warnings = tld_warnings(caplog)
    assert [w for w in warnings if "namespace com " in w] == [
        f"namespace com is a top-level domain: names under com.svc.cluster.local answer NXDOMAIN "
        f"({OPTION}, CVE-2022-2837)"
    ]
    assert len([w for w in warnings if "namespace io " in w]) == 1
    assert len(warnings) == 2


def test_nothing_is_logged_without_the_option(manifests: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="clusterdns")
    serve(manifests, refuse=False)
    assert tld_warnings(caplog) == []


# ---------------------------------------------------------------------- a pod's view
class WorldUpstream:
    """A loopback upstream that is the world: example.com is UPSTREAM_IP, all else NXDOMAIN."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.asked: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            question = q.question[0]
            self.asked.append(question.name.to_text())
            if question.name == dns.name.from_text("example.com.") and question.rdtype == dns.rdatatype.A:
                r.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", UPSTREAM_IP))
            elif question.name != dns.name.from_text("example.com."):
                r.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(r.to_wire(), addr)

    def __enter__(self) -> WorldUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def world() -> Iterator[WorldUpstream]:
    with WorldUpstream() as upstream:
        yield upstream


def pod_resolve(server: ServerProcess, name: str) -> str:
    """Resolve as a pod in namespace default does (resolv.conf of a ClusterFirst pod)."""
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = server.port
    r.search = [dns.name.from_text(s) for s in ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")]
    r.ndots = 5
    r.use_search_by_default = True
    r.lifetime = 5
    answer = r.resolve(name, "A")
    return answer[0].address


@pytest.mark.parametrize("refuse,expected", [(True, UPSTREAM_IP), (False, CAPTURED_IP)], ids=["on", "off"])
def test_pod_resolving_a_tld_name_gets_the_world_only_with_the_option(
    manifests: Path, world: WorldUpstream, refuse: bool, expected: str
) -> None:
    args = [
        "serve",
        "--manifests",
        str(manifests),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        f"127.0.0.1:{world.port}",
        "--no-loop-detect",
    ]
    with ServerProcess(*args, *([OPTION] if refuse else [])) as srv:
        assert pod_resolve(srv, "example.com") == expected
        assert pod_resolve(srv, "example.example") == "10.96.8.8"  # not a TLD: still the Service
        warned = [line for line in srv.lines if OPTION in line and "namespace com " in line]
    assert len(warned) == (1 if refuse else 0)
    assert ("example.com." in world.asked) == refuse  # without the option the world is never asked
