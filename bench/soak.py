#!/usr/bin/env python3
"""A soak: the checked mix, a flood, API restarts and an upstream that stops, all at once.

    python bench/soak.py [--seconds 60] [--services 3000] [--server-cpu 0] [--load-cpu 1] [--json OUT.json]

Why: `clusterdns serve` must never lose an answer for a real name, whatever its API, its
upstream or its other clients do. This script holds a cluster in the test API server of
tests/kubeapi.py (real list/watch, in this process), starts a real
`clusterdns serve --kubeconfig` pinned to the server CPU, and for `--seconds`:

- sends a paced mix (`--qps`, default 2,000) from this process (pinned to the load CPU): A
  and AAAA of existing Services, SRV of their named port, A of headless Services (every
  endpoint), A of a few Services whose clusterIP keeps changing, NXDOMAIN junk under
  existing namespaces, and names outside the zone answered by a loopback upstream. Every
  answer is checked (rcode, question, addresses); timeouts (`--timeout`) and SERVFAIL for
  in-zone names count as lost;
- changes a Service's clusterIP every `--change-interval` s while the API is up, and probes
  until the server shows it; an answer is right only while its address was current (the old
  address is wrong for a query sent after the probe saw the new one);
- stops the API 3 times (`--api-down` s each) and starts it again on the same port; at the
  second, a Service changes while it is down and history is compacted, so the watch resumes
  into a 410 Gone (an ERROR event, as the watch cache sends) and re-lists;
- stops the upstream (a small UDP+TCP DNS server in this process) for `--upstream-down` s and
  starts it again on the same port; out-of-zone SERVFAIL while it is down are expected and
  reported apart;
- floods never-repeated names under existing namespaces with dnsperf (`--flood-qps` for a
  quarter of the run, on the load CPU; skipped with a note when dnsperf is missing).

Reports (markdown on stdout, `--json`): real-name queries sent / answered / lost / wrong,
SERVFAIL in and out of the zone, the flood's answered rate, serve's peak RSS (VmHWM), the
re-lists, and the verdict line "lost real-name answers: 0 — met" (or "not met"). Exits 0
when the soak ran (whatever the verdict), 2 when it could not (serve did not come up).

Loopback only: run it in a private network namespace,
`unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/soak.py'`. Every loop is
bounded in count and time; serve and dnsperf are stopped by PID at the end, on errors and
on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSError, DNSRecord

from kubeapi import KubeAPIServer, endpoint_slice, namespace, service, write_kubeconfig

DOMAIN = "cluster.local"
OUT_ZONE = "example.org"
CHURN_SERVICES = 16  # Services whose clusterIP keeps changing (one more for the 410 restart)
NOERROR, NXDOMAIN, SERVFAIL = 0, 3, 2
BAD_WIRE = (DNSError, ValueError, IndexError, struct.error, UnicodeDecodeError)  # what dnslib's parser raises


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- expectations
@dataclass(frozen=True)
class Question:
    """One name of the mix and what a right answer is."""

    kind: str  # real | junk | churn | outzone
    name: str  # absolute, lowercase, with the trailing dot
    qtype: int
    rcode: int
    answers: frozenset = frozenset()  # A/AAAA addresses or (port, target) for SRV
    wire: bytes = b""  # the query, ID 0

    @property
    def question(self) -> bytes:
        return self.wire[12:]


def make_query(name: str, qtype: int) -> bytes:
    q = DNSRecord.question(name, QTYPE[qtype])
    q.header.id = 0
    q.header.rd = 1
    return q.pack()


def question(kind: str, name: str, qtype: int, rcode: int, answers: frozenset = frozenset()) -> Question:
    return Question(kind, name, qtype, rcode, answers, make_query(name, qtype))


def upstream_ip(name: str) -> str:
    """The address the loopback upstream gives a name under example.org (stable per name)."""
    h = sum(name.encode()) * 2654435761 & 0xFFFF
    return f"198.51.{h >> 8 & 127}.{h & 255}"


def v4(i: int, first: int) -> str:
    return f"10.{first + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


@dataclass
class Cluster:
    namespaces: list[str]
    real: list[Question]
    junk: list[Question]
    churn: list[tuple[str, str]]  # (namespace, service) changed while the API is up
    gone: tuple[str, str]  # changed while the API is down (the 410 restart)
    ips: dict[str, str]  # churn name -> its first clusterIP
    endpoints: int = 0


def populate(api: KubeAPIServer, services: int, rnd: random.Random) -> Cluster:
    """N Services and their EndpointSlices: a tenth headless (3 endpoints), a fifth dual-stack."""
    nns = max(1, services // 20)
    namespaces = [f"ns-{n}" for n in range(nns)]
    for ns in namespaces:
        api.apply(namespace(ns))
    real: list[Question] = []
    endpoints = 0
    for i in range(services):
        ns, name = namespaces[i % nns], f"svc-{i}"
        fq = f"{name}.{ns}.svc.{DOMAIN}."
        if i % 10 == 0:
            addrs = [v4(i * 3 + k, 128) for k in range(3)]
            api.apply(service(ns, name, "None"))
            api.apply(endpoint_slice(ns, f"{name}-abcde", name, addrs))
            real.append(question("real", fq, QTYPE.A, NOERROR, frozenset(addrs)))
            endpoints += 3
            continue
        ip = v4(i, 96)
        if i % 5 == 1:
            ip6 = f"fd00:10:96::{i:x}"
            api.apply(service(ns, name, ip, clusterIPs=[ip, ip6], ipFamilies=["IPv4", "IPv6"]))
            real.append(question("real", fq, QTYPE.AAAA, NOERROR, frozenset([ip6])))
        else:
            api.apply(service(ns, name, ip))
        api.apply(endpoint_slice(ns, f"{name}-abcde", name, [v4(i * 3, 128)]))
        endpoints += 1
        real.append(question("real", fq, QTYPE.A, NOERROR, frozenset([ip])))
        if i % 4 == 3:
            real.append(question("real", f"_http._tcp.{fq}", QTYPE.SRV, NOERROR, frozenset([(80, fq)])))
    churn, ips = [], {}
    for k in range(CHURN_SERVICES + 1):
        ns, name = namespaces[k % nns], f"churn-{k}"
        ip = v4(k, 240)
        api.apply(service(ns, name, ip))
        api.apply(endpoint_slice(ns, f"{name}-abcde", name, [v4(k, 241)]))
        churn.append((ns, name))
        ips[f"{name}.{ns}.svc.{DOMAIN}."] = ip
    junk = []
    for k in range(2000):
        ns = namespaces[rnd.randrange(nns)]
        svc = f"svc-{rnd.randrange(services)}"
        form = k % 3
        if form == 0:
            junk.append(f"nope-{k}.{ns}.svc.{DOMAIN}.")
        elif form == 1:  # a search-path suffix appended to a full name
            junk.append(f"{svc}.{ns}.svc.{DOMAIN}.{ns}.svc.{DOMAIN}.")
        else:
            junk.append(f"x{k}.{svc}.{ns}.svc.{DOMAIN}.")
    return Cluster(namespaces, real, [question("junk", n, QTYPE.A, NXDOMAIN) for n in junk],
                   churn[:-1], churn[-1], ips, endpoints)


# --------------------------------------------------------------------------- parsing
class Parsed:
    """rcode and answer set of a reply; memoised by the reply without its ID (replies repeat)."""

    def __init__(self) -> None:
        self.memo: dict[bytes, tuple[int, frozenset]] = {}

    def __call__(self, data: bytes) -> tuple[int, frozenset]:
        key = data[2:]
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        rcode = data[3] & 0xF
        try:
            rec = DNSRecord.parse(data)
            out = []
            for rr in rec.rr:
                if rr.rtype in (QTYPE.A, QTYPE.AAAA):
                    out.append(str(rr.rdata))
                elif rr.rtype == QTYPE.SRV:
                    out.append((rr.rdata.port, str(rr.rdata.target).lower()))
            got = (rcode, frozenset(out))
        except BAD_WIRE:  # a reply dnslib cannot read is a wrong answer
            got = (-1, frozenset())
        if len(self.memo) > 50_000:
            self.memo.clear()
        self.memo[key] = got
        return got


# --------------------------------------------------------------------------- the upstream
class Upstream:
    """A loopback DNS server for example.org (UDP and TCP), stoppable and restartable on its port.

    Every A name under example.org gets upstream_ip(name) with TTL 2 (so the forwarder's cache
    does not hide the outage for long); anything else NXDOMAIN."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.queries = 0
        self.up = False
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def answer(self, data: bytes) -> bytes | None:
        self.queries += 1
        try:
            q = DNSRecord.parse(data)
        except BAD_WIRE:
            return None
        r = q.reply()
        name = str(q.q.qname).lower()
        if name.endswith(f".{OUT_ZONE}.") and q.q.qtype == QTYPE.A:
            r.add_answer(RR(q.q.qname, QTYPE.A, ttl=2, rdata=A(upstream_ip(name))))
        elif name.endswith(f".{OUT_ZONE}.") and q.q.qtype == QTYPE.AAAA:
            r.add_answer(RR(q.q.qname, QTYPE.AAAA, ttl=2, rdata=AAAA("2001:db8::1")))
        else:
            r.header.rcode = RCODE.NXDOMAIN
        return r.pack()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        outer = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr: tuple) -> None:
                reply = outer.answer(data)
                if reply is not None:
                    self.t.sendto(reply, addr)  # type: ignore[attr-defined]

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                for _ in range(1000):  # bounded per connection
                    n = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))[0]
                    reply = outer.answer(await asyncio.wait_for(reader.readexactly(n), 10))
                    if reply is None:
                        break
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                pass
            finally:
                writer.close()

        self._udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", self.port))
        self._tcp = await asyncio.start_server(tcp, "127.0.0.1", self.port, reuse_address=True)
        self.up = True

    async def stop(self) -> None:
        self.up = False
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None


# --------------------------------------------------------------------------- the checked mix
SO_TIMESTAMPNS = 35  # Linux; the socket module does not export it


class TimedSocket:
    """A loopback UDP socket whose datagrams come with the kernel's arrival time (monotonic).

    Why: the load CPU is shared (dnsperf, other work); when this process is descheduled, a
    reply that arrived in time waits in the socket buffer and must not count as late. Every
    read drains the buffer (asyncio's datagram transport reads one datagram per wake-up)."""

    def __init__(self, on_datagram: Callable[[bytes, float], None]) -> None:
        self.on_datagram = on_datagram
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.offset = time.time() - time.monotonic()
        self.send_errors = 0
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self.drain)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def sendto(self, data: bytes, port: int) -> bool:
        try:
            self.sock.sendto(data, ("127.0.0.1", port))
        except (BlockingIOError, InterruptedError):
            self.send_errors += 1  # the query is then not answered: a timeout, as for a client
            return False
        return True

    def drain(self) -> None:
        for _ in range(1_000_000):  # bounded; ends at the first EAGAIN
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(4096, 64)
            except (BlockingIOError, InterruptedError):
                return
            rx = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    sec, nsec = struct.unpack("qq", payload[:16])
                    rx = sec + nsec / 1e9 - self.offset
            self.on_datagram(data, time.monotonic() if rx is None else rx)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0  # any reply
    right: int = 0
    wrong: int = 0
    servfail: int = 0
    timeouts: int = 0  # no answer within the timeout (`late` of them arrived after it)
    late: int = 0
    other_rcode: Counter = field(default_factory=Counter)

    @property
    def lost(self) -> int:
        return self.servfail + self.timeouts

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "answered": self.answered, "right": self.right, "wrong": self.wrong,
                "servfail": self.servfail, "timeouts": self.timeouts, "late": self.late, "lost": self.lost,
                "other_rcodes": dict(self.other_rcode)}


class Mix:
    """Paced, checked queries from one UDP socket; IDs index the queries in flight."""

    def __init__(self, port: int, qps: float, timeout: float, outzone_timeout: float, cluster: Cluster,
                 rnd: random.Random, phases: Phases) -> None:
        self.port, self.qps, self.timeout, self.outzone_timeout = port, qps, timeout, outzone_timeout
        self.rnd, self.phases = rnd, phases
        self.real, self.junk = cluster.real, cluster.junk
        self.churn = [question("churn", n, QTYPE.A, NOERROR) for n in cluster.ips if n.startswith("churn-")
                      and not n.startswith(f"{cluster.gone[1]}.")]
        self.gone = question("churn", f"{cluster.gone[1]}.{cluster.gone[0]}.svc.{DOMAIN}.", QTYPE.A, NOERROR)
        self.pool = [question("outzone", f"h{k}.{OUT_ZONE}.", QTYPE.A, NOERROR,
                              frozenset([upstream_ip(f"h{k}.{OUT_ZONE}.")])) for k in range(300)]
        self.fresh = 0
        self.tally = {k: Tally() for k in ("real", "junk", "churn", "outzone")}
        self.flight: dict[int, tuple[float, Question]] = {}
        self.next_id = 0
        self.parse = Parsed()
        self.churn_seen: list[tuple[str, float, float, frozenset]] = []  # name, sent, received, addresses
        self.events: list[dict[str, Any]] = []  # the first lost / wrong ones, for the report
        self.outzone_fail_times: list[tuple[float, str]] = []
        self.latencies: list[float] = []
        self.worst = (0.0, 0.0)  # slowest in-zone answer: (seconds, sent at)
        self.sock = TimedSocket(self.received)

    def pick(self) -> Question:
        r = self.rnd.random()
        if r < 0.70:
            return self.real[self.rnd.randrange(len(self.real))]
        if r < 0.80:
            return self.junk[self.rnd.randrange(len(self.junk))]
        if r < 0.85:
            return self.churn[self.rnd.randrange(len(self.churn))] if r < 0.845 else self.gone
        if r < 0.95:
            return self.pool[self.rnd.randrange(len(self.pool))]
        self.fresh += 1  # never asked before: the forwarder's cache cannot answer it
        name = f"u{self.fresh}.{OUT_ZONE}."
        return question("outzone", name, QTYPE.A, NOERROR, frozenset([upstream_ip(name)]))

    def send(self) -> None:
        for _ in range(65536):  # a free ID; bounded
            self.next_id = (self.next_id + 1) & 0xFFFF
            if self.next_id not in self.flight:
                break
        else:
            return
        q = self.pick()
        qid = self.next_id
        self.flight[qid] = (time.monotonic(), q)  # stamped per query: this process may be preempted mid-batch
        self.tally[q.kind].sent += 1
        self.sock.sendto(struct.pack("!H", qid) + q.wire[2:], self.port)

    def note(self, what: str, q: Question, sent: float, now: float, detail: str = "") -> None:
        if len(self.events) < 200:
            self.events.append({"what": what, "kind": q.kind, "name": q.name, "qtype": QTYPE[q.qtype],
                                "sent_s": round(self.phases.rel(sent), 3), "after_s": round(now - sent, 3),
                                "during": self.phases.active(sent), "detail": detail})

    def received(self, data: bytes, now: float) -> None:
        """One reply, `now` = its kernel arrival time."""
        if len(data) < 12:
            return
        got = self.flight.pop(struct.unpack("!H", data[:2])[0], None)
        if got is None:
            return  # not ours, or its query already counted as a timeout
        sent, q = got
        t = self.tally[q.kind]
        if now - sent > (self.outzone_timeout if q.kind == "outzone" else self.timeout):
            t.late += 1
            self.timed_out(q, sent, now)  # arrived, but too late for the client
            return
        t.answered += 1
        if q.kind != "outzone":
            self.latencies.append(now - sent)
            if now - sent > self.worst[0]:
                self.worst = (now - sent, sent)
        if data[12:12 + len(q.question)].lower() != q.question.lower():
            t.wrong += 1
            self.note("wrong question", q, sent, now)
            return
        rcode, answers = self.parse(data)
        if rcode == SERVFAIL:
            t.servfail += 1
            if q.kind == "outzone":
                self.outzone_fail_times.append((sent, "servfail"))
            else:
                self.note("SERVFAIL", q, sent, now)
            return
        if q.kind == "churn":
            if rcode == NOERROR and len(answers) == 1:
                self.churn_seen.append((q.name, sent, now, answers))
            else:
                t.wrong += 1
                self.note("wrong", q, sent, now, f"rcode {rcode}, {sorted(map(str, answers))}")
            return
        if rcode != q.rcode:
            t.other_rcode[str(RCODE.get(rcode, rcode))] += 1
        if rcode == q.rcode and answers == q.answers:
            t.right += 1
        else:
            t.wrong += 1
            self.note("wrong", q, sent, now, f"rcode {rcode}, {sorted(map(str, answers))[:4]}")

    def timed_out(self, q: Question, sent: float, now: float) -> None:
        self.tally[q.kind].timeouts += 1
        if q.kind == "outzone":
            self.outzone_fail_times.append((sent, "timeout"))
        else:
            self.note("timeout", q, sent, now)

    def sweep(self, final: bool = False) -> None:
        """Queries without an answer after their timeout are lost (out-of-zone: the forwarder's 5 s + 1).
        The clock is read before the socket is drained: whatever arrived in time is read first."""
        now = time.monotonic()
        self.sock.drain()
        for qid, (sent, q) in list(self.flight.items()):
            limit = self.outzone_timeout if q.kind == "outzone" else self.timeout
            if final or now - sent > limit:
                del self.flight[qid]
                self.timed_out(q, sent, now)

    async def run(self, seconds: float) -> float:
        """Send at `qps` for `seconds` (catching up at most 0.1 s of backlog); returns the wall time."""
        start = time.monotonic()
        end = start + seconds
        sent = 0
        last_sweep = start
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - start) * self.qps)
            sent = max(sent, due - int(self.qps * 0.1))  # after a stall, at most 0.1 s is caught up
            while sent < due:
                self.send()
                sent += 1
            if now - last_sweep > 0.25:
                self.sweep()
                last_sweep = now
            await asyncio.sleep(0.005)
        return time.monotonic() - start

    async def drain(self) -> None:
        deadline = time.monotonic() + self.outzone_timeout + 0.5
        while self.flight and time.monotonic() < deadline:
            self.sweep()
            await asyncio.sleep(0.05)
        self.sweep(final=True)
        self.sock.close()


# --------------------------------------------------------------------------- phases
class Phases:
    """When each disruption ran (monotonic), to tell expected failures from unexpected ones."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.spans: list[list[Any]] = []  # [name, start, end or None]

    def begin(self, name: str) -> list[Any]:
        span = [name, time.monotonic(), None]
        self.spans.append(span)
        log(f"   t={self.rel(span[1]):6.1f} s  {name} begins")
        return span

    def end(self, span: list[Any]) -> None:
        span[2] = time.monotonic()
        log(f"   t={self.rel(span[2]):6.1f} s  {span[0]} ends")

    def rel(self, t: float) -> float:
        return t - self.t0

    def active(self, t: float) -> list[str]:
        return [s[0] for s in self.spans if s[1] <= t and (s[2] is None or t <= s[2])]

    def within(self, name: str, t: float, before: float = 0.0, after: float = 0.0) -> bool:
        """Was `t` in a span called `name...` (widened by before/after)?"""
        return any(s[0].startswith(name) and s[1] - before <= t and (s[2] is None or t <= s[2] + after)
                   for s in self.spans)

    def as_list(self) -> list[dict[str, Any]]:
        return [{"what": s[0], "from_s": round(self.rel(s[1]), 3),
                 "to_s": None if s[2] is None else round(self.rel(s[2]), 3)} for s in self.spans]


# --------------------------------------------------------------------------- changes
class Probe:
    """Asks one name until the answer holds an address (bounded), one query at a time."""

    def __init__(self) -> None:
        self.reply: asyncio.Future | None = None
        self.parse = Parsed()
        self.sock = TimedSocket(self.received)

    def received(self, data: bytes, rx: float) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result((data, rx))

    def close(self) -> None:
        self.sock.close()

    async def until(self, port: int, name: str, ip: str, deadline: float) -> float | None:
        """Kernel arrival time (monotonic) of the first answer showing `ip`, or None by `deadline`."""
        wire = make_query(name, QTYPE.A)
        n = 0
        while time.monotonic() < deadline:
            n = (n + 1) & 0xFFFF
            self.reply = asyncio.get_running_loop().create_future()
            self.sock.sendto(struct.pack("!H", n) + wire[2:], port)
            try:
                data, rx = await asyncio.wait_for(self.reply, 0.5)
            except TimeoutError:
                continue
            if data[:2] == struct.pack("!H", n) and ip in self.parse(data)[1]:
                return rx
            await asyncio.sleep(0.002)
        return None


@dataclass
class History:
    """The clusterIPs a name had: (ip, committed, superseded: the probe first saw the next one)."""

    entries: list[list[Any]]

    def valid(self, ip: str, sent: float, received: float) -> bool:
        for addr, committed, superseded in self.entries:
            if addr == ip and committed <= received and (superseded is None or sent <= superseded):
                return True
        return False


class Changes:
    """clusterIP changes to the churn Services, each probed until the server shows it."""

    def __init__(self, api: KubeAPIServer, cluster: Cluster, port: int, probe: Probe) -> None:
        self.api, self.port, self.probe = api, port, probe
        self.cluster = cluster
        self.history = {n: History([[ip, 0.0, None]]) for n, ip in cluster.ips.items()}
        self.n = 0
        self.visible_ms: list[float] = []
        self.not_visible: list[str] = []
        self.applied = 0

    def commit(self, ns: str, name: str) -> tuple[str, str, float]:
        """Give the Service a new clusterIP; returns (name, address, commit time)."""
        self.n += 1
        ip = v4(self.n, 250)
        self.api.apply(service(ns, name, ip))
        self.applied += 1
        fq = f"{name}.{ns}.svc.{DOMAIN}."
        now = time.monotonic()
        self.history[fq].entries.append([ip, now, None])
        return fq, ip, now

    async def wait_visible(self, probe: Probe, fq: str, ip: str, committed: float, bound: float) -> float | None:
        """Probe until the server shows the change; from then on the previous address is wrong."""
        seen = await probe.until(self.port, fq, ip, time.monotonic() + bound)
        if seen is None:
            self.not_visible.append(fq)
            return None
        self.visible_ms.append((seen - committed) * 1000)
        entries = self.history[fq].entries
        i = next(k for k in range(len(entries) - 1, -1, -1) if entries[k][0] == ip)
        if i > 0:
            entries[i - 1][2] = seen
        return seen

    async def run(self, end: float, interval: float, api_up: asyncio.Event) -> None:
        """One change at a time while the API is up (and serve's watch streams are open)."""
        for k in range(100_000):
            if time.monotonic() >= end:
                return
            if not api_up.is_set() or self.api.open_streams("services") == 0:
                await asyncio.sleep(0.05)
                continue
            ns, name = self.cluster.churn[k % len(self.cluster.churn)]
            fq, ip, committed = self.commit(ns, name)
            await self.wait_visible(self.probe, fq, ip, committed, 15.0)
            await asyncio.sleep(interval)

    def check(self, seen: list[tuple[str, float, float, frozenset]]) -> tuple[int, int, list[dict[str, Any]]]:
        right, wrong, bad = 0, 0, []
        for name, sent, received, answers in seen:
            ip = next(iter(answers))
            if self.history[name].valid(ip, sent, received):
                right += 1
            else:
                wrong += 1
                if len(bad) < 20:
                    bad.append({"name": name, "got": ip, "history": self.history[name].entries})
        return right, wrong, bad


# --------------------------------------------------------------------------- processes
def read_status(pid: int, key: str) -> float:
    """A /proc/PID/status figure in MB (VmRSS, VmHWM); 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def runqueue_wait(pid: int | str) -> float:
    """Seconds the task has waited, runnable, for a CPU (/proc/PID/schedstat, field 2): how
    much other work on its CPU held it back."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def worst_window(samples: list[tuple[float, float]], width: float = 1.0) -> float:
    """Largest increase of a cumulative figure over any `width` s of (time, value) samples."""
    best, j = 0.0, 0
    for i in range(len(samples)):
        while samples[i][0] - samples[j][0] > width:
            j += 1
        best = max(best, samples[i][1] - samples[j][1])
    return best


def udp_drops() -> dict[int, int]:
    """Datagrams the kernel dropped per local UDP port (/proc/net/udp, this network namespace):
    a full receive buffer shows here, not as an error anywhere."""
    out: dict[int, int] = {}
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                parts = line.split()
                port = int(parts[1].rsplit(":", 1)[1], 16)
                out[port] = out.get(port, 0) + int(parts[-1])
    except (OSError, IndexError, ValueError, StopIteration):
        pass
    return out


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def free_port() -> int:
    """A loopback port free for both UDP and TCP."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port")


def stop_pid(proc: subprocess.Popen | asyncio.subprocess.Process | None, grace: float = 5.0) -> None:
    """SIGTERM our own child by its PID, SIGKILL after `grace` s (never a name or a group)."""
    if proc is None:
        return
    if isinstance(proc, subprocess.Popen):
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        return
    if proc.returncode is not None:  # an asyncio child: its own loop reaps it
        return
    try:
        proc.terminate()
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while proc.returncode is None and time.monotonic() < deadline and os.path.exists(f"/proc/{proc.pid}"):
        time.sleep(0.05)
    if proc.returncode is None and os.path.exists(f"/proc/{proc.pid}"):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def pinned(cmd: list[str], cpu: int) -> list[str]:
    return (["taskset", "-c", str(cpu)] + cmd) if cpu >= 0 and shutil.which("taskset") else cmd


async def flood(port: int, path: Path, seconds: float, qps: int, phases: Phases,
                procs: list[Any]) -> dict[str, Any]:
    """dnsperf over never-repeated names for `seconds` at `qps` (inherits the load CPU)."""
    if not shutil.which("dnsperf"):
        return {"ran": False, "why": "dnsperf missing (Debian package dnsperf)"}
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(path), "-l", f"{seconds:.2f}",
           "-Q", str(qps), "-c", "4", "-t", "2", "-n", "1"]
    span = phases.begin("flood")
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    procs.append(proc)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 15)
    except TimeoutError:
        stop_pid(proc)
        return {"ran": False, "why": "dnsperf did not finish in time"}
    finally:
        phases.end(span)
    text = out.decode(errors="replace")
    res: dict[str, Any] = {"ran": True, "seconds": seconds, "target_qps": qps}
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Queries sent:"):
            res["sent"] = int(s.split()[2])
        elif s.startswith("Queries completed:"):
            res["answered"] = int(s.split()[2])
        elif s.startswith("Queries lost:"):
            res["lost"] = int(s.split()[2])
        elif s.startswith("Queries per second:"):
            res["qps"] = float(s.split()[3])
        elif s.startswith("Response codes:"):
            res["rcodes"] = {k: int(v) for k, v in
                             (p.strip().split()[:2] for p in s.split(":", 1)[1].split(",") if p.strip())}
    if "sent" not in res:
        return {"ran": False, "why": "dnsperf output not understood: " + text[-300:]}
    res["answered_rate"] = res.get("answered", 0) / res["sent"] if res["sent"] else 0.0
    return res


def write_flood_names(path: Path, namespaces: list[str], count: int, rnd: random.Random) -> None:
    """dnsperf input: `count` names never asked before, one label below existing namespaces."""
    with open(path, "w") as f:
        f.writelines(f"r{n:x}-{rnd.getrandbits(32):08x}.{namespaces[n % len(namespaces)]}.svc.{DOMAIN} A\n"
                     for n in range(count))


# --------------------------------------------------------------------------- the soak
@dataclass
class Serve:
    proc: subprocess.Popen
    port: int
    log_path: Path

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def start_serve(kubeconfig: Path, port: int, up_port: int, cpu: int, log_path: Path) -> Serve:
    """`clusterdns serve` on the API, every endpoint on loopback (as bench/run.py's start())."""
    cmd = pinned([sys.executable, "-m", "clusterdns", "serve", "--kubeconfig", str(kubeconfig),
                  "--listen", f"127.0.0.1:{port}", "--ttl", "30", "--upstream", f"127.0.0.1:{up_port}",
                  "--health", f"127.0.0.1:{free_port()}", "--ready", f"127.0.0.1:{free_port()}",
                  "--metrics", f"127.0.0.1:{free_port()}", "--lameduck", "0",
                  "--shutdown-timeout", "1", "--sync-timeout", "120", "--no-loop-detect",
                  "--log-level", "info"], cpu)
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Serve(proc, port, log_path)


async def wait_answer(port: int, q: Question, bound: float, proc: subprocess.Popen) -> float | None:
    """Seconds until `q` is answered right (the first sync is done), or None."""
    probe = Probe()
    start = time.monotonic()
    try:
        while time.monotonic() - start < bound and proc.poll() is None:
            seen = await probe.until(port, q.name, next(iter(q.answers)), min(start + bound, time.monotonic() + 1))
            if seen is not None:
                return seen - start
    finally:
        probe.close()
    return None


async def soak(a: argparse.Namespace, procs: list[Any]) -> dict[str, Any]:
    rnd = random.Random(a.seed)
    S = a.seconds
    api_down = min(a.api_down, S * 0.07)
    up_down = min(a.upstream_down, S / 6)
    flood_s = S * 0.25
    res: dict[str, Any] = {"seconds": S, "services": a.services, "qps": a.qps, "seed": a.seed,
                           "server_cpu": a.server_cpu, "load_cpu": a.load_cpu, "timeout_s": a.timeout}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        tmpd = Path(tmp)
        async with KubeAPIServer(bookmark_interval=5.0) as api:
            t0 = time.monotonic()
            cluster = populate(api, a.services, rnd)
            res["objects"] = {r: len(v) for r, v in api.objects.items()}
            log(f"== test API on {api.url}: {a.services} services (+{CHURN_SERVICES + 1} changing), "
                f"{cluster.endpoints} endpoints, in {time.monotonic() - t0:.1f} s")
            kubeconfig = write_kubeconfig(tmpd / "kubeconfig", api.url)
            up_port, port = free_port(), free_port()
            upstream = Upstream(up_port)
            await upstream.start()
            flood_file = tmpd / "flood.txt"
            write_flood_names(flood_file, cluster.namespaces, int(a.flood_qps * flood_s * 1.05) + 100, rnd)
            srv = start_serve(kubeconfig, port, up_port, a.server_cpu, tmpd / "serve.log")
            proc = srv.proc
            procs.append(proc)
            first = next(q for q in reversed(cluster.real) if q.qtype == QTYPE.A)
            sync = await wait_answer(port, first, 180.0, proc)
            if sync is None:
                raise RuntimeError(f"clusterdns serve did not answer in 180 s; log:\n{srv.tail()}")
            await asyncio.sleep(0.5)
            res["serve"] = {"pid": proc.pid, "sync_s": round(sync, 3),
                            "rss_after_sync_mb": round(read_status(proc.pid, "VmRSS"), 1)}
            log(f"== clusterdns serve pid {proc.pid} on 127.0.0.1:{port} (cpu {a.server_cpu}) answered after "
                f"{sync:.2f} s; RSS {res['serve']['rss_after_sync_mb']} MB; upstream on 127.0.0.1:{up_port}")
            cpu0 = cpu_seconds(proc.pid)
            lists0 = (api.lists("services"), api.lists("endpointslices"))

            phases = Phases()
            mix = Mix(port, a.qps, a.timeout, a.outzone_timeout, cluster, rnd, phases)
            probe, gone_probe = Probe(), Probe()
            changes = Changes(api, cluster, port, probe)
            api_up = asyncio.Event()
            api_up.set()
            end = phases.t0 + S
            rss_peak_seen = [0.0]
            loop_lag = [0.0, 0.0]  # this process's worst wake-up delay: (seconds, at)
            waits: dict[str, list[tuple[float, float]]] = {"serve": [], "load": []}
            relist: dict[str, Any] = {}

            async def at(frac: float) -> None:
                await asyncio.sleep(max(0.0, phases.t0 + frac * S - time.monotonic()))

            async def restarts() -> None:
                for k, frac in enumerate((0.15, 0.45, 0.80)):
                    await at(frac)
                    gone = k == 1
                    span = phases.begin(f"API down #{k + 1}" + (" (410 Gone after)" if gone else ""))
                    api_up.clear()
                    await api.stop_listening()
                    change = None
                    if gone:  # a change the watch misses, then history compacted: a resume gets 410
                        change = changes.commit(*cluster.gone)
                        api.compact()
                        relist["lists_before"] = api.lists("services")
                    await asyncio.sleep(api_down)
                    await api.start_listening()
                    api_up.set()
                    phases.end(span)
                    if change is not None:  # visible only once serve has re-listed
                        seen = await changes.wait_visible(gone_probe, *change, 30.0)
                        relist["lists_after"] = api.lists("services")
                        relist["visible_after_restart_s"] = None if seen is None else round(seen - span[2], 3)

            async def upstream_stop() -> None:
                await at(0.55)
                span = phases.begin("upstream down")
                await upstream.stop()
                await asyncio.sleep(up_down)
                await upstream.start()
                phases.end(span)

            async def flood_run() -> dict[str, Any]:
                await at(0.25)
                return await flood(port, flood_file, flood_s, a.flood_qps, phases, procs)

            async def rss_sampler() -> None:
                """serve's RSS every 0.25 s, and how late this loop wakes (its own stalls inflate
                the answer times it measures)."""
                for k in range(100_000):
                    t = time.monotonic()
                    if t > end + 10:
                        return
                    if k % 25 == 0:
                        rss_peak_seen[0] = max(rss_peak_seen[0], read_status(proc.pid, "VmRSS"))
                        waits["serve"].append((t, runqueue_wait(proc.pid)))
                        waits["load"].append((t, runqueue_wait("self")))
                    await asyncio.sleep(0.01)
                    lag = time.monotonic() - t - 0.01
                    if lag > loop_lag[0]:
                        loop_lag[:] = [lag, t]

            log(f"== soak for {S:g} s: mix {a.qps:g} q/s, API down {api_down:.1f} s x3, upstream down "
                f"{up_down:.1f} s, flood {a.flood_qps} q/s for {flood_s:.1f} s")
            tasks = [asyncio.create_task(x) for x in (restarts(), upstream_stop(), changes.run(end, a.change_interval, api_up))]
            flood_task = asyncio.create_task(flood_run())
            sampler = asyncio.create_task(rss_sampler())
            drops0 = udp_drops()
            mix_port = mix.sock.port
            try:
                wall = await mix.run(S)
                await mix.drain()
                async with asyncio.timeout(60):
                    await asyncio.gather(*tasks)
                    flood_res = await flood_task
            finally:
                for t in (*tasks, flood_task, sampler):
                    t.cancel()
                for pr in (probe, gone_probe):
                    pr.close()
                await upstream.stop()
            if proc.poll() is not None:
                raise RuntimeError(f"clusterdns serve exited ({proc.returncode}) during the soak; log:\n{srv.tail()}")
            res["serve"].update({"rss_end_mb": round(read_status(proc.pid, "VmRSS"), 1),
                                 "rss_max_sampled_mb": round(rss_peak_seen[0], 1),
                                 "peak_rss_mb": round(read_status(proc.pid, "VmHWM"), 1),
                                 "cpu_s": round(cpu_seconds(proc.pid) - cpu0, 2)})
            stop_pid(proc)
            res["serve"]["log_tail"] = srv.tail()[-1500:]
            res["mix_wall_s"] = round(wall, 2)
            drops = udp_drops()
            res["udp_drops"] = {"serve_socket": drops.get(port, 0) - drops0.get(port, 0),
                                "mix_socket": drops.get(mix_port, 0) - drops0.get(mix_port, 0),
                                "mix_send_errors": mix.sock.send_errors}
            res["cpu_contention"] = {
                f"{who}_runqueue_wait_s": round(w[-1][1] - w[0][1], 2) if w else None for who, w in waits.items()}
            res["cpu_contention"].update({
                f"{who}_runqueue_wait_worst_1s": round(worst_window(w), 3) for who, w in waits.items()})
            ok, bad, bad_list = changes.check(mix.churn_seen)
            mix.tally["churn"].right += ok
            mix.tally["churn"].wrong += bad
            res["mix"] = {k: t.as_dict() for k, t in mix.tally.items()}
            real = mix.tally["real"]
            zone = [mix.tally[k] for k in ("real", "junk", "churn")]
            res["real"] = real.as_dict()
            res["in_zone"] = {"sent": sum(t.sent for t in zone), "lost": sum(t.lost for t in zone),
                              "servfail": sum(t.servfail for t in zone), "wrong": sum(t.wrong for t in zone),
                              "timeouts": sum(t.timeouts for t in zone)}
            oz = mix.tally["outzone"]
            during = [(t, w) for t, w in mix.outzone_fail_times
                      if phases.within("upstream down", t, before=0.5, after=a.outzone_timeout)]
            res["out_of_zone"] = {**oz.as_dict(),
                                  "failed_while_upstream_down": len(during),
                                  "servfail_while_upstream_down": sum(1 for _, w in during if w == "servfail"),
                                  "failed_otherwise": len(mix.outzone_fail_times) - len(during),
                                  "upstream_queries": upstream.queries}
            res["servfail"] = {"in_zone": res["in_zone"]["servfail"], "out_of_zone": oz.servfail}
            lat = sorted(mix.latencies)
            res["in_zone_latency_ms"] = {"median": round(statistics.median(lat) * 1000, 3) if lat else None,
                                         "p99": round(lat[int(0.99 * (len(lat) - 1))] * 1000, 3) if lat else None,
                                         "max": round(lat[-1] * 1000, 3) if lat else None,
                                         "max_sent_at_s": round(phases.rel(mix.worst[1]), 3),
                                         "max_during": phases.active(mix.worst[1]),
                                         "load_loop_lag_ms_max": round(loop_lag[0] * 1000, 1),
                                         "load_loop_lag_at_s": round(phases.rel(loop_lag[1]), 3)}
            res["changes"] = {"applied": changes.applied, "visible": len(changes.visible_ms),
                              "not_visible": changes.not_visible,
                              "visible_ms_median": round(statistics.median(changes.visible_ms), 2) if changes.visible_ms else None,
                              "visible_ms_max": round(max(changes.visible_ms), 2) if changes.visible_ms else None,
                              "wrong_churn_answers": bad_list}
            res["api"] = {"restarts": 3, "down_s": round(api_down, 2),
                          "lists": {"services": api.lists("services") - lists0[0],
                                    "endpointslices": api.lists("endpointslices") - lists0[1]},
                          "relist_after_410": relist.get("lists_after", 0) > relist.get("lists_before", 0),
                          "gone_change_visible_after_restart_s": relist.get("visible_after_restart_s")}
            res["upstream"] = {"down_s": round(up_down, 2)}
            res["flood"] = flood_res
            res["phases"] = phases.as_list()
            res["events"] = mix.events
            res["verdict"] = {"lost_real": real.lost, "met": real.lost == 0,
                              "wrong_in_zone": res["in_zone"]["wrong"], "lost_in_zone": res["in_zone"]["lost"]}
    return res


def report(r: dict[str, Any]) -> str:
    """The markdown summary and the verdict lines."""
    real, zone, oz, fl, sv, api, ch = (r["real"], r["in_zone"], r["out_of_zone"], r["flood"], r["serve"],
                                       r["api"], r["changes"])
    mix = r["mix"]
    lines = [(f"## soak: {r['seconds']:g} s, {r['services']} services, mix {r['qps']:g} q/s "
              f"(serve on CPU {r['server_cpu']}, load on CPU {r['load_cpu']})"), "",
             "| queries | sent | answered | right | wrong | SERVFAIL | timeouts (late) | lost |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    labels = {"real": "real names (A/AAAA/SRV)", "churn": "changing Services (A)",
              "junk": "in-zone NXDOMAIN junk", "outzone": "out of zone (upstream)"}
    for k in ("real", "churn", "junk", "outzone"):
        t = mix[k]
        lines.append(f"| {labels[k]} | {t['sent']} | {t['answered']} | {t['right']} | {t['wrong']} | "
                     f"{t['servfail']} | {t['timeouts']} ({t['late']}) | {t['lost']} |")
    lat = r["in_zone_latency_ms"]
    gone = api["gone_change_visible_after_restart_s"]
    lines += ["",
              (f"* in-zone answer time (as this process reads it): median {lat['median']} ms, p99 {lat['p99']} ms, "
               f"max {lat['max']} ms (sent at {lat['max_sent_at_s']} s, during {lat['max_during'] or 'no disruption'}); "
               f"this process's own worst stall {lat['load_loop_lag_ms_max']} ms at {lat['load_loop_lag_at_s']} s; "
               f"a loss is no answer within {r['timeout_s']:g} s, or SERVFAIL"),
              (f"* SERVFAIL: in zone {r['servfail']['in_zone']}, out of zone {r['servfail']['out_of_zone']} "
               f"({oz['servfail_while_upstream_down']} while the upstream was down); out-of-zone failures "
               f"outside the upstream stop: {oz['failed_otherwise']}"),
              (f"* API: 3 stops ({api['down_s']:g} s down + the time to close the streams); re-lists after sync: services {api['lists']['services']}, "
               f"endpointslices {api['lists']['endpointslices']}; 410 Gone forced a re-list: "
               f"{'yes' if api['relist_after_410'] else 'no'}"
               + ("" if gone is None else f" (the change made while down visible {gone} s after the restart)")),
              (f"* changes: {ch['applied']} clusterIP changes, {ch['visible']} seen by the probe "
               f"(median {ch['visible_ms_median']} ms, max {ch['visible_ms_max']} ms), "
               f"{len(ch['not_visible'])} never seen")]
    if fl.get("ran"):
        lines.append(f"* flood: {fl['sent']} never-repeated names at {fl.get('qps', 0):,.0f} q/s "
                     f"(target {fl['target_qps']}), answered {fl['answered_rate'] * 100:.2f}% "
                     f"({fl.get('rcodes', {})})")
    else:
        lines.append(f"* flood: not run ({fl.get('why')})")
    lines += [(f"* serve: synced and answering {sv['sync_s']} s after start; RSS {sv['rss_after_sync_mb']} MB "
               f"after sync, {sv['rss_end_mb']} MB at the end, peak (VmHWM) {sv['peak_rss_mb']} MB; "
               f"{sv['cpu_s']} CPU s during the soak"),
              (f"* UDP datagrams the kernel dropped (receive buffer full): at serve's socket "
               f"{r['udp_drops']['serve_socket']}, at the mix's {r['udp_drops']['mix_socket']}; "
               f"mix send errors {r['udp_drops']['mix_send_errors']}"),
              (f"* CPU contention (time runnable but waiting for its CPU, /proc/PID/schedstat): serve "
               f"{r['cpu_contention']['serve_runqueue_wait_s']} s in all, worst second "
               f"{r['cpu_contention']['serve_runqueue_wait_worst_1s']} s; this load process "
               f"{r['cpu_contention']['load_runqueue_wait_s']} s, worst second "
               f"{r['cpu_contention']['load_runqueue_wait_worst_1s']} s"),
              "* timeline: " + ", ".join(f"{p['what']} {p['from_s']:.1f}–{p['to_s']:.1f} s"
                                         for p in r["phases"] if p["to_s"] is not None), ""]
    lines.append(f"lost real-name answers: {real['lost']} — {'met' if r['verdict']['met'] else 'not met'}")
    lines.append(f"lost in-zone answers (real + changing + junk): {zone['lost']}; wrong in-zone answers: "
                 f"{zone['wrong']} — {'met' if zone['lost'] == 0 and zone['wrong'] == 0 else 'not met'}")
    if r["events"]:
        lines += ["", "first failures:"] + [f"  {e}" for e in r["events"][:10]]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--services", type=int, default=3000)
    ap.add_argument("--qps", type=float, default=2000.0, help="checked mix, queries a second")
    ap.add_argument("--flood-qps", type=int, default=20000, help="dnsperf flood rate, a quarter of the run")
    ap.add_argument("--api-down", type=float, default=4.0, help="seconds per API stop (at most 7%% of the run)")
    ap.add_argument("--upstream-down", type=float, default=10.0, help="seconds the upstream is stopped (≤ 1/6 of the run)")
    ap.add_argument("--change-interval", type=float, default=0.25, help="pause between clusterIP changes")
    ap.add_argument("--timeout", type=float, default=2.0, help="in-zone query without an answer this long is lost")
    ap.add_argument("--outzone-timeout", type=float, default=6.0, help="the same out of the zone (forwarder gives up at 5 s)")
    ap.add_argument("--server-cpu", type=int, default=0, help="CPU for serve (-1: not pinned)")
    ap.add_argument("--load-cpu", type=int, default=1, help="CPU for this process and dnsperf (-1: not pinned)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    a = ap.parse_args()
    a.seconds = min(max(a.seconds, 2.0), 3600.0)
    a.qps = min(max(a.qps, 10.0), 20_000.0)
    a.flood_qps = min(max(a.flood_qps, 100), 500_000)
    cpus = os.sched_getaffinity(0)
    for attr in ("server_cpu", "load_cpu"):
        if getattr(a, attr) not in cpus:
            setattr(a, attr, -1)
    if a.load_cpu >= 0:
        os.sched_setaffinity(0, {a.load_cpu})
    procs: list[Any] = []

    async def guarded() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        return await soak(a, procs)

    try:
        res = asyncio.run(guarded())
    except (RuntimeError, asyncio.CancelledError, KeyboardInterrupt) as e:
        log(f"!! soak did not complete: {e}")
        return 2
    finally:
        for p in reversed(procs):
            stop_pid(p)
    print(report(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
