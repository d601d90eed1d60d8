"""Zone transfer against a running server: `dig AXFR` from a client in transfer_to,
REFUSED for one not listed and over UDP, the counter, a reload that changes the list, and
a real secondary (knotd) that loads the transferred zone and answers from it.

The server listens on 127.0.0.1 only; the client not listed is 127.0.0.2 (`dig -b`),
which the test namespace's loopback holds too. `make test` installs dig and knotd.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from clusterdns.cluster.compile import ZoneSettings
from clusterdns.cluster.zone import ClusterZone
from clusterdns.kube.objects import Endpoint, EndpointSlice, Port, Service
from clusterdns.kube.store import ClusterStore
from clusterdns.server.handler import Handler
from clusterdns.server.tcp import TCPLimits, TCPProtocol, Transfers
from helpers import DEMO, TEST_CLUSTER, ServerProcess
from ops_helpers import METRICS_LINE, eventually, port_from, scrape, total

SOURCES = ("--manifests", str(DEMO), "--manifests", str(TEST_CLUSTER), "--listen", "127.0.0.1:0")


@pytest.fixture(scope="module")
def primary() -> Iterator[ServerProcess]:
    with ServerProcess("serve", *SOURCES, "--transfer-to", "127.0.0.1,10.0.0.0/8", "--metrics", "127.0.0.1:0") as srv:
        yield srv


def dig(server: ServerProcess, *args: str, source: str | None = None) -> str:
    exe = shutil.which("dig")
    assert exe, "dig is missing: `make test` installs bind9-dnsutils with apt-get"
    bind = ["-b", source] if source else []
    out = subprocess.run(
        [exe, "@127.0.0.1", "-p", str(server.port), *bind, "+time=3", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout


def zone_lines(text: str) -> list[str]:
    """dig's records, whitespace normalised, comments dropped."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.startswith(";")]


def axfr_rcode(server: ServerProcess, source: str = "127.0.0.1", tcp: bool = True) -> int:
    q = dns.message.make_query("cluster.local.", "AXFR")
    if tcp:
        r = dns.query.tcp(q, "127.0.0.1", port=server.port, timeout=3, source=source)
    else:
        r = dns.query.udp(q, "127.0.0.1", port=server.port, timeout=3, source=source)
    return r.rcode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dig_axfr_from_a_listed_client_gets_the_whole_zone(primary: ServerProcess) -> None:
    out = dig(primary, "AXFR", "cluster.local")
    assert "Transfer failed" not in out, out
    lines = zone_lines(out)
    assert lines[0].startswith("cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local.")
    assert lines[-1] == lines[0], "the SOA first and last"
    assert "cluster.local. 5 IN NS ns.dns.cluster.local." in lines
    assert "httpd-svc.default.svc.cluster.local. 5 IN A 10.99.229.179" in lines
    assert (
        "_https._tcp.my-nginx.default.svc.cluster.local. 5 IN SRV 0 100 443 my-nginx.default.svc.cluster.local."
        in lines
    )
    assert not any(".pod.cluster.local." in line for line in lines)
    reverse = zone_lines(dig(primary, "AXFR", "in-addr.arpa"))
    assert "179.229.99.10.in-addr.arpa. 5 IN PTR httpd-svc.default.svc.cluster.local." in reverse
    assert reverse[0] == reverse[-1] and " SOA " in reverse[0]


def test_ixfr_gets_the_whole_zone(primary: ServerProcess) -> None:
    lines = zone_lines(dig(primary, "IXFR=1", "cluster.local"))
    assert lines[0] == lines[-1] and " SOA " in lines[0]
    assert "httpd-svc.default.svc.cluster.local. 5 IN A 10.99.229.179" in lines


def test_a_client_not_listed_is_refused(primary: ServerProcess) -> None:
    assert "Transfer failed" in dig(primary, "AXFR", "cluster.local", source="127.0.0.2")
    assert axfr_rcode(primary, source="127.0.0.2") == dns.rcode.REFUSED


def test_axfr_over_udp_is_refused_even_for_a_listed_client(primary: ServerProcess) -> None:
    assert axfr_rcode(primary, tcp=False) == dns.rcode.REFUSED


def test_a_name_below_the_apex_is_not_a_zone_we_transfer(primary: ServerProcess) -> None:
    q = dns.message.make_query("default.svc.cluster.local.", "AXFR")
    r = dns.query.tcp(q, "127.0.0.1", port=primary.port, timeout=3)
    assert r.rcode() == dns.rcode.NOTAUTH


def test_transfers_are_counted_by_result(primary: ServerProcess) -> None:
    port = port_from(primary, METRICS_LINE)
    before = scrape(port)
    assert axfr_rcode(primary) == dns.rcode.NOERROR
    assert axfr_rcode(primary, source="127.0.0.2") == dns.rcode.REFUSED
    after = scrape(port)
    for result in ("success", "refused"):
        metric = "clusterdns_zone_transfers_total"
        assert total(after, metric, result=result) == total(before, metric, result=result) + 1, result
    assert ("clusterdns_zone_transfers_total", frozenset({("result", "busy")})) in after


def test_a_reload_applies_a_new_transfer_to(tmp_path: Path) -> None:
    config = tmp_path / "clusterdns.yaml"
    config.write_text("transfer_to: [127.0.0.2]\n")
    with ServerProcess("serve", "--config", str(config), *SOURCES) as srv:
        assert axfr_rcode(srv) == dns.rcode.REFUSED
        assert axfr_rcode(srv, source="127.0.0.2") == dns.rcode.NOERROR
        config.write_text("transfer_to: [127.0.0.1]\n")
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGHUP)
        eventually(lambda: "config reloaded" in srv.output(), 5.0, "the reload")
        assert axfr_rcode(srv) == dns.rcode.NOERROR
        assert axfr_rcode(srv, source="127.0.0.2") == dns.rcode.REFUSED


KNOT_CONF = """\
server:
    rundir: "{d}"
    pidfile: "{d}/knot.pid"
    listen: 127.0.0.1@{port}
database:
    storage: "{d}/db"
control:
    listen: "{d}/knot.sock"
log:
  - target: stderr
    any: info
remote:
  - id: clusterdns
    address: 127.0.0.1@{primary}
template:
  - id: default
    storage: "{d}/zones"
    semantic-checks: on
    zonefile-sync: 0
zone:
  - domain: cluster.local
    master: clusterdns
"""


def test_knotd_as_secondary_loads_the_zone_and_answers_from_it(primary: ServerProcess, tmp_path: Path) -> None:
    knotd, knotc = shutil.which("knotd") or "/usr/sbin/knotd", shutil.which("knotc") or "/usr/sbin/knotc"
    assert Path(knotd).exists(), "knotd is missing: `make test` installs knot with apt-get"
    (tmp_path / "db").mkdir()
    (tmp_path / "zones").mkdir()
    port = free_port()
    conf = tmp_path / "knot.conf"
    conf.write_text(KNOT_CONF.format(d=tmp_path, port=port, primary=primary.port))
    log = (tmp_path / "knotd.log").open("w")
    proc = subprocess.Popen([knotd, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:

        def status() -> str | None:
            out = subprocess.run(
                [knotc, "-c", str(conf), "zone-status", "cluster.local"], capture_output=True, text=True, timeout=10
            ).stdout
            return out if re.search(r"serial: \d+", out) else None

        out = eventually(status, 15.0, "knotd to load the transferred zone")
        serial = re.search(r"serial: (\d+)", out)
        assert serial is not None
        soa = dns.query.tcp(
            dns.message.make_query("cluster.local.", "SOA"), "127.0.0.1", port=primary.port, timeout=3
        ).answer[0][0]
        assert int(serial.group(1)) == soa.serial, "knotd holds the serial clusterdns serves"
        check = subprocess.run(
            [knotc, "-c", str(conf), "zone-check", "cluster.local"], capture_output=True, text=True, timeout=20
        )
        assert check.returncode == 0 and "error" not in (check.stdout + check.stderr).lower(), check
        r = dns.query.udp(
            dns.message.make_query("httpd-svc.default.svc.cluster.local.", "A"), "127.0.0.1", port=port, timeout=3
        )
        assert r.flags & dns.flags.AA, "knotd answers as the authority for its copy"
        assert [rr.to_text() for rr in r.answer[0]] == ["10.99.229.179"]
        srv = dns.query.udp(
            dns.message.make_query("_https._tcp.my-nginx.default.svc.cluster.local.", "SRV"),
            "127.0.0.1",
            port=port,
            timeout=3,
        )
        assert [rr.to_text() for rr in srv.answer[0]] == ["0 100 443 my-nginx.default.svc.cluster.local."]
        log_text = (tmp_path / "knotd.log").read_text()
        assert "AXFR, incoming" in log_text and "finished" in log_text, log_text
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


# ----------------------------------------------------------------------- the TCP side, in-process


def services(n: int) -> ClusterStore:
    """`n` ClusterIP Services in 100 namespaces, each with a named port and one endpoint."""
    store = ClusterStore()
    objs: list[Service | EndpointSlice] = []
    port = (Port("http", "tcp", 80),)
    for i in range(n):
        ns, name = f"ns{i % 100}", f"svc-{i}"
        objs.append(Service(ns, name, "ClusterIP", (f"10.96.{i // 256}.{i % 256}",), False, None, port, False))
        ep = Endpoint((f"10.200.{i // 256}.{i % 256}",), True, None, None)
        objs.append(EndpointSlice(ns, f"{name}-x", name, "IPv4", (ep,), port))
    store.load(objs)
    return store


async def tcp_server(transfers_to: list[str], max_transfers: int, n: int) -> tuple[asyncio.Server, TCPLimits]:
    """A TCP listener in the test's loop serving a zone of `n` Services, with its Transfers."""
    handler = Handler(ClusterZone(services(n), ZoneSettings()))
    limits = TCPLimits(transfers=Transfers(lambda: (transfers_to, max_transfers)))
    server = await asyncio.get_running_loop().create_server(lambda: SmallBuffers(handler, limits), "127.0.0.1", 0)
    return server, limits


class SmallBuffers(TCPProtocol):
    """Small kernel and asyncio send buffers, so a client that does not read stops the
    transfer within a message or two (loopback would otherwise absorb megabytes)."""

    pauses = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        transport.set_write_buffer_limits(high=16384)  # type: ignore[attr-defined]
        super().connection_made(transport)

    def pause_writing(self) -> None:
        SmallBuffers.pauses += 1
        super().pause_writing()


async def connect(port: int, **kw: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client with a small receive buffer: what it does not read stays on the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, **kw)


async def read_transfer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, qname: str = "cluster.local."
) -> list[dns.message.Message]:
    """Send one AXFR and read messages until the closing SOA (or one error answer)."""
    q = dns.message.make_query(qname, "AXFR")
    wire = q.to_wire()
    writer.write(len(wire).to_bytes(2, "big") + wire)
    out: list[dns.message.Message] = []
    soas = 0
    while soas < 2:
        size = int.from_bytes(await reader.readexactly(2), "big")
        m = dns.message.from_wire(await reader.readexactly(size), one_rr_per_rrset=True)
        out.append(m)
        if m.rcode() != dns.rcode.NOERROR:
            return out
        soas += sum(rr.rdtype == dns.rdatatype.SOA for rr in m.answer)
    return out


async def test_a_10000_service_transfer_streams_to_a_slow_reader_then_the_connection_answers_on() -> None:
    server, limits = await tcp_server(["127.0.0.1"], 2, 10_000)
    port = server.sockets[0].getsockname()[1]
    SmallBuffers.pauses = 0
    reader, writer = await connect(port, limit=2**17)
    try:
        q = dns.message.make_query("cluster.local.", "AXFR")
        wire = q.to_wire()
        after = dns.message.make_query("svc-7.ns7.svc.cluster.local.", "A")
        after_wire = after.to_wire()
        # the transfer, then a pipelined query, written at once; read slowly so the server's
        # write buffer fills and it must wait for the client
        writer.write(len(wire).to_bytes(2, "big") + wire + len(after_wire).to_bytes(2, "big") + after_wire)
        await asyncio.sleep(0.3)
        sizes, records, soas = [], 0, 0
        while soas < 2:
            size = int.from_bytes(await reader.readexactly(2), "big")
            m = dns.message.from_wire(await reader.readexactly(size), one_rr_per_rrset=True)
            assert m.id == q.id and m.rcode() == dns.rcode.NOERROR
            sizes.append(size)
            records += len(m.answer)
            soas += sum(rr.rdtype == dns.rdatatype.SOA for rr in m.answer)
            await asyncio.sleep(0.005)
        assert len(sizes) > 20 and max(sizes) <= 65535 and records == 4 * 10_000 + 4
        assert SmallBuffers.pauses > 0, "the server had to wait for the client"
        size = int.from_bytes(await reader.readexactly(2), "big")
        reply = dns.message.from_wire(await reader.readexactly(size))
        assert reply.id == after.id and [rr.to_text() for rr in reply.answer[0]] == ["10.96.0.7"]
        assert limits.transfers is not None
        assert limits.transfers.results == {"success": 1} and limits.transfers.active == 0
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_transfers_over_the_cap_are_refused_and_a_dropped_one_frees_its_slot() -> None:
    server, limits = await tcp_server(["*"], 1, 2_000)
    transfers = limits.transfers
    assert transfers is not None
    port = server.sockets[0].getsockname()[1]
    try:
        # the first client asks and reads nothing: its transfer holds the one slot
        _, w1 = await connect(port)
        wire = dns.message.make_query("cluster.local.", "AXFR").to_wire()
        w1.write(len(wire).to_bytes(2, "big") + wire)
        await asyncio.sleep(0.2)
        assert transfers.active == 1
        r2, w2 = await connect(port)
        busy = await read_transfer(r2, w2)
        assert [m.rcode() for m in busy] == [dns.rcode.REFUSED]
        assert transfers.results.get("busy") == 1
        w1.transport.abort()  # gone mid-transfer
        await asyncio.sleep(0.2)
        assert transfers.active == 0 and transfers.results.get("aborted") == 1
        whole = await read_transfer(r2, w2)
        assert whole[-1].answer[-1].rdtype == dns.rdatatype.SOA and transfers.results.get("success") == 1
        w2.close()
    finally:
        server.close()
        await server.wait_closed()


def test_the_external_zone_transfers_with_the_same_transfer_to() -> None:
    """`--external-zone` names go out by AXFR too: outside addresses only, SOA first and last,
    no ClusterIP; a client not listed is refused there as well."""
    with ServerProcess("serve", *SOURCES, "--external-zone", "example.com", "--transfer-to", "127.0.0.1") as srv:
        out = dig(srv, "AXFR", "example.com")
        lines = zone_lines(out)
        assert lines and "Transfer failed" not in out, out
        assert lines[0].split()[3] == "SOA" and lines[-1] == lines[0]
        assert "web-lb.default.example.com. 5 IN A 203.0.113.10" in lines
        assert "metrics-ext.kube-public.example.com. 5 IN A 198.51.100.20" in lines
        assert not any(" 10.96." in line for line in lines), "a ClusterIP in the external zone"
        q = dns.message.make_query("example.com.", "AXFR")
        refused = dns.query.tcp(q, "127.0.0.1", port=srv.port, timeout=3, source="127.0.0.2")
        assert refused.rcode() == dns.rcode.REFUSED
