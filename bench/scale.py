"""Memory and sync time at cluster scale, through the real API watch.

    python bench/scale.py [--services 5000] [--endpoints-per-service 2] [--events 300]

The test API server (tests/kubeapi.py) holds N Services, each with one EndpointSlice
of M endpoints (a tenth of the services headless, a fifth dual-stack). A real
`clusterdns serve --kubeconfig` child lists and watches it; we report:

- initial sync: process start to the "synced" log line;
- RSS after sync, and the RSS of a bare interpreter that imported what clusterdns
  imports (the issue's "beyond the bare interpreter" baseline);
- event apply time: the watch source's own per-event measure (decode + store update +
  zone recompile), median and p99 over --events changes sent at 100/s;
- the peak RSS while the child re-lists both kinds after a 410 (its kernel peak reset just
  before), against the RSS before it (`--no-relist` skips it).

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from clusterdns.app.cluster import build_cluster
from clusterdns.kube.client import load_connection
from clusterdns.kube.watch import KubeSource, WatchSettings
from clusterdns.settings.schema import ServeConfig
from helpers import ServerProcess
from kubeapi import KubeAPIServer, endpoint_slice, namespace, service, write_kubeconfig

BARE = ("import clusterdns.app.cluster, clusterdns.cli, clusterdns.kube.watch, clusterdns.kube.client, uvloop, aiohttp;"
        "import os;print([l for l in open(f'/proc/{os.getpid()}/status') if l.startswith('VmRSS')][0].split()[1])")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def relist_peak(api: KubeAPIServer, pid: int) -> dict[str, float]:
    """Peak RSS of the child while it re-lists everything after a 410 (issue: a re-list must
    not hold two full copies). The kernel's peak (VmHWM) is reset first (clear_refs 5)."""
    steady = rss_mb(pid)
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    lists = api.lists("services"), api.lists("endpointslices")
    started = time.monotonic()
    for res in ("services", "endpointslices"):  # the streams go quiet while the cluster changes
        api.silence(res)  # and history is compacted,
    api.apply(service("ns-0", "relisted", "10.255.0.1"))
    api.apply(endpoint_slice("ns-0", "relisted-abcde", "relisted", ["10.255.1.1"]))
    api.compact()
    for res in ("services", "endpointslices"):  # then end: each resume gets 410 and re-lists
        api.silence(res, on=False)
    async with asyncio.timeout(120):
        while api.lists("services") <= lists[0] or api.lists("endpointslices") <= lists[1]:
            await asyncio.sleep(0.05)
        idle_since, last = time.monotonic(), cpu_seconds(pid)
        while time.monotonic() - idle_since < 1.0:  # done once the child's CPU is idle for 1 s
            await asyncio.sleep(0.2)
            now = cpu_seconds(pid)
            if now - last > 0.02:
                idle_since = time.monotonic()
            last = now
    with open(f"/proc/{pid}/status") as f:
        hwm = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    return {"steady_mb": steady, "peak_mb": hwm, "after_mb": rss_mb(pid), "ratio": hwm / steady,
            "seconds": time.monotonic() - started}


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
            # update, zone recompile), while the child takes the same events
            store, _handler = build_cluster(ServeConfig(loop_detect=False))
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
            relist = await relist_peak(api, proc.proc.pid) if a.relist else None
            await asyncio.to_thread(proc.stop)
    print(f"| services | endpoints | initial sync s | RSS MB after sync | bare interpreter + imports MB | beyond bare MB | RSS after {a.events} events MB | event apply median ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    med = statistics.median(applied) if applied else float("nan")
    p99 = sorted(applied)[int(0.99 * (len(applied) - 1))] if applied else float("nan")
    print(f"| {a.services} | {endpoints} | {sync_s:.2f} | {rss_after:.1f} | {bare:.1f} | {rss_after - bare:.1f} | {rss_events:.1f} | {med:.3f} | {p99:.3f} |")
    if not applied:
        print("(no watch events were applied: the source did not see the changes)")
    if relist is not None:
        print(f"re-list after 410 (both kinds): RSS {relist['steady_mb']:.1f} MB before, peak {relist['peak_mb']:.1f} MB "
              f"({relist['ratio']:.2f}x), {relist['after_mb']:.1f} MB after; {relist['seconds']:.1f} s to idle")
    if a.json:  # the same figures for bench/run.py's memory case
        with open(a.json, "w") as f:
            json.dump({"services": a.services, "endpoints": endpoints, "sync_s": sync_s,
                       "rss_after_sync_mb": rss_after, "bare_mb": bare, "beyond_bare_mb": rss_after - bare,
                       "events": a.events, "rss_after_events_mb": rss_events,
                       "apply_median_ms": med if applied else None, "apply_p99_ms": p99 if applied else None,
                       "applied": len(applied), "relist": relist}, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--endpoints-per-service", type=int, default=2)
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    ap.add_argument("--no-relist", dest="relist", action="store_false",
                    help="skip the 410 re-list (peak RSS while the whole cluster is listed again)")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
