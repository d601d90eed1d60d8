"""Memory and sync time at cluster scale, through the real API watch.

    python bench/scale.py [--services 5000] [--endpoints-per-service 2] [--events 300]

The test API server (tests/kubeapi.py) holds N Services, each with one EndpointSlice
of M endpoints (a tenth of the services headless, a fifth dual-stack). A real
`clusterdns serve --kubeconfig` child lists and watches it; we report:

- initial sync: process start to the "synced" log line;
- RSS after sync, and the RSS of a bare interpreter that imported what clusterdns
  imports (the issue's "beyond the bare interpreter" baseline);
- event apply time: the watch source's own per-event measure (decode + store update +
  answer invalidation), median and p99 over --events changes sent at 100/s.

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from clusterdns.app import ServeOptions, build_cluster  # noqa: E402
from clusterdns.kube.client import load_connection  # noqa: E402
from clusterdns.kube.watch import KubeSource, WatchSettings  # noqa: E402
from helpers import ServerProcess  # noqa: E402
from kubeapi import KubeAPIServer, endpoint_slice, namespace, service, write_kubeconfig  # noqa: E402

BARE = ("import clusterdns.app, clusterdns.cli, clusterdns.kube.watch, clusterdns.kube.client, uvloop, aiohttp;"
        "import os;print([l for l in open(f'/proc/{os.getpid()}/status') if l.startswith('VmRSS')][0].split()[1])")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def populate(api: KubeAPIServer, services: int, per_service: int) -> int:
    namespaces = max(1, services // 20)
    for n in range(namespaces):
        api.apply(namespace(f"ns-{n}"))
    endpoints = 0
    for i in range(services):
        ns = f"ns-{i % namespaces}"
        headless = i % 10 == 0
        ip = f"10.{96 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
        if headless:
            api.apply(service(ns, f"svc-{i}", "None"))
        elif i % 5 == 1:
            api.apply(service(ns, f"svc-{i}", ip, clusterIPs=[ip, f"fd00:10:96::{i:x}"], ipFamilies=["IPv4", "IPv6"]))
        else:
            api.apply(service(ns, f"svc-{i}", ip))
        base = i * per_service
        addrs = [f"10.{128 + ((base + k) >> 16)}.{((base + k) >> 8) & 255}.{(base + k) & 255}" for k in range(per_service)]
        api.apply(endpoint_slice(ns, f"svc-{i}-abcde", f"svc-{i}", addrs))
        endpoints += len(addrs)
    return endpoints


async def main_async(a: argparse.Namespace) -> None:
    bare = float(subprocess.run([sys.executable, "-c", BARE], capture_output=True, text=True, check=True).stdout) / 1024
    async with KubeAPIServer(bookmark_interval=5.0) as api:
        t0 = time.monotonic()
        endpoints = populate(api, a.services, a.endpoints_per_service)
        print(f"test API filled with {a.services} services, {endpoints} endpoints in {time.monotonic() - t0:.1f} s")
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = write_kubeconfig(Path(tmp) / "kubeconfig", api.url)
            proc = ServerProcess("serve", "--kubeconfig", str(kubeconfig), "--listen", "127.0.0.1:0",
                                 "--health", "127.0.0.1:0", "--ready", "127.0.0.1:0", "--lameduck", "0",
                                 "--sync-timeout", "60", "--no-loop-detect", "--log-level", "debug",
                                 ready_timeout=120)
            started = time.monotonic()
            await asyncio.to_thread(proc.start)
            sync_s = time.monotonic() - started
            assert proc.proc is not None
            await asyncio.sleep(1.0)
            rss_after = rss_mb(proc.proc.pid)
            # the same source in this process, to read its per-event timings (decode, store
            # update, answer-table invalidation), while the child takes the same events
            store, _handler = build_cluster(ServeOptions(loop_detect=False))
            source = KubeSource(store, load_connection(str(kubeconfig)), WatchSettings())
            applied: list[float] = []
            source.observers.append(lambda t: applied.append(t.latency * 1000))
            task = asyncio.create_task(source.run())
            async with asyncio.timeout(120):
                await source.synced.wait()
            await asyncio.sleep(0.5)
            for k in range(a.events):  # modify a slice at 100/s
                i = (k * 7919) % a.services
                ns = f"ns-{i % max(1, a.services // 20)}"
                api.apply(endpoint_slice(ns, f"svc-{i}-abcde", f"svc-{i}", [f"10.250.{k >> 8}.{k & 255}"]))
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)
            task.cancel()
            rss_events = rss_mb(proc.proc.pid)
            await asyncio.to_thread(proc.stop)
    print(f"| services | endpoints | initial sync s | RSS MB after sync | bare interpreter + imports MB | beyond bare MB | RSS after {a.events} events MB | event apply median ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    med = statistics.median(applied) if applied else float("nan")
    p99 = sorted(applied)[int(0.99 * (len(applied) - 1))] if applied else float("nan")
    print(f"| {a.services} | {endpoints} | {sync_s:.2f} | {rss_after:.1f} | {bare:.1f} | {rss_after - bare:.1f} | {rss_events:.1f} | {med:.3f} | {p99:.3f} |")
    if not applied:
        print("(no watch events were applied: the source did not see the changes)")
    if a.json:  # the same figures for bench/run.py's memory case
        with open(a.json, "w") as f:
            json.dump({"services": a.services, "endpoints": endpoints, "sync_s": sync_s,
                       "rss_after_sync_mb": rss_after, "bare_mb": bare, "beyond_bare_mb": rss_after - bare,
                       "events": a.events, "rss_after_events_mb": rss_events,
                       "apply_median_ms": med if applied else None, "apply_p99_ms": p99 if applied else None,
                       "applied": len(applied)}, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--endpoints-per-service", type=int, default=2)
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
