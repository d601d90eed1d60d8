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
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import ServerProcess  # noqa: E402
from kubeapi import KubeAPIServer, endpoint_slice, namespace, service, write_kubeconfig  # noqa: E402

DEADLINE = 3.0  # a change not visible by then counts as missed


@dataclass
class Result:
    rate: float
    changes: int
    latencies: list[float]  # seconds, of the changes that became visible
    missed: int

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")

    def summary(self) -> str:
        ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
        return (f"{self.changes} changes at {self.rate:g}/s: p50 {ms(self.pct(50))}, p90 {ms(self.pct(90))}, "
                f"p99 {ms(self.pct(99))}, max {ms(max(self.latencies, default=float('nan')))}, "
                f"mean {ms(statistics.fmean(self.latencies)) if self.latencies else 'n/a'}, missed {self.missed}")


def _ip(n: int, base: str = "10.96") -> str:
    return f"{base}.{(n >> 8) & 255}.{n & 255}"


async def _probe(port: int, name: str, want: str, since: float) -> float | None:
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
        await asyncio.sleep(0.001)
    return None


async def measure(api: KubeAPIServer, port: int, rate: float, seconds: float, services: int) -> Result:
    """Drive `rate` changes/s for `seconds` against a server already reading `api`."""
    total = int(rate * seconds)
    probes: list[asyncio.Task] = []
    start = time.monotonic()
    for i in range(total):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        kind = i % 3
        if kind == 0:  # a new Service
            name, ip = f"new{i}", _ip(20000 + i)
            api.apply(service("bench", name, ip))
        elif kind == 1:  # an existing Service gets a new clusterIP
            name, ip = f"svc{i % services}", _ip(40000 + i)
            api.apply(service("bench", name, ip))
        else:  # a headless Service's only endpoint moves
            name, ip = f"hl{i % 50}", _ip(i, "10.245")
            api.apply(endpoint_slice("bench", f"hl{i % 50}-a", f"hl{i % 50}", [ip]))
        since = time.monotonic()
        probes.append(asyncio.create_task(_probe(port, f"{name}.bench.svc.cluster.local.", ip, since)))
    done = await asyncio.gather(*probes)
    lat = [d for d in done if d is not None]
    return Result(rate, total, lat, total - len(lat))


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
