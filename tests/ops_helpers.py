"""Helpers for the tests against a running `clusterdns`: ports from its log lines, HTTP
on loopback, a threaded fake upstream, bounded polling."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
from dnslib import QTYPE, RR, DNSRecord

from helpers import ServerProcess

METRICS_LINE = re.compile(r"metrics on \S+:(\d+)/metrics")
HEALTH_LINE = re.compile(r"health on \S+:(\d+)/health, readiness on \S+:(\d+)/ready")
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")


def eventually(check: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Poll `check` until truthy, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.02)


def port_from(server: ServerProcess, pattern: re.Pattern[str], group: int = 1) -> int:
    def find() -> int | None:
        for line in list(server.lines):
            m = pattern.search(line)
            if m:
                return int(m.group(group))
        return None
    return eventually(find, 5.0, f"a log line like {pattern.pattern!r}")


def http_get(port: int, path: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics as {(sample name, labels): value}."""
    status, body = http_get(port, "/metrics")
    assert status == 200, body
    out = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group("labels") or ""))
        out[(m.group("name"), labels)] = float(m.group("value"))
    return out


def total(samples: dict, metric: str, /, **labels: str) -> float:
    """Sum of the samples called `metric` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and want <= ls)


def query(port: int, name: str, rdtype: str = "A", tcp: bool = False, timeout: float = 2.0,
          **make: Any) -> dns.message.Message:
    q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), **make)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)


class ThreadedUpstream:
    """A UDP+TCP DNS server on 127.0.0.1 in a thread: every name under example.test has
    A 192.0.2.1 (TTL 300); others are NXDOMAIN. `delay` holds each answer back."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(16)
        self.udp.settimeout(0.2)
        self.tcp.settimeout(0.2)
        self.seen = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]

    def answer(self, data: bytes) -> bytes:
        self.seen += 1
        req = DNSRecord.parse(data)
        reply = req.reply()
        name = str(req.q.qname).lower()
        if name.endswith("example.test."):
            if req.q.qtype == QTYPE.A:
                reply.add_answer(*RR.fromZone(f"{name} 300 IN A 192.0.2.1"))
        else:
            reply.header.rcode = 3
            reply.add_auth(*RR.fromZone(". 300 IN SOA a. b. 1 2 3 4 300"))
        if self.delay:
            time.sleep(self.delay)
        return reply.pack()

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.udp.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=lambda d=data, a=addr: self.udp.sendto(self.answer(d), a), daemon=True).start()

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            try:
                while True:
                    head = conn.recv(2)
                    if len(head) < 2:
                        return
                    size = int.from_bytes(head, "big")
                    data = b""
                    while len(data) < size:
                        chunk = conn.recv(size - len(data))
                        if not chunk:
                            return
                        data += chunk
                    out = self.answer(data)
                    conn.sendall(len(out).to_bytes(2, "big") + out)
            except OSError:
                return

    def __enter__(self) -> ThreadedUpstream:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()
