#!/usr/bin/env python3
"""Floods must not hurt real pods: a probe of real names during two floods, with verdicts.

    .venv/bin/python bench/flood.py [--gen bench/gen/s42-n5000] [--seconds 10]
        [--server-cpu 0] [--load-cpu 1] [--json OUT.json] [--modes serve,node-cache]

Run it inside a private network namespace (everything is on 127.0.0.1):

    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/flood.py'

Per mode (`serve`: `clusterdns serve --manifests`; `node-cache`: `clusterdns node-cache` in
front of a loopback nsd, or knotd, holding the generated zone, so misses are really
forwarded) one fresh server pinned to the server CPU, and on the load CPU:

1. the probe alone (baseline): 20 real A names of the zone, round robin at 200 QPS from its
   own socket, 1 s timeout each; loss, and p50/p99 from the send to the answer's kernel
   arrival time (SO_TIMESTAMPNS), so the probe's own scheduling does not count;
2. the mix rate: dnsperf self-paced on mix.txt (node-cache: after one warm pass);
3. random-subdomain flood + probe: dnsperf `-n 1` self-paced on a fresh file of never-repeated
   `<random>.<ns>.svc.cluster.local` names (NXDOMAIN counts as answered), written on the load
   CPU while the probe runs alone (--flood-names-per-s x --seconds of them);
4. junk flood + probe: one Python sender (this file, `--worker junk`) blasting queries whose
   QNAME is ~2,000 one-byte labels (a ~4 KB datagram, a name far over 255 bytes); the
   server's answers (FORMERR) are counted at the sender's socket, and the server's own
   counters (/metrics: requests, FORMERR responses, dropped packets) and the kernel's drops
   at the server's socket (/proc/net/udp) say what it processed and what never reached it.

Around each flood: the server process tree's RSS before and after, and the peak (VmHWM after
`clear_refs` 5, when allowed). Prints a markdown table, one verdict line per target (probe
loss <= 0.5%, probe p99 <= 20 ms, RSS growth <= 20 MB, flood answered >= the mix's rate), and
writes the same as JSON (--json). bench/run.py can run it as a subprocess with --json, as it
runs bench/scale.py. Every load loop is bounded in count and time; every process it starts
is stopped by its own PID, also on Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run as bench  # the benchmark's process, dnsperf and config helpers

MODES = ("serve", "node-cache")
FLOODS = ("none", "random-subdomain", "junk")  # "none": the probe alone (baseline)
DOMAIN = "cluster.local"
# the issue's targets
LOSS_MAX_PCT = 0.5
P99_MAX_MS = 20.0
RSS_GROWTH_MAX_MB = 20.0
RATE_MIN_RATIO = 1.0  # flood answered / mix rate
SO_TIMESTAMPNS = 35  # Linux; socket does not export it: kernel arrival time of each datagram
FIELDS = ("mode", "flood", "seconds", "flood_sent", "flood_sent_qps", "flood_answered",
          "flood_answered_qps", "flood_rcodes", "mix_qps", "probe_sent", "probe_lost",
          "probe_wrong", "probe_loss_pct", "probe_p50_ms", "probe_p99_ms", "probe_max_ms",
          "rss_before_mb", "rss_after_mb", "rss_peak_mb", "rss_growth_mb", "server_cpu_pct",
          "server_us_per_q", "other_load_server_cpu_pct", "server_requests", "server_formerr", "server_dropped", "server_processed_qps",
          "kernel_drops", "note")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the cluster

@dataclass
class Cluster:
    """What the generated cluster folder offers this benchmark."""

    gen: str
    meta: dict
    probes: list[tuple[str, str]]  # (fqdn, IPv4) of real A records
    namespaces: list[str]
    mix: str
    mix_unique: str


def load_cluster(gen: str, seed: int, services: int, n_probes: int, rundir: str) -> Cluster:
    """Read (or generate) the cluster and pick the probe names from its zone file."""
    meta_path = os.path.join(gen, "meta.json")
    if not os.path.exists(meta_path):
        import gen_cluster
        log(f"generating the cluster: seed {seed}, {services} services -> {gen}")
        gen_cluster.generate(gen, seed, services)
    with open(meta_path) as f:
        meta = json.load(f)
    meta["zone_file"] = os.path.join(gen, f"{DOMAIN}.zone")  # this folder's, wherever it moved
    addrs: dict[str, list[str]] = {}
    namespaces: set[str] = set()
    with open(meta["zone_file"]) as f:
        for ln in f:
            p = ln.split()
            # service owners are "<svc>.<ns>.svc" (endpoint names are deeper)
            if len(p) >= 4 and p[1:3] == ["IN", "A"] and p[0].count(".") == 2 and p[0].endswith(".svc"):
                addrs.setdefault(f"{p[0]}.{DOMAIN}", []).append(p[3])
                namespaces.add(p[0].split(".")[1])
    # ClusterIP services: one address (a headless one with many endpoints is truncated over UDP)
    service_a = [(n, a[0]) for n, a in addrs.items() if len(a) == 1]
    if len(service_a) < n_probes:
        raise SystemExit(f"{meta['zone_file']}: only {len(service_a)} service A records")
    probes = random.Random(seed).sample(sorted(service_a), n_probes)
    mix = os.path.join(gen, "mix.txt")
    mix_unique = os.path.join(gen, "mix_unique.txt")
    if not os.path.exists(mix_unique):  # run.py writes it; else our own copy
        mix_unique = os.path.join(rundir, "mix_unique.txt")
        with open(mix) as f, open(mix_unique, "w") as g:
            g.writelines(dict.fromkeys(f))
    return Cluster(gen, meta, probes, sorted(namespaces), mix, mix_unique)


def random_subdomain_file(path: str, namespaces: list[str], n: int, salt: int) -> None:
    """n never-repeated `<random>.<ns>.svc.cluster.local A` lines: the label is a bijection
    of the line number (odd multiplier, xor with a per-run salt), so no name repeats and no
    two runs share names."""
    mask, mult, k = (1 << 64) - 1, 0x9E3779B97F4A7C15, len(namespaces)
    with open(path, "w") as f:
        for start in range(0, n, 100_000):
            f.writelines(f"{((i * mult) & mask) ^ salt:016x}.{namespaces[i % k]}.svc.{DOMAIN} A\n"
                         for i in range(start, min(n, start + 100_000)))


# --------------------------------------------------------------------------- the workers

def junk_query(qid: int, labels: int) -> bytes:
    """A query for a name of `labels` one-byte labels: invalid (over 255 bytes)."""
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x01x" * labels + b"\x00\x00\x01\x00\x01"


def junk_worker(port: int, seconds: float, labels: int, max_count: int) -> dict:
    """Send junk as fast as this one process can for `seconds` (at most max_count), reading
    the answers from the same socket in between; counts them by rcode."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    pkt = bytearray(junk_query(0, labels))
    sent = blocked = 0
    rcodes: dict[int, int] = {}
    t0 = time.monotonic()
    deadline = t0 + seconds
    send, recv = s.send, s.recv
    while sent < max_count:
        if time.monotonic() >= deadline:
            break
        for _ in range(32):
            pkt[0], pkt[1] = (sent >> 8) & 0xFF, sent & 0xFF
            try:
                send(pkt)
                sent += 1
            except BlockingIOError:
                blocked += 1
                break
        for _ in range(64):
            try:
                r = recv(65535)
            except BlockingIOError:
                break
            if len(r) >= 4:
                rcodes[r[3] & 0x0F] = rcodes.get(r[3] & 0x0F, 0) + 1
    elapsed = time.monotonic() - t0
    end = time.monotonic() + 0.5  # late answers, bounded
    while time.monotonic() < end:
        if not select.select([s], [], [], 0.1)[0]:
            continue
        try:
            r = recv(65535)
        except BlockingIOError:
            continue
        if len(r) >= 4:
            rcodes[r[3] & 0x0F] = rcodes.get(r[3] & 0x0F, 0) + 1
    s.close()
    return {"sent": sent, "seconds": elapsed, "send_blocked": blocked, "bytes": len(pkt),
            "answers": sum(rcodes.values()), "formerr": rcodes.get(1, 0),
            "rcodes": {str(k): v for k, v in sorted(rcodes.items())}}


def probe_worker(port: int, seconds: float, qps: float, names: list[tuple[str, str]],
                 timeout: float = 1.0) -> dict:
    """Real names at a fixed rate from one socket: lost (no answer within `timeout`), wrong
    (not NOERROR with the name's address), latency = kernel arrival time of the answer minus
    the time just before its send."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    want = [b"\x00\x04" + socket.inet_aton(a) for _, a in names]
    queries = [bench.dns_query(n) for n, _ in names]
    total = max(1, int(seconds * qps))
    pending: dict[int, tuple[float, int, int]] = {}  # qid -> (monotonic sent, wall ns sent, name)
    lat: list[float] = []
    lost = wrong = 0
    t0 = time.monotonic()
    hard_end = t0 + seconds + timeout + 1.0
    i = 0
    cmsg_space = socket.CMSG_SPACE(16)
    while True:
        now = time.monotonic()
        if now > hard_end:
            lost += len(pending)
            break
        if i < total and now >= t0 + i / qps:
            qid, k = i & 0xFFFF, i % len(queries)
            q = struct.pack(">H", qid) + queries[k][2:]
            pending[qid] = (now, time.time_ns(), k)
            try:
                s.send(q)
            except OSError:
                pass  # stays pending: counted lost
            i += 1
            continue
        for qid in [q for q, v in pending.items() if now - v[0] > timeout]:
            del pending[qid]
            lost += 1
        if i >= total and not pending:
            break
        nxt = t0 + i / qps if i < total else now + 0.05
        wait = max(0.0, min(nxt - now, 0.05))
        if not select.select([s], [], [], wait)[0]:
            continue
        while True:
            try:
                data, anc, _, _ = s.recvmsg(4096, cmsg_space)
            except BlockingIOError:
                break
            if len(data) < 12:
                continue
            entry = pending.pop(struct.unpack(">H", data[:2])[0], None)
            if entry is None:
                continue  # expired (counted lost) or not ours
            arrival = time.time_ns()
            for level, kind, val in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(val) >= 16:
                    sec, nsec = struct.unpack("qq", val[:16])
                    arrival = sec * 1_000_000_000 + nsec
            ms = (arrival - entry[1]) / 1e6
            if ms > timeout * 1000:
                lost += 1
            elif data[3] & 0x0F or want[entry[2]] not in data[12:]:
                wrong += 1
            else:
                lat.append(ms)
    s.close()
    lat.sort()
    return {"sent": i, "answered": len(lat), "lost": lost, "wrong": wrong,
            "loss_pct": 100.0 * (lost + wrong) / i if i else 0.0,
            "p50_ms": bench.percentile(lat, 50) if lat else None,
            "p99_ms": bench.percentile(lat, 99) if lat else None,
            "max_ms": lat[-1] if lat else None}


# --------------------------------------------------------------------------- measuring

def tree_rss_mb(pid: int, key: str = "VmRSS") -> float:
    """Sum of `key` (VmRSS, or VmHWM: the peak) over the process tree, MB."""
    tot = 0
    for p in bench.tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for ln in f:
                    if ln.startswith(key + ":"):
                        tot += int(ln.split()[1])
        except OSError:
            pass
    return tot / 1024.0


def reset_peak(pid: int) -> bool:
    """Reset every process's VmHWM to its current RSS (clear_refs 5); False if not allowed."""
    ok = True
    for p in bench.tree(pid):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped at the UDP sockets bound to 127.0.0.1:port (receive
    queue full): what the server never saw."""
    local = f"0100007F:{port:04X}"
    tot = 0
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for ln in f:
                p = ln.split()
                if len(p) >= 13 and p[1] == local:
                    tot += int(p[-1])
    except OSError:
        pass
    return tot


def scrape(port: int | None) -> dict[str, float]:
    """The server's counters this benchmark reads: requests, FORMERR answers, dropped packets
    (sums over labels); {} when /metrics does not answer."""
    if port is None:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {"requests": 0.0, "formerr": 0.0, "dropped": 0.0}
    for ln in text.splitlines():
        if ln.startswith("#") or not ln.strip():
            continue
        name, _, rest = ln.partition("{")
        try:
            value = float(ln.rsplit(None, 1)[1])
        except (IndexError, ValueError):
            continue
        if name == "coredns_dns_requests_total":
            out["requests"] += value
        elif name == "coredns_dns_responses_total" and 'rcode="FORMERR"' in rest:
            out["formerr"] += value
        elif name == "clusterdns_dropped_packets_total":
            out["dropped"] += value
    return out


# --------------------------------------------------------------------------- processes

@dataclass
class Run:
    """One invocation: arguments, scratch folder and every process it started."""

    a: argparse.Namespace
    rundir: str
    cluster: Cluster | None = None
    procs: list[bench.Proc] = field(default_factory=list)
    seq: int = 0

    def folder(self, name: str) -> str:
        """A new scratch folder for one process (its log, its config)."""
        self.seq += 1
        d = os.path.join(self.rundir, f"{self.seq:02d}-{name}")
        os.makedirs(d, exist_ok=True)
        return d

    def spawn(self, name: str, cmd: list[str], cpu: int | None, d: str | None = None) -> bench.Proc:
        p = bench.Proc(name, cmd, cpu, d or self.folder(name))
        self.procs.append(p)
        return p

    def finish(self, p: bench.Proc) -> None:
        """Stop (if still running) and forget one process."""
        p.stop()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()


@dataclass
class Server:
    mode: str
    port: int
    metrics_port: int | None
    proc: bench.Proc
    upstream: bench.Proc | None = None
    upstream_label: str = ""


def clusterdns_cmd(a: argparse.Namespace) -> list[str]:
    if a.clusterdns:
        return a.clusterdns.split()
    exe = os.path.join(os.path.dirname(sys.executable), "clusterdns")
    return [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "clusterdns"]


def wait_answer(proc: bench.Proc, port: int, c: Cluster, timeout: float) -> bool:
    name, addr = c.probes[0]
    return bench.wait_ready(proc, port, name, timeout, expect=socket.inet_aton(addr)) is not None


def start_server(r: Run, mode: str) -> Server | None:
    """A fresh server of this mode (node-cache: with its loopback upstream), answering."""
    a, c = r.a, r.cluster
    assert c is not None
    port, mport = bench.free_port(), bench.free_port()
    upstream, up_label = None, ""
    if mode == "serve":
        cmd = clusterdns_cmd(a) + [
            "serve", "--manifests", os.path.join(c.gen, "cluster.yaml"), "--listen", f"127.0.0.1:{port}",
            "--ttl", "30", "--health", f"127.0.0.1:{bench.free_port()}",
            "--ready", f"127.0.0.1:{bench.free_port()}", "--metrics", f"127.0.0.1:{mport}",
            "--lameduck", "0", "--shutdown-timeout", "1", "--log-level", "warning"]
    else:
        up_key = "nsd" if bench.have("nsd") else "knotd" if bench.have("knotd") else ""
        if not up_key:
            log("!! node-cache: neither nsd nor knotd is installed for the upstream")
            return None
        up_port = bench.free_port()
        d = r.folder(f"upstream-{up_key}")
        ctx = argparse.Namespace(meta=c.meta)
        if up_key == "nsd":
            up_cmd = ["nsd", "-d", "-c", bench.render(ctx, "nsd.conf", d, up_port)]
        else:
            os.makedirs(os.path.join(d, "knot-db"), exist_ok=True)
            up_cmd = ["knotd", "-c", bench.render(ctx, "knot.conf", d, up_port)]
        upstream = r.spawn(f"upstream-{up_key}", up_cmd, a.load_cpu, d)
        if not wait_answer(upstream, up_port, c, a.ready_timeout):
            log(f"!! the upstream {up_key} did not answer; log:\n{upstream.log_tail()}")
            return None
        up_label = f"{up_key} on the load CPU"
        cmd = clusterdns_cmd(a) + [
            "node-cache", "--listen", f"127.0.0.1:{port}", "--cluster-dns", f"127.0.0.1:{up_port}",
            "--upstream", f"127.0.0.1:{up_port}", "--no-loop-detect",
            "--health", f"127.0.0.1:{bench.free_port()}", "--metrics", f"127.0.0.1:{mport}",
            "--lameduck", "0", "--shutdown-timeout", "1", "--log-level", "warning"]
    proc = r.spawn(mode, cmd, a.server_cpu)
    if not wait_answer(proc, port, c, a.ready_timeout):
        log(f"!! {mode} did not answer within {a.ready_timeout} s; log:\n{proc.log_tail()}")
        return None
    log(f"   {mode} on 127.0.0.1:{port} pid {proc.pid} (cpus {bench.affinity(proc.pid)})"
        + (f", upstream {up_label}" if up_label else ""))
    return Server(mode, port, mport, proc, upstream, up_label)


def other_load(cpu: int | None, k0: dict, k1: dict, server_ticks: int) -> float | None:
    """% of the server's core used by other processes (user+system time not charged to the
    server) between two bench.core_times() readings; None when not pinned."""
    if cpu is None or cpu not in k0 or cpu not in k1 or k1[cpu][1] <= k0[cpu][1]:
        return None
    return max(0.0, 100.0 * ((k1[cpu][2] - k0[cpu][2]) - server_ticks) / (k1[cpu][1] - k0[cpu][1]))


def wait_proc(p: bench.Proc, timeout: float) -> int:
    """Wait for a worker or dnsperf (bounded); kill it by PID when it overruns."""
    try:
        return p.p.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"!! {p.name} overran {timeout:.0f} s: stopping it")
        p.stop()
        return 124


def output(p: bench.Proc) -> str:
    with open(p.log_path) as f:
        return f.read()


def last_json(p: bench.Proc) -> dict | None:
    for ln in reversed(output(p).splitlines()):
        if ln.startswith("{"):
            try:
                return json.loads(ln)
            except ValueError:
                return None
    return None


def dnsperf(r: Run, srv: Server, datafile: str, seconds: float, once: bool = False) -> dict:
    """dnsperf self-paced (-c 10, 100 outstanding) on the load CPU; once: one pass (-n 1)."""
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(srv.port), "-d", datafile, "-c", "10",
           "-l", f"{seconds:g}"] + (["-n", "1"] if once else [])
    p = r.spawn("dnsperf", cmd, r.a.load_cpu)
    rc = wait_proc(p, seconds + 30)
    d = bench.parse_dnsperf(output(p))
    d["rc"] = rc
    r.finish(p)
    return d


def start_names(r: Run, mode: str) -> tuple[bench.Proc, str, int]:
    """Start writing this run's never-repeated names (a worker on the load CPU): enough for
    --flood-names-per-s over --seconds; a fresh salt every run."""
    c = r.cluster
    assert c is not None
    n = max(1000, int(r.a.flood_names_per_s * r.a.seconds))
    path = os.path.join(r.rundir, f"random-{mode}.txt")
    ns_file = os.path.join(r.rundir, "namespaces.json")
    with open(ns_file, "w") as f:
        json.dump(c.namespaces, f)
    salt = random.SystemRandom().getrandbits(64)
    return worker(r, "names", [path, str(n), str(salt), ns_file]), path, n


def names_file_ready(r: Run, names: tuple[bench.Proc, str, int]) -> str:
    """Wait (bounded) for the names worker; the file's path."""
    p, path, n = names
    t = time.monotonic()
    rc = wait_proc(p, 300)
    r.finish(p)
    if rc != 0:
        raise RuntimeError(f"writing {path} failed (rc {rc}): {output(p)[-500:]}")
    log(f"   {n:,} never-repeated names ready (waited {time.monotonic() - t:.1f} s)")
    return path


def worker(r: Run, kind: str, args: list[str]) -> bench.Proc:
    return r.spawn(f"{kind}-worker", [sys.executable, os.path.abspath(__file__), "--worker", kind] + args,
                   r.a.load_cpu)


def rcode_count(rcodes: str, name: str) -> int:
    m = re.search(rf"\b{name} (\d+)", rcodes)
    return int(m.group(1)) if m else 0


# --------------------------------------------------------------------------- one mode

def row(mode: str, flood: str, **kv: object) -> dict:
    out = {k: None for k in FIELDS}
    out.update(mode=mode, flood=flood, **kv)
    return out


def probe_fields(pr: dict | None) -> dict:
    if not pr:
        return {"note": "the probe reported nothing"}
    return {"probe_sent": pr["sent"], "probe_lost": pr["lost"], "probe_wrong": pr["wrong"],
            "probe_loss_pct": pr["loss_pct"], "probe_p50_ms": pr["p50_ms"], "probe_p99_ms": pr["p99_ms"],
            "probe_max_ms": pr["max_ms"]}


def run_mode(r: Run, mode: str) -> list[dict]:
    """Baseline probe, mix rate, then each flood with the probe alongside, on a fresh server."""
    a, c = r.a, r.cluster
    assert c is not None
    secs = a.seconds
    names_file = os.path.join(r.rundir, "probe-names.json")
    with open(names_file, "w") as f:
        json.dump(c.probes, f)
    srv = start_server(r, mode)
    if srv is None:
        return [row(mode, fl, note=f"{mode} did not start") for fl in FLOODS]
    try:
        probe_args = [str(srv.port), f"{secs:g}", f"{a.probe_qps:g}", names_file]
        if mode == "node-cache":
            warm = dnsperf(r, srv, c.mix_unique, 30, once=True)
            log(f"   warm pass: {warm['completed']:,} of {warm['sent']:,} answered")
        # the never-repeated names, written on the load CPU while the probe runs alone
        names = start_names(r, srv.mode)
        # 1. the probe alone
        p = worker(r, "probe", probe_args)
        wait_proc(p, secs + 10)
        base = last_json(p)
        r.finish(p)
        rows = [row(mode, "none", seconds=secs, rss_before_mb=tree_rss_mb(srv.proc.pid), **probe_fields(base))]
        log(f"   {mode} baseline probe: {fmt_probe(base)}")
        # 2. the mix rate
        cpu0, k0, t0 = bench.cpu_ticks(srv.proc.pid), bench.core_times(), time.monotonic()
        mix = dnsperf(r, srv, c.mix, secs)
        cpu1, k1 = bench.cpu_ticks(srv.proc.pid), bench.core_times()
        cpu_s, wall = (cpu1 - cpu0) / bench.CLK, time.monotonic() - t0
        mix_qps = mix["qps"]
        # the row of the probe alone also carries the mix run's figures (rate, server CPU)
        rows[0].update(mix_qps=mix_qps, server_cpu_pct=100.0 * cpu_s / wall,
                       server_us_per_q=cpu_s * 1e6 / mix["completed"] if mix["completed"] else None,
                       other_load_server_cpu_pct=other_load(a.server_cpu, k0, k1, cpu1 - cpu0),
                       note=f"mix: {mix['rcodes']}, loss {mix['loss_pct']:.2f}%")
        log(f"   {mode} mix: {mix_qps:,.0f} QPS, loss {mix['loss_pct']:.2f}%, {mix['rcodes']}")
        # 3. and 4. the floods
        for flood in FLOODS[1:]:
            rows.append(flood_run(r, srv, flood, mix_qps, probe_args, names))
        if not srv.proc.alive():
            rows[-1]["note"] = (rows[-1]["note"] or "") + f" {mode} exited (rc {srv.proc.p.returncode})"
        return rows
    finally:
        for p in (srv.proc, srv.upstream):
            if p is not None:
                r.finish(p)


def flood_run(r: Run, srv: Server, flood: str, mix_qps: float, probe_args: list[str],
              names: tuple[bench.Proc, str, int] | None = None) -> dict:
    """One flood for --seconds with the probe alongside; RSS, CPU and counters around it."""
    a, c = r.a, r.cluster
    assert c is not None
    secs, pid = a.seconds, srv.proc.pid
    path = ""
    if flood == "random-subdomain":
        assert names is not None
        path = names_file_ready(r, names)
    rss0 = tree_rss_mb(pid)
    peak_ok = reset_peak(pid)
    m0, kd0, cpu0, k0 = scrape(srv.metrics_port), kernel_drops(srv.port), bench.cpu_ticks(pid), bench.core_times()
    t0 = time.monotonic()
    probe = worker(r, "probe", probe_args)
    kv: dict = {}
    if flood == "random-subdomain":
        d = dnsperf(r, srv, path, secs, once=True)
        good = rcode_count(d["rcodes"], "NOERROR") + rcode_count(d["rcodes"], "NXDOMAIN")
        rt = d["runtime_s"] or secs
        kv = {"flood_sent": d["sent"], "flood_sent_qps": d["sent"] / rt, "flood_answered": good,
              "flood_answered_qps": good / rt, "flood_rcodes": d["rcodes"], "seconds": rt}
        if rt < 0.9 * secs:
            kv["note"] = f"the name file ran out after {rt:.1f} s (--flood-names-per-s)"
        os.unlink(path)
    else:
        j = worker(r, "junk", [str(srv.port), f"{secs:g}", str(a.junk_labels), str(a.junk_max)])
        wait_proc(j, secs + 10)
        res = last_json(j) or {}
        r.finish(j)
        rt = res.get("seconds") or secs
        kv = {"flood_sent": res.get("sent"), "flood_sent_qps": (res.get("sent") or 0) / rt,
              "flood_answered": res.get("formerr"), "flood_answered_qps": (res.get("formerr") or 0) / rt,
              "flood_rcodes": " ".join(f"rcode{k} {v}" for k, v in (res.get("rcodes") or {}).items()),
              "seconds": rt, "note": f"{res.get('bytes', '?')}-byte datagrams"}
    wait_proc(probe, secs + 10)
    pr = last_json(probe)
    r.finish(probe)
    wall = time.monotonic() - t0
    cpu1, k1 = bench.cpu_ticks(pid), bench.core_times()
    m1, kd1 = scrape(srv.metrics_port), kernel_drops(srv.port)
    rss1 = tree_rss_mb(pid)
    peak = tree_rss_mb(pid, "VmHWM") if peak_ok else None
    kv.update(probe_fields(pr))
    if m0 and m1:
        kv["server_requests"] = int(m1["requests"] - m0["requests"])
        kv["server_formerr"] = int(m1["formerr"] - m0["formerr"])
        kv["server_dropped"] = int(m1["dropped"] - m0["dropped"])
        if flood == "junk":
            # processed = answered FORMERR + dropped on purpose, by the server's own counters
            kv["server_processed_qps"] = (kv["server_formerr"] + kv["server_dropped"]) / kv["seconds"]
    growth = max(rss1, peak or 0.0) - rss0
    # CPU per query the server handled (junk: processed): steadier than rates on a shared machine
    handled = kv.get("flood_answered") or 0
    if flood == "junk" and kv.get("server_formerr") is not None:
        handled = kv["server_formerr"] + kv["server_dropped"]
    other = other_load(a.server_cpu, k0, k1, cpu1 - cpu0)
    out = row(srv.mode, flood, mix_qps=mix_qps, rss_before_mb=rss0, rss_after_mb=rss1, rss_peak_mb=peak,
              rss_growth_mb=growth, server_cpu_pct=100.0 * (cpu1 - cpu0) / bench.CLK / wall,
              server_us_per_q=(cpu1 - cpu0) / bench.CLK * 1e6 / handled if handled else None,
              other_load_server_cpu_pct=other, kernel_drops=kd1 - kd0, **kv)
    log(f"   {srv.mode} {flood}: sent {out['flood_sent_qps'] or 0:,.0f}/s, answered "
        f"{out['flood_answered_qps'] or 0:,.0f}/s; probe {fmt_probe(pr)}; RSS {rss0:.1f} -> {rss1:.1f} MB"
        f" (peak {fmt(peak, '.1f')}); kernel drops {kd1 - kd0:,}")
    return out


# --------------------------------------------------------------------------- report

def fmt(v: object, spec: str = ",.0f") -> str:
    return "—" if v is None else format(v, spec)


def fmt_probe(pr: dict | None) -> str:
    if not pr:
        return "no result"
    return (f"{pr['sent']} sent, loss {pr['loss_pct']:.2f}% ({pr['lost']} lost, {pr['wrong']} wrong), "
            f"p50 {fmt(pr['p50_ms'], '.2f')} ms, p99 {fmt(pr['p99_ms'], '.2f')} ms")


def verdict(rw: dict, target: str, value: float | None, limit: float, ok: bool, text: str) -> dict:
    """One target of one (mode, flood) row; a missing figure is not met."""
    met = value is not None and ok
    return {"mode": rw["mode"], "flood": rw["flood"], "target": target, "value": value, "limit": limit,
            "met": met, "text": f"{rw['mode']}, {rw['flood']} flood: {text}: {'met' if met else 'not met'}"}


def verdicts(rows: list[dict]) -> list[dict]:
    """One verdict per (mode, flood, target)."""
    out = []
    for rw in rows:
        if rw["flood"] == "none":
            continue
        loss = rw["probe_loss_pct"]
        out.append(verdict(
            rw, "probe_loss_pct", loss, LOSS_MAX_PCT, loss is not None and loss <= LOSS_MAX_PCT,
            f"probe loss {fmt(loss, '.2f')}% ({fmt(rw['probe_lost'])} lost + {fmt(rw['probe_wrong'])} wrong "
            f"of {fmt(rw['probe_sent'])}; target ≤ {LOSS_MAX_PCT}%)"))
        p99 = rw["probe_p99_ms"]
        out.append(verdict(
            rw, "probe_p99_ms", p99, P99_MAX_MS, p99 is not None and p99 <= P99_MAX_MS,
            f"probe p99 {fmt(p99, '.2f')} ms (p50 {fmt(rw['probe_p50_ms'], '.2f')}; target ≤ {P99_MAX_MS:g} ms)"))
        g = rw["rss_growth_mb"]
        out.append(verdict(
            rw, "rss_growth_mb", g, RSS_GROWTH_MAX_MB, g is not None and g <= RSS_GROWTH_MAX_MB,
            f"RSS growth {fmt(g, '+.1f')} MB ({fmt(rw['rss_before_mb'], '.1f')} before, "
            f"{fmt(rw['rss_after_mb'], '.1f')} after, peak {fmt(rw['rss_peak_mb'], '.1f')}; "
            f"target ≤ {RSS_GROWTH_MAX_MB:g} MB)"))
        junk = rw["flood"] == "junk"
        rate = rw["server_processed_qps"] if junk else rw["flood_answered_qps"]
        if junk and rate is None:  # no /metrics: the answers seen at the sender's socket
            rate = rw["flood_answered_qps"]
        mix = rw["mix_qps"]
        ratio = rate / mix if rate is not None and mix else None
        what = "processed by the server (FORMERR + dropped, its counters)" if junk else "answered NOERROR/NXDOMAIN"
        out.append(verdict(
            rw, "flood_rate_ratio", ratio, RATE_MIN_RATIO, ratio is not None and ratio >= RATE_MIN_RATIO,
            f"flood {what} {fmt(rate)}/s vs mix {fmt(mix)}/s = {fmt(ratio, '.2f')}x "
            f"(sent {fmt(rw['flood_sent_qps'])}/s; target ≥ {RATE_MIN_RATIO:g}x)"))
    return out


def table(rows: list[dict], vs: list[dict], info: dict) -> str:
    head = ("| mode | flood | flood sent/s | flood answered/s | mix QPS | probe loss % (lost+wrong/sent) "
            "| probe p50 / p99 / max ms | RSS MB before → after (peak) | server CPU % (others on its CPU) "
            "| server CPU µs/q | server FORMERR / dropped | kernel drops | note |")
    lines = [head, "|" + "---|" * 13]
    for rw in rows:
        lines.append(
            f"| {rw['mode']} | {'probe alone' if rw['flood'] == 'none' else rw['flood']} "
            f"| {fmt(rw['flood_sent_qps'])} | {fmt(rw['flood_answered_qps'])} | {fmt(rw['mix_qps'])} "
            f"| {fmt(rw['probe_loss_pct'], '.2f')} ({fmt(rw['probe_lost'])}+{fmt(rw['probe_wrong'])}/"
            f"{fmt(rw['probe_sent'])}) | {fmt(rw['probe_p50_ms'], '.2f')} / {fmt(rw['probe_p99_ms'], '.2f')} / "
            f"{fmt(rw['probe_max_ms'], '.2f')} | {fmt(rw['rss_before_mb'], '.1f')} → {fmt(rw['rss_after_mb'], '.1f')}"
            f" ({fmt(rw['rss_peak_mb'], '.1f')}) | {fmt(rw['server_cpu_pct'])} ({fmt(rw['other_load_server_cpu_pct'])}) "
            f"| {fmt(rw['server_us_per_q'], '.1f')} | {fmt(rw['server_formerr'])} / {fmt(rw['server_dropped'])} | {fmt(rw['kernel_drops'])} "
            f"| {rw['note'] or ''} |")
    lines += ["", ("Columns: a *probe alone* row also carries the mix run (dnsperf self-paced on mix.txt, "
              "-c 10): its QPS, server CPU % and µs/q. *flood answered/s*: random-subdomain, NOERROR + "
              "NXDOMAIN counted by dnsperf; junk, FORMERR answers seen at the sender's socket. *server "
              "FORMERR / dropped*: the server's own /metrics counters over the flood. *server CPU µs/q*: "
              "its CPU time ÷ queries it handled (junk: FORMERR + dropped), the steadier figure on a "
              "shared machine. *kernel drops*: datagrams dropped at the server's UDP socket, its receive "
              "queue full (/proc/net/udp): queries the server never saw. Probe latency is over answered "
              "queries; lost = no answer within 1 s.")]
    lines += ["", ("Targets (issue): probe loss ≤ 0.5%, probe p99 ≤ 20 ms, server RSS growth ≤ 20 MB "
                   "(after or peak, whichever is higher, minus before), flood answered ≥ the mix's rate:"), ""]
    lines += [f"- {v['text']}" for v in vs]
    met = sum(v["met"] for v in vs)
    lines += ["", f"{met} of {len(vs)} targets met. " + info["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gen", default=os.path.join(HERE, "gen", "s42-n5000"),
                    help="generated cluster folder (bench/gen_cluster.py; generated when missing)")
    ap.add_argument("--seed", type=int, default=42, help="when generating, and for the probe names")
    ap.add_argument("--services", type=int, default=5000, help="when generating")
    ap.add_argument("--seconds", type=float, default=10.0, help="per probe, mix and flood run")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--json", help="write rows and verdicts here")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {','.join(MODES)}")
    ap.add_argument("--probe-qps", type=float, default=200.0)
    ap.add_argument("--probe-names", type=int, default=20)
    ap.add_argument("--junk-labels", type=int, default=2000, help="one-byte labels per junk QNAME")
    ap.add_argument("--junk-max", type=int, default=20_000_000, help="junk datagrams per run, at most")
    ap.add_argument("--flood-names-per-s", type=int, default=200_000,
                    help="never-repeated names written per second of --seconds (the flood's file; "
                         "dnsperf stops early if the server is faster, and the row says so)")
    ap.add_argument("--ready-timeout", type=float, default=60.0)
    ap.add_argument("--clusterdns", help="command that runs clusterdns (default: the venv's)")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return a
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in a.modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r} (known: {', '.join(MODES)})")
    if not 1 <= a.junk_labels <= 2040:
        ap.error("--junk-labels must be 1..2040 (the datagram must fit the server's 4 KB read)")
    cpus = os.sched_getaffinity(0)
    if a.server_cpu not in cpus or a.load_cpu not in cpus or a.server_cpu == a.load_cpu \
            or not shutil.which("taskset"):
        log(f"CPUs {sorted(cpus)}: cannot pin the server to {a.server_cpu} and the load to {a.load_cpu}; not pinning")
        a.server_cpu = a.load_cpu = None
    return a


def run_worker(args: list[str]) -> int:
    kind, rest = args[0], args[1:]
    if kind == "probe":
        port, secs, qps, names_file = rest
        with open(names_file) as f:
            names = [tuple(x) for x in json.load(f)]
        res = probe_worker(int(port), float(secs), float(qps), names)
    elif kind == "names":
        path, n, salt, ns_file = rest
        with open(ns_file) as f:
            random_subdomain_file(path, json.load(f), int(n), int(salt))
        res = {"path": path, "names": int(n)}
    elif kind == "junk":
        port, secs, labels, max_count = rest
        res = junk_worker(int(port), float(secs), int(labels), int(max_count))
    else:
        raise SystemExit(f"unknown worker {kind}")
    print(json.dumps(res), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.worker:
        return run_worker(a.worker)
    if not shutil.which("dnsperf"):
        log("dnsperf is not installed (Debian package dnsperf)")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds into the finally below
    r = Run(a, tempfile.mkdtemp(prefix="clusterdns-flood."))
    t_start = time.monotonic()
    try:
        r.cluster = load_cluster(a.gen, a.seed, a.services, a.probe_names, r.rundir)
        rows: list[dict] = []
        for mode in a.modes:
            log(f"== {mode}")
            rows += run_mode(r, mode)
        vs = verdicts(rows)
        machine = bench.machine()
        notes = (f"Probe: {a.probe_names} real A names at {a.probe_qps:g} QPS, 1 s timeout, latency to the "
                 f"answer's kernel arrival; {a.seconds:g} s per run; server on CPU {a.server_cpu}, load "
                 f"(dnsperf -c 10, the probe, the junk sender, node-cache's upstream) on CPU {a.load_cpu}. "
                 f"Machine: {machine['nproc']} CPUs, {machine['cpu_model']}, shared with other work: "
                 f"figures are indicative. Total {time.monotonic() - t_start:.0f} s.")
        info = {"notes": notes}
        text = table(rows, vs, info)
        print(text, flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"args": {k: v for k, v in vars(a).items() if k != "worker"}, "machine": machine,
                           "gen": a.gen, "probes": r.cluster.probes, "rows": rows, "verdicts": vs,
                           "targets": {"probe_loss_pct": LOSS_MAX_PCT, "probe_p99_ms": P99_MAX_MS,
                                       "rss_growth_mb": RSS_GROWTH_MAX_MB, "flood_rate_ratio": RATE_MIN_RATIO},
                           "table": text}, f, indent=1)
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        r.stop_all()
        shutil.rmtree(r.rundir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
