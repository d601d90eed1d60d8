"""Event -> changed answer latency: API changes at a fixed rate, a real `clusterdns serve`.

    python bench/watch_latency.py [--rate 100] [--seconds 10] [--services 1000]

The test API server (tests/kubeapi.py) commits a change (new Service, changed clusterIP,
changed EndpointSlice of a headless Service) every 1/rate s and streams it on the watch;
a probe then queries the changed name over UDP every millisecond until the answer is the
new one. Latency = answer time - commit time (same monotonic clock, same process), so it
covers watch stream, JSON decode, store update, answer-table invalidation and the query.
Loopback only; bounded by --seconds and a 3 s per-change deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import ServerProcess
from kubeapi import KubeAPIServer, endpoint_slice, namespace, service, write_kubeconfig

DEADLINE = 3.0  # a change not visible by then counts as missed


@dataclass
class Result:
    rate: float
    changes: int
    latencies: list[float]  # seconds, of the changes that became visible
    missed: int
    probed: int | None = None  # changes visible in DNS (None: all of them)

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] if xs else float("nan")

    def summary(self) -> str:
        ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
        probed = "" if self.probed in (None, self.changes) else f" ({self.probed} probed)"
        return (f"{self.changes} changes{probed} at {self.rate:g}/s: p50 {ms(self.pct(50))}, p90 {ms(self.pct(90))}, "
                f"p99 {ms(self.pct(99))}, max {ms(max(self.latencies, default=float('nan')))}, "
                f"mean {ms(statistics.fmean(self.latencies)) if self.latencies else 'n/a'}, missed {self.missed}")


def _ip(n: int, base: str = "10.96") -> str:
    return f"{base}.{(n >> 8) & 255}.{n & 255}"


async def _probe(port: int, name: str, want: str, since: float, interval: float = 0.001) -> float | None:
    """Query `name` A until its only address is `want`; seconds after `since`, or None."""
    q = dns.message.make_query(name, "A")
    while time.monotonic() - since < DEADLINE:
        try:
            r = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=1.0)
        except dns.exception.Timeout:
            continue
        got = [rd.to_text() for rrset in r.answer for rd in rrset]
        if r.rcode() == dns.rcode.NOERROR and got == [want]:
            return time.monotonic() - since
        await asyncio.sleep(interval)
    return None


@dataclass
class Change:
    """One change: `make()` builds the object to apply (when it is applied); `name` is the
    name to probe and `want` the only A address it answers with once the change is visible
    (None: a change not visible in DNS)."""

    make: Callable[[], dict]
    name: str | None = None
    want: str | None = None


def bench_namespace_changes(services: int) -> Callable[[int], Change]:
    """The changes of this tool's own cluster (populate): cycles a new Service, an existing
    Service's new clusterIP, a headless Service's endpoint moving."""
    def change(i: int) -> Change:
        kind = i % 3
        if kind == 0:  # a new Service
            name, ip = f"new{i}", _ip(20000 + i)
            obj = service("bench", name, ip)
        elif kind == 1:  # an existing Service gets a new clusterIP
            name, ip = f"svc{i % services}", _ip(40000 + i)
            obj = service("bench", name, ip)
        else:  # a headless Service's only endpoint moves
            name, ip = f"hl{i % 50}", _ip(i, "10.245")
            obj = endpoint_slice("bench", f"hl{i % 50}-a", f"hl{i % 50}", [ip])
        return Change(lambda: obj, f"{name}.bench.svc.cluster.local.", ip)
    return change


@dataclass
class Ahead:
    """Probe-ahead mode for a server under load, where a query waits in the server's queue
    (~outstanding/QPS): a probe sent after the commit cannot tell a visible-at-once change
    from the queue wait. So a stream of probes is started `lead` before the commit (lead
    adapts to the measured round trip) and sent every `cadence` s without waiting for the
    answers (one thread per stream); the change became visible between the last answer
    that does not show it and the first that does, both timed by the kernel on arrival,
    just after the server made them. Latency = the middle of that bracket - commit. Every
    `every`-th visible change is probed, to keep the probes a small share of the load."""

    cadence: float = 0.00025
    every: int = 1
    lead: float = 0.03  # current lead, adapted per stream
    brackets: list[float] = field(default_factory=list)  # bracket widths, s
    rtts: list[float] = field(default_factory=list)  # median round trip of each stream, s
    queries: int = 0  # probe queries sent


def _shows(data: bytes, want: bytes) -> bool:
    """NOERROR, one answer RR and nothing else, which is the A record `want` (no EDNS asked)."""
    return (len(data) >= 28 and data[3] & 0x0F == 0 and data[6:12] == b"\x00\x01\x00\x00\x00\x00"
            and data[-6:-4] == b"\x00\x04" and data[-4:] == want)


SO_TIMESTAMPNS = 35  # Linux; socket does not export it: kernel arrival time of each datagram


def _stream(port: int, ch: Change, i: int, commits: dict[int, float], ahead: Ahead) -> float | None:
    """Probes for change i every `cadence` s (a thread: sub-millisecond sleeps), until an
    answer shows it; commits[i] (time.time()) is set meanwhile. Latency estimate or None."""
    wire = bytearray(dns.message.make_query(ch.name, "A").to_wire())
    want = socket.inet_aton(ch.want)
    sent: dict[int, float] = {}
    replies: list[tuple[float, int, bool]] = []  # (arrival, id, shows the change)
    qid = random.randrange(65536)
    started = time.time()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass  # arrival = when read, at most `cadence` late
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        shown = False
        while not shown:
            now = time.time()
            c = commits.get(i)
            if (c is not None and now - c > DEADLINE) or now - started > DEADLINE + 1.0:
                break
            qid = (qid + 1) & 0xFFFF
            wire[0:2] = qid.to_bytes(2, "big")
            sent[qid] = now
            try:
                sock.send(wire)
            except OSError:
                pass
            while True:
                try:
                    data, anc, _, _ = sock.recvmsg(4096, 64)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. ECONNREFUSED: the server is gone
                    shown = True
                    break
                t = time.time()
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                        sec, nsec = struct.unpack("qq", payload[:16])
                        t = sec + nsec / 1e9
                shows = _shows(data, want)
                replies.append((t, int.from_bytes(data[:2], "big"), shows))
                shown = shown or shows
            time.sleep(ahead.cadence)
    ahead.queries += len(sent)
    rtts = sorted(t - sent[q] for t, q, _ in replies if q in sent)
    if rtts:
        rtt = rtts[len(rtts) // 2]
        ahead.rtts.append(rtt)
        ahead.lead = min(0.1, max(0.003, 1.5 * rtt + 0.002))
    since = commits.get(i)
    first = next((t for t, _, shows in replies if shows), None)
    if since is None or first is None:
        return None
    low = max([since] + [t for t, _, shows in replies if not shows and t < first])
    ahead.brackets.append(first - low)
    return (low + first) / 2 - since


async def measure(api: KubeAPIServer, port: int, rate: float, seconds: float, services: int = 0,
                  changes: Callable[[int], Change] | None = None, interval: float = 0.001,
                  ahead: Ahead | None = None) -> Result:
    """Drive `rate` changes/s for `seconds` against a server already reading `api`.

    `changes(i)` makes the i-th change (default: bench_namespace_changes(services)). Without
    `ahead`, each visible one is probed every `interval` s (plus the query's round trip) from
    its commit until it shows: latency = commit -> the first answer showing it, as a client
    sees it. With `ahead`, see Ahead."""
    change = changes or bench_namespace_changes(services)
    total = int(rate * seconds)
    if ahead is not None:
        return await _measure_ahead(api, port, rate, total, change, ahead)
    probes: list[asyncio.Task] = []
    start = time.monotonic()
    for i in range(total):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        ch = change(i)
        api.apply(ch.make())
        since = time.monotonic()
        if ch.name is not None and ch.want is not None:
            probes.append(asyncio.create_task(_probe(port, ch.name, ch.want, since, interval)))
    done = await asyncio.gather(*probes)
    lat = [d for d in done if d is not None]
    return Result(rate, total, lat, len(probes) - len(lat), len(probes))


async def _measure_ahead(api: KubeAPIServer, port: int, rate: float, total: int,
                         change: Callable[[int], Change], ahead: Ahead) -> Result:
    plan = [change(i) for i in range(total)]  # names and addresses now, objects when applied
    visible = [i for i, ch in enumerate(plan) if ch.name is not None and ch.want is not None]
    probed = visible[::max(1, ahead.every)]
    commits: dict[int, float] = {}  # time.time(): the probe threads compare kernel timestamps
    start = time.monotonic() + ahead.lead

    async def apply_all() -> None:
        for i, ch in enumerate(plan):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            api.apply(ch.make())
            commits[i] = time.time()

    async def probe_all() -> list[float | None]:
        tasks = []
        for i in probed:
            await asyncio.sleep(max(0.0, start + i / rate - ahead.lead - time.monotonic()))
            tasks.append(asyncio.create_task(asyncio.to_thread(_stream, port, plan[i], i, commits, ahead)))
        return await asyncio.gather(*tasks)

    _, done = await asyncio.gather(apply_all(), probe_all())
    lat = [d for d in done if d is not None]
    return Result(rate, total, lat, len(probed) - len(lat), len(probed))


def populate(api: KubeAPIServer, services: int) -> None:
    api.apply(namespace("bench"))
    for n in range(services):
        api.apply(service("bench", f"svc{n}", _ip(n)))
        api.apply(endpoint_slice("bench", f"svc{n}-a", f"svc{n}", [_ip(n, "10.244")]))
    for n in range(50):
        api.apply(service("bench", f"hl{n}", "None"))
        api.apply(endpoint_slice("bench", f"hl{n}-a", f"hl{n}", [_ip(n, "10.246")]))


async def run(rate: float, seconds: float, services: int) -> Result:
    async with KubeAPIServer() as api:
        populate(api, services)
        with tempfile.TemporaryDirectory() as tmp:
            kc = write_kubeconfig(Path(tmp) / "kubeconfig", api.url)
            proc = ServerProcess("serve", "--kubeconfig", str(kc), "--listen", "127.0.0.1:0", "--health",
                                 "127.0.0.1:0", "--ready", "127.0.0.1:0", "--lameduck", "0")
            proc.ready_timeout = 30
            await asyncio.to_thread(proc.start)
            try:
                return await measure(api, proc.port, rate, seconds, services)
            finally:
                await asyncio.to_thread(proc.stop)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=100.0, help="changes per second (default %(default)s)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to drive changes (default %(default)s)")
    p.add_argument("--services", type=int, default=1000, help="Services in the cluster (default %(default)s)")
    args = p.parse_args()
    result = asyncio.run(run(args.rate, args.seconds, args.services))
    print(f"event -> answer latency, {args.services} services: {result.summary()}")
    return 0 if result.missed == 0 and max(result.latencies) < 1.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
