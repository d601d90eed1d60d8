"""Real upstream DNS servers on loopback for the forwarding tests.

* `FakeUpstream`: a tiny asyncio authoritative server (UDP+TCP on one 127.0.0.1 port)
  for what dnsmasq cannot show: delays, TC over UDP, spoofed replies, silence, and a
  count of the queries it saw (single flight, prefetch, TCP pooling).
* `Dnsmasq`: a dnsmasq process serving only local records (`--no-resolv --no-hosts`),
  so it never reaches out; stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest
from dnslib import QTYPE, RCODE, RR, DNSRecord

from clusterdns.wire.question import Query, parse

SOA_LINE = "example.test. 120 IN SOA ns.example.test. host.example.test. 1 7200 1800 86400 60"
ATTACK_IP = "6.6.6.6"  # what every spoofed reply claims; a test must never see it


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP right now (the server binds it next)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


@dataclass
class FakeUpstream:
    """Authoritative for `example.test` from zone-file lines; scriptable misbehaviour."""

    records: list[str] = field(default_factory=list)
    delay: float = 0.0  # seconds before each answer
    udp_tc: bool = False  # answer UDP with an empty TC reply (the full one over TCP)
    udp_silent: bool = False  # never answer over UDP (TCP still works)
    spoof: tuple[str, ...] = ()  # before each real UDP answer: "id", "question", "port"
    soa: bool = True  # negative answers carry the zone's SOA
    host: str = "127.0.0.1"
    port: int = 0
    queries: list[tuple[str, int, str]] = field(default_factory=list)  # (qname, qtype, proto)

    def __post_init__(self) -> None:
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- answers -----------------------------------------------------------------------
    def answer(self, req: DNSRecord) -> DNSRecord:
        q = req.q
        name = str(q.qname).lower()
        reply = req.reply()  # QR, AA, RD copied, question as sent
        reply.header.ra = 0
        if not (name == "example.test." or name.endswith(".example.test.")):
            reply.header.rcode = RCODE.REFUSED
            return reply
        rrs = [rr for line in self.records for rr in RR.fromZone(line)]
        here = [rr for rr in rrs if str(rr.rname).lower() == name]
        match = [rr for rr in here if rr.rtype == q.qtype or rr.rtype == QTYPE.CNAME]
        if name == "example.test." and q.qtype == QTYPE.NS:
            match = RR.fromZone("example.test. 3600 IN NS ns.example.test.")
        for rr in match:
            reply.add_answer(rr)
        if not match:
            if not here and name != "example.test.":
                reply.header.rcode = RCODE.NXDOMAIN
            if self.soa:
                reply.add_auth(*RR.fromZone(SOA_LINE))
        return reply

    def _wire(self, data: bytes, proto: str) -> bytes | None:
        try:
            req = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - whatever dnslib cannot parse goes unanswered
            return None
        self.queries.append((str(req.q.qname), req.q.qtype, proto))
        reply = self.answer(req)
        if proto == "udp" and self.udp_tc:
            empty = req.reply()
            empty.header.tc = 1
            return empty.pack()
        return reply.pack()

    def count(self, name: str | None = None, proto: str | None = None) -> int:
        """How many queries (for `name`, case-insensitive, and/or `proto`) arrived."""
        return sum(1 for n, _t, p in self.queries
                   if (name is None or n.lower().rstrip(".") == name.lower().rstrip("."))
                   and (proto is None or p == proto))

    # -- transports --------------------------------------------------------------------
    async def start(self) -> FakeUpstream:
        loop = asyncio.get_running_loop()
        for _ in range(50):
            port = self.port or free_port(self.host)
            try:
                self._udp, _ = await loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=(self.host, port))
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError:
                if self._udp is not None:
                    self._udp.close()
                    self._udp = None
                await asyncio.sleep(0.05)  # a fixed port may still be closing: retry
                continue
            self.port = port
            return self
        raise RuntimeError("could not bind a fake upstream")

    def udp_received(self, data: bytes, addr: tuple) -> None:
        task = asyncio.get_running_loop().create_task(self._reply_udp(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply_udp(self, data: bytes, addr: tuple) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        wire = self._wire(data, "udp")
        if wire is None or self.udp_silent or self._udp is None:
            return
        for kind in self.spoof:
            self._send_spoof(kind, data, addr)
        if self.spoof:
            await asyncio.sleep(0.05)
        if self._udp is not None:
            self._udp.sendto(wire, addr)

    def _send_spoof(self, kind: str, data: bytes, addr: tuple) -> None:
        """A forged answer claiming ATTACK_IP: wrong ID, changed question case, or other port."""
        req = DNSRecord.parse(data)
        fake = req.reply()
        fake.add_answer(*RR.fromZone(f"{req.q.qname} 300 IN A {ATTACK_IP}"))
        wire = bytearray(fake.pack())
        if kind == "id":
            wire[0] ^= 0x5A
        elif kind == "question":
            wire[13] = ord(chr(wire[13]).swapcase())  # first letter of the name, other case
        if kind == "port":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((self.host, 0))
                s.sendto(bytes(wire), addr)
        else:
            assert self._udp is not None
            self._udp.sendto(bytes(wire), addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(size)
                if self.delay:
                    await asyncio.sleep(self.delay)
                wire = self._wire(data, "tcp")
                if wire is not None:
                    writer.write(len(wire).to_bytes(2, "big") + wire)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        """Close both sockets (the port stays ours to restart on: `start()` again)."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None
        for t in list(self._tasks):
            t.cancel()
        await asyncio.sleep(0)  # let the transports finish closing before a restart


class LoopbackUdp(asyncio.DatagramProtocol):
    """A UDP server on 127.0.0.1 in the test's own event loop: `await start()` gives its
    port; subclasses answer in `datagram_received` through `self.transport`."""

    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: FakeUpstream) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.server.udp_received(data, addr)


def dnsmasq_binary() -> str:
    path = shutil.which("dnsmasq") or (
        "/usr/sbin/dnsmasq" if shutil.which("/usr/sbin/dnsmasq") else None)
    if path is None:
        pytest.fail("dnsmasq is not installed: apt-get install -y dnsmasq-base")
    return path


class Dnsmasq:
    """dnsmasq on 127.0.0.1:<free port> (or `host`/`port`) with only the given records."""

    def __init__(self, *options: str, port: int = 0, host: str = "127.0.0.1") -> None:
        self.options = options
        self.port = port
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, probe: str = "ready.example.test") -> Dnsmasq:
        self.port = self.port or free_port(self.host)
        self.proc = subprocess.Popen(
            [dnsmasq_binary(), "-k", "--no-resolv", "--no-hosts", "--pid-file=",
             f"-p{self.port}", f"--listen-address={self.host}", "--bind-interfaces",
             f"--host-record={probe},192.0.2.254", *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"dnsmasq exited: {err}")
            try:
                dns.query.udp(dns.message.make_query(probe, "A"), self.host, port=self.port,
                              timeout=0.2)
                return self
            except (dns.exception.Timeout, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("dnsmasq did not answer within 5 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> Dnsmasq:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ask(port: int, name: str, rdtype: str = "A", *, tcp: bool = False, host: str = "127.0.0.1",
        timeout: float = 3.0, **make: object) -> dns.message.Message:
    """One query with dnspython (the independent client), blocking."""
    q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), **make)  # type: ignore[arg-type]
    if tcp:
        return dns.query.tcp(q, host, port=port, timeout=timeout)
    return dns.query.udp(q, host, port=port, timeout=timeout)


class Clock:
    """A monotonic clock the test moves by hand (cachetools-style injectable timer)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def question(name: str, rdtype: str = "A", **make: object) -> tuple[Query, dns.message.Message]:
    """A client query as our minimal parser sees it, plus the dnspython message."""
    msg = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), **make)  # type: ignore[arg-type]
    return parse(msg.to_wire()), msg


def decode(wire: bytes) -> dns.message.Message:
    return dns.message.from_wire(wire)


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset
                  if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA))


def ttls(msg: dns.message.Message) -> set[int]:
    return {rrset.ttl for rrset in msg.answer + msg.authority}
