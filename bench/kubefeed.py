#!/usr/bin/env python3
"""The test Kubernetes API (tests/kubeapi.py) holding the benchmark's cluster, for run.py.

    python bench/kubefeed.py --cluster bench/gen/s42-n5000/cluster.yaml --kubeconfig KC

Loads every Service and EndpointSlice of the generated cluster.yaml (the same objects
`clusterdns serve --manifests` reads; plus a Namespace per namespace) into the test API
server on 127.0.0.1 (real list/watch protocol), writes a kubeconfig for it, prints one
JSON line {"event": "ready", ...} and then takes one JSON command per stdin line,
answering each with one JSON line on stdout:

    {"cmd": "churn", "port": P, "rate": 100, "seconds": 10, "cadence": 0.00025, "every": 6}
        `rate` changes a second for `seconds` to the loaded cluster (bench/watch_latency.py's
        measure() drives them and probes the server on 127.0.0.1:P, in its probe-ahead mode:
        every `every`-th visible change, probes each `cadence` s from before the commit):
        a ClusterIP Service's new clusterIP, a ready headless endpoint moving, a new
        Service, a ClusterIP Service's endpoint moving (invisible in DNS: not probed).
        Answers with the change count, the per-change latencies (commit -> the server's
        first answer showing it, ms; see watch_latency.Ahead), the bracket widths, the
        probes' round trips, missed changes, and this process's CPU seconds meanwhile.
    {"cmd": "quit"}

It ends by itself on "quit", on stdin EOF (run.py gone), on SIGTERM, or after
--max-seconds. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import copy
import json
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import yaml

from kubeapi import KubeAPIServer, namespace, write_kubeconfig
from watch_latency import Ahead, Change, measure

DOMAIN = "cluster.local"


def load_cluster(api: KubeAPIServer, path: str) -> dict:
    """Apply every object of a multi-document YAML file; returns counts."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    counts: dict[str, int] = {}
    namespaces: set[str] = set()
    with open(path) as f:
        docs = [d for d in yaml.load_all(f, Loader=loader) if isinstance(d, dict) and d.get("kind")]
    for d in docs:
        ns = (d.get("metadata") or {}).get("namespace")
        if ns:
            namespaces.add(ns)
    for ns in sorted(namespaces):
        api.apply(namespace(ns))
    for d in docs:
        api.apply(d)
        counts[d["kind"]] = counts.get(d["kind"], 0) + 1
    counts["Namespace"] = len(namespaces)
    return counts


def _ip(n: int, first: int) -> str:
    return f"10.{first + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


class ClusterChurn:
    """Changes to the loaded cluster, cycling four kinds; every address used is new."""

    def __init__(self, api: KubeAPIServer, seed: int) -> None:
        self.api = api
        rnd = random.Random(seed)
        svcs = api.objects["services"]
        self.clusterip = sorted(k for k, o in svcs.items()
                                if (o.get("spec") or {}).get("clusterIP") not in (None, "", "None"))
        headless = {k for k, o in svcs.items() if (o.get("spec") or {}).get("clusterIP") == "None"}
        self.headless_eps: list[tuple[tuple[str, str], int]] = []  # (slice key, endpoint index)
        self.cip_eps: list[tuple[tuple[str, str], int]] = []
        for key, sl in sorted(api.objects["endpointslices"].items()):
            if sl.get("addressType") != "IPv4":
                continue
            owner = (key[0], (sl["metadata"].get("labels") or {}).get("kubernetes.io/service-name", ""))
            eps = sl.get("endpoints") or []
            target = self.headless_eps if owner in headless else self.cip_eps
            # ready ones only: a not-ready endpoint is not published, so its move would not show
            target += [(key, j) for j, ep in enumerate(eps) if (ep.get("conditions") or {}).get("ready") is not False]
        self.namespaces = sorted({k[0] for k in svcs})
        for lst in (self.clusterip, self.headless_eps, self.cip_eps):
            rnd.shuffle(lst)
        self.n = 0  # changes made so far (all runs): every address and name is new
        self.tag = f"{seed % 1000:03d}"

    def __call__(self, i: int) -> Change:
        """The next change; its object is built from the API's current one when applied."""
        n = self.n
        self.n += 1
        kind = n % 4
        k = n // 4
        objects = self.api.objects
        if kind == 0 and self.clusterip:  # an existing ClusterIP Service gets a new clusterIP
            key, ip = self.clusterip[k % len(self.clusterip)], _ip(n, 200)

            def make(key=key, ip=ip) -> dict:
                obj = copy.deepcopy(objects["services"][key])
                ips = list(obj["spec"].get("clusterIPs") or [ip])
                ips[0] = ip
                obj["spec"]["clusterIP"], obj["spec"]["clusterIPs"] = ip, ips
                return obj
            return Change(make, f"{key[1]}.{key[0]}.svc.{DOMAIN}.", ip)
        if kind == 1 and self.headless_eps:  # a ready endpoint of a headless Service moves
            key, j = self.headless_eps[k % len(self.headless_eps)]
            ip = _ip(n, 220)
            sl = objects["endpointslices"][key]
            host = sl["endpoints"][j].get("hostname") or ip.replace(".", "-")
            svc = sl["metadata"]["labels"]["kubernetes.io/service-name"]

            def make(key=key, j=j, ip=ip) -> dict:
                obj = copy.deepcopy(objects["endpointslices"][key])
                obj["endpoints"][j]["addresses"] = [ip]
                return obj
            return Change(make, f"{host}.{svc}.{key[0]}.svc.{DOMAIN}.", ip)
        if kind == 3 and self.cip_eps:  # a ClusterIP Service's endpoint moves: not in DNS
            key, j = self.cip_eps[k % len(self.cip_eps)]
            ip = _ip(n, 240)

            def make(key=key, j=j, ip=ip) -> dict:
                obj = copy.deepcopy(objects["endpointslices"][key])
                obj["endpoints"][j]["addresses"] = [ip]
                return obj
            return Change(make)
        # a new Service
        ns = self.namespaces[k % len(self.namespaces)]
        name, ip = f"churn-{self.tag}-{n}", _ip(n, 200)
        obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
               "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}
        return Change(lambda: obj, f"{name}.{ns}.svc.{DOMAIN}.", ip)


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def serve(a: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    # the probe streams are threads (watch_latency.Ahead): enough of them, and short GIL turns
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=64))
    sys.setswitchinterval(0.0002)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    deadline = time.monotonic() + a.max_seconds
    async with KubeAPIServer(bookmark_interval=a.bookmark_interval) as api:
        t0 = time.monotonic()
        counts = load_cluster(api, a.cluster)
        write_kubeconfig(Path(a.kubeconfig), api.url)
        churn = ClusterChurn(api, a.seed)
        emit({"event": "ready", "url": api.url, "objects": counts, "load_s": round(time.monotonic() - t0, 3),
              "pid": os.getpid()})
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                emit({"event": "exit", "why": "max-seconds"})
                return 0
            line_task = asyncio.ensure_future(reader.readline())
            stop_task = asyncio.ensure_future(stop.wait())
            await asyncio.wait({line_task, stop_task}, timeout=min(left, 5.0),
                               return_when=asyncio.FIRST_COMPLETED)
            if not line_task.done():
                line_task.cancel()
                stop_task.cancel()
                continue
            stop_task.cancel()
            line = line_task.result()
            if not line:  # stdin closed: run.py is gone
                return 0
            try:
                cmd = json.loads(line)
            except ValueError:
                emit({"event": "error", "error": f"not JSON: {line[:80]!r}"})
                continue
            if cmd.get("cmd") == "quit":
                emit({"event": "bye"})
                return 0
            if cmd.get("cmd") == "churn":
                seconds = min(float(cmd.get("seconds", 10)), 600.0)
                rate = min(float(cmd.get("rate", 100)), 10_000.0)
                c0, t1 = cpu_s(), time.monotonic()
                ahead = Ahead(cadence=float(cmd.get("cadence", 0.00025)), every=int(cmd.get("every", 1)))
                res = await measure(api, int(cmd["port"]), rate, seconds, changes=churn, ahead=ahead)
                wall = time.monotonic() - t1
                emit({"event": "churn", "changes": res.changes, "probed": res.probed, "missed": res.missed,
                      "latencies_ms": [round(x * 1000, 4) for x in res.latencies],
                      "brackets_ms": [round(x * 1000, 4) for x in ahead.brackets],
                      "rtts_ms": [round(x * 1000, 4) for x in ahead.rtts], "probe_queries": ahead.queries,
                      "wall_s": round(wall, 3), "cpu_s": round(cpu_s() - c0, 3),
                      "objects": {r: len(v) for r, v in api.objects.items()}})
                continue
            emit({"event": "error", "error": f"unknown command {cmd!r}"})
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster", required=True, help="cluster.yaml of bench/gen_cluster.py")
    ap.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--bookmark-interval", type=float, default=60.0)
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long at most")
    return asyncio.run(serve(ap.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
