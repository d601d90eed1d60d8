#!/usr/bin/env python3
"""clusterdns side-by-side benchmark: one command, one table.

    .venv/bin/python bench/run.py            full run (~10 min): 3 rounds, 10 s + 5 s per server
    .venv/bin/python bench/run.py --quick    quick run (~1 min): 1 round, 2 s + 2 s per server

What it does (details in bench/README.md):

1. generates a seeded synthetic cluster (bench/gen_cluster.py; default 5,000 services with
   headless, dual-stack, ExternalName and named-port services) as Kubernetes YAML for
   clusterdns, the same records as a zone file for knotd/nsd, and dnsperf query files;
2. measures start-up of `clusterdns serve --manifests` (process start -> first correct answer);
3. starts clusterdns and the installed peers, each pinned to the server CPU and listening on
   127.0.0.1 only: `clusterdns serve`, knotd, nsd (authoritative, the zone file);
   `clusterdns node-cache` (its default flags unless --node-cache-args), dnsmasq, unbound and
   `clusterdns serve --upstream` (asked names of an external zone) as caching forwarders to an
   nsd upstream pinned to the load CPU; checks a sample of answers against knotd's; the miss
   case restarts the forwarders each round and ends with a cache-full run (see run_miss);
4. runs dnsperf (pinned to the load CPU, `-l` plus a hard timeout), alternating the servers
   (A B C A B C ...): self-paced for max QPS, then at a fixed rate (-Q, default 10k) for
   average and p99 latency (p99 from dnsperf -v per-query latencies);
5. prints one markdown table (also written to OUT/table.md), the start-up time and the
   targets of issue 5; raw dnsperf output and one JSON line per run go to OUT/.

Every process it starts listens on 127.0.0.1 and is stopped by its own PID (children it
forked too). Knobs: flags below, or env BENCH_DURATION, BENCH_LAT_DURATION, BENCH_REPEATS,
BENCH_SERVICES, BENCH_SEED, BENCH_PEERS, BENCH_CASES, BENCH_LAT_QPS, BENCH_OUT.
Needs: Python 3.11 with PyYAML (the project venv), dnsperf; optional knot, nsd, dnsmasq-base,
unbound (installed with apt-get when missing, unless --no-install).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

CLK = os.sysconf("SC_CLK_TCK")
DOMAIN = "cluster.local"

AUTH_PEERS = ("knotd", "nsd")
# serve-fwd: `clusterdns serve --upstream`, forwarding names outside the cluster domain
FWD_PEERS = ("node-cache", "dnsmasq", "unbound", "serve-fwd")
ALL_PEERS = AUTH_PEERS + FWD_PEERS
ALL_CASES = ("startup", "udp", "tcp", "hit", "miss", "cold", "fresh", "churn", "memory", "flood", "soak")
# the cases run by their own scripts, which start their own servers (see run_script_case)
SCRIPT_CASES = {"flood": "flood.py", "soak": "soak.py"}
# the cases that start their own clusterdns and knotd (see run_cold, run_fresh, run_churn)
NEW_CASES = ("cold", "fresh", "churn")
# Debian package for each tool
PACKAGES = {"dnsperf": "dnsperf", "knotd": "knot", "nsd": "nsd", "dnsmasq": "dnsmasq-base",
            "unbound": "unbound"}


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes

def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rfind(")") + 2:].split()


def tree(root: int) -> list[int]:
    """root and all its descendants (from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            fl = _stat_fields(int(d))
            if fl:
                kids.setdefault(int(fl[1]), []).append(int(d))
    out, i = [root], 0
    while i < len(out):
        out += kids.get(out[i], [])
        i += 1
    return out


def cpu_ticks(root: int) -> int:
    tot = 0
    for p in tree(root):
        fl = _stat_fields(p)
        if fl:
            tot += int(fl[11]) + int(fl[12])  # utime + stime, all threads
    return tot


def rss_mb(root: int) -> float:
    tot = 0
    for p in tree(root):
        try:
            with open(f"/proc/{p}/status") as f:
                for ln in f:
                    if ln.startswith("VmRSS:"):
                        tot += int(ln.split()[1])
        except OSError:
            pass
    return tot / 1024.0


def core_times() -> dict[int, tuple[int, int, int]]:
    """{cpu: (busy ticks, total ticks, user+nice+system ticks)} from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for ln in f:
            if ln.startswith("cpu") and ln[3].isdigit():
                p = ln.split()
                v = list(map(int, p[1:]))
                idle = v[3] + v[4]
                out[int(p[0][3:])] = (sum(v) - idle, sum(v), v[0] + v[1] + v[2])
    return out


def affinity(root: int) -> str:
    """cpus allowed per thread of a process tree, e.g. '0' or '0,1' (knotd re-pins itself)."""
    seen = set()
    for p in tree(root):
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                seen.add(",".join(str(c) for c in sorted(os.sched_getaffinity(int(t)))))
        except OSError:
            pass
    return " ".join(sorted(seen))


class Proc:
    """A process this script started (pinned with taskset), stopped by its own PID."""

    def __init__(self, name: str, cmd: list[str], cpu: int | None, logdir: str,
                 env: dict | None = None, pipes: bool = False, prefix: list[str] | None = None) -> None:
        self.name = name
        self.cmd = (["taskset", "-c", str(cpu)] if cpu is not None else []) + (prefix or []) + cmd
        self.log_path = os.path.join(logdir, f"{name}.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - open for the process's life, closed in stop()
        self._buf = b""
        self.t0 = time.monotonic()
        # pipes: JSON lines in on stdin, out on stdout (bench/kubefeed.py); stderr to the log
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE if pipes else self._log,
                                  stderr=self._log if pipes else subprocess.STDOUT, cwd=logdir,
                                  env={**os.environ, **(env or {})})
        self.pid = self.p.pid

    def send(self, obj: dict) -> bool:
        """One JSON line to the process's stdin (pipes=True)."""
        try:
            self.p.stdin.write((json.dumps(obj) + "\n").encode())
            self.p.stdin.flush()
            return True
        except (OSError, ValueError, AttributeError):
            return False

    def recv(self, timeout: float, event: str | None = None) -> dict | None:
        """The next JSON line from its stdout (with "event" == event, others skipped);
        None when nothing came within `timeout` s or the process ended."""
        import select
        deadline = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if event is None or msg.get("event") == event:
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return None
                self._buf += chunk
            elif self.p.poll() is not None:
                return None

    def alive(self) -> bool:
        return self.p.poll() is None

    def log_tail(self, n: int = 8) -> str:
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.p.stdin is not None:  # pipes: end of input asks it to exit by itself
            try:
                self.p.stdin.close()
                self.p.wait(3)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.p.poll() is not None:
            self._log.close()
            return
        # remember forked children (nsd, knotd) with their start times, so a reused PID
        # is never signalled
        kids = []
        for k in tree(self.pid)[1:]:
            fl = _stat_fields(k)
            if fl:
                kids.append((k, fl[19]))
        self.p.terminate()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)
        deadline = time.monotonic() + 5
        for k, start in kids:
            while time.monotonic() < deadline:
                fl = _stat_fields(k)
                if not fl or fl[19] != start or fl[0] == "Z":
                    break
                try:
                    os.kill(k, 15)
                except OSError:
                    break
                time.sleep(0.1)
        self._log.close()


# --------------------------------------------------------------------------- DNS probes

def dns_query(name: str, qtype: int = 1, qid: int | None = None) -> bytes:
    qid = random.randrange(65536) if qid is None else qid
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for lab in name.rstrip(".").split("."):
        q += bytes([len(lab)]) + lab.encode()
    return q + b"\x00" + struct.pack(">HH", qtype, 1)


def ask(port: int, name: str, qtype: int = 1, timeout: float = 0.2) -> bytes | None:
    q = dns_query(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(q, ("127.0.0.1", port))
            while True:
                data, _ = s.recvfrom(65535)
                if data[:2] == q[:2]:
                    return data
        except OSError:
            return None


def answered(resp: bytes | None) -> bool:
    """NOERROR with at least one answer record."""
    return bool(resp) and len(resp) >= 12 and resp[3] & 0x0F == 0 and \
        struct.unpack(">H", resp[6:8])[0] > 0


def wait_ready(proc: Proc, port: int, name: str, timeout: float, need_answer: bool = True,
               interval: float = 0.01, expect: bytes | None = None) -> float | None:
    """Seconds from process start to the first (correct) answer, None on timeout/exit.
    expect: the A address (4 bytes) the answer must hold. Sets proc.ready_cpu_s: CPU
    seconds the process tree had used by then."""
    deadline = proc.t0 + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            return None
        r = ask(port, name, timeout=0.05)
        if (answered(r) and (expect is None or b"\x00\x04" + expect in r[12:])) if need_answer else r is not None:
            t = time.monotonic() - proc.t0
            proc.ready_cpu_s = cpu_ticks(proc.pid) / CLK
            return t
        time.sleep(interval)
    return None


def probe_addr(ctx) -> bytes | None:
    """The probe name's A address in the zone file (what a correct first answer holds)."""
    if "probe_addr" not in ctx.meta:
        owner = ctx.meta["probe"][: -len(DOMAIN) - 1]
        ctx.meta["probe_addr"] = None
        with open(ctx.meta["zone_file"]) as f:
            for ln in f:
                p = ln.split()
                if len(p) >= 4 and p[0] == owner and p[1:3] == ["IN", "A"]:
                    ctx.meta["probe_addr"] = p[3]
                    break
    a = ctx.meta["probe_addr"]
    return socket.inet_aton(a) if a else None


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (bound, then released)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


# --------------------------------------------------------------------------- dnsperf

def parse_dnsperf(text: str) -> dict:
    def num(pat, cast=float, default=0):
        m = re.search(pat, text)
        return cast(m.group(1)) if m else default
    d = {
        "sent": num(r"Queries sent:\s+(\d+)", int),
        "completed": num(r"Queries completed:\s+(\d+)", int),
        "lost": num(r"Queries lost:\s+(\d+)", int),
        "qps": num(r"Queries per second:\s+([\d.]+)"),
        # the first "Average Latency" is the queries'; TCP runs add connection stats after it
        "avg_ms": num(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
        "runtime_s": num(r"Run time \(s\):\s+([\d.]+)"),
        "resp_bytes": num(r"response (\d+)", int),
    }
    m = re.search(r"Response codes:\s+(.*)", text)
    d["rcodes"] = m.group(1).strip() if m else ""
    # e.g. "NOERROR 9000 (90.00%), NXDOMAIN 990 (9.90%), SERVFAIL 10 (0.10%)"
    sf = re.search(r"\bSERVFAIL (\d+)", d["rcodes"])
    d["servfail"] = int(sf.group(1)) if sf else 0
    d["loss_pct"] = 100.0 * d["lost"] / d["sent"] if d["sent"] else 0.0
    # -S 1: one "<unix time>: <qps>" line per second; the last partial second is dropped
    stamps = [(float(t), float(x)) for t, x in re.findall(r"^\s*(\d+\.\d+): ([\d.]+)\s*$", text, re.MULTILINE)]
    per_s = [x for _, x in stamps]
    if stamps and 0 < stamps[0][1] < 1 and stamps[0][0] > 1e9:
        # dnsperf 2.10 sometimes divides the first interval's count by the whole Unix time
        # (its interval start still 0): undo that
        per_s[0] = stamps[0][1] * stamps[0][0]
    d["per_second"] = per_s
    return d


def percentile(sorted_vals: list[float], pct: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = max(0, math.ceil(pct / 100.0 * len(sorted_vals)) - 1)
    return sorted_vals[k]


@dataclass
class Server:
    key: str            # clusterdns | knotd | nsd | node-cache | dnsmasq | unbound
    label: str          # what the table shows
    role: str           # auth | fwd
    port: int
    proc: Proc
    ready_s: float | None = None  # process start -> first correct answer
    flags: str = ""     # forwarders: the flags / config the row ran with (shown under the table)
    metrics_port: int = 0  # node-cache: its Prometheus /metrics (cache entries)


@dataclass
class Ctx:
    a: argparse.Namespace
    out: str
    rundir: str
    meta: dict
    files: dict
    results: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    procs: list = field(default_factory=list)
    gen: str = ""
    upstream_label: str = ""
    feed: Proc | None = None        # bench/kubefeed.py: the test API server with the cluster
    api_srv: Server | None = None   # clusterdns serve fed through that API's watch
    memory: dict = field(default_factory=dict)  # the memory case's figures
    scripts: dict = field(default_factory=dict)  # case -> the JSON of bench/flood.py, bench/soak.py
    flags: dict = field(default_factory=dict)   # forwarder key -> the flags its rows ran with


def dnsperf(ctx: Ctx, srv: Server, case: str, phase: str, rnd: int, datafile: str,
            extra: list[str], dur: float | None = None, before=None, after=None,
            info: dict | None = None) -> dict:
    """One bounded dnsperf run, recorded in ctx.results and results.jsonl.

    phase: max (self-paced, -S 1), rate (-Q), cold (one -n 1 pass), aux (self-paced, kept
    out of the table); dur overrides the phase's -l; before() runs just before dnsperf
    starts, after() just after it ends (its dict joins the record, as does info)."""
    a = ctx.a
    if dur is None:
        dur = {"max": a.duration, "rate": a.lat_duration, "cold": 60.0, "aux": a.duration}[phase]
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(srv.port), "-d", datafile,
           "-c", str(a.clients), "-l", f"{dur:g}"] + extra
    if phase in ("max", "aux"):
        cmd += ["-S", "1"]
    elif phase == "rate":
        cmd += ["-Q", str(a.lat_qps), "-v"]
    else:  # cold: one self-paced pass over the distinct questions, first thing after start
        cmd += ["-n", "1"]
    if ctx.a.load_cpu is not None:
        cmd = ["taskset", "-c", str(ctx.a.load_cpu)] + cmd
    raw_path = os.path.join(ctx.out, "raw", f"{case}-{phase}-{srv.key}-r{rnd}.txt")
    c0, k0 = cpu_ticks(srv.proc.pid), core_times()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if before is not None:
        before()
    t0 = time.monotonic()
    rc = 0
    with open(raw_path, "w+") as raw:
        try:
            rc = subprocess.run(cmd, check=False, stdout=raw, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                timeout=dur + 20).returncode
        except subprocess.TimeoutExpired:  # subprocess.run kills it (our own child) on timeout
            rc = 124
        wall = time.monotonic() - t0
        c1, k1 = cpu_ticks(srv.proc.pid), core_times()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        extra_info = after() if after is not None else {}
        raw.seek(0)
        text = raw.read()
    d = parse_dnsperf(text)
    lat = []
    if phase == "rate":
        lat = sorted(float(m) for m in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", text, re.MULTILINE))
        if not d["completed"] or len(lat) < 0.5 * d["completed"]:
            lat = []  # -v output not as expected: no p99 rather than a wrong one
        with open(raw_path, "w") as raw:  # keep the summary, not one line per query
            raw.write(re.sub(r"^> .*\n", "", text, flags=re.MULTILINE))
            if lat:
                raw.write(f"\n(per-query lines dropped: {len(lat)} latencies, p50 "
                          f"{percentile(lat, 50) * 1000:.3f} ms, p99 {percentile(lat, 99) * 1000:.3f} ms)\n")
    srv_cpu_s = (c1 - c0) / CLK
    gen_cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    busy = {c: 100.0 * (k1[c][0] - k0[c][0]) / max(1, k1[c][1] - k0[c][1]) for c in k1 if c in k0}
    rt = d["runtime_s"] or wall
    r = {
        "case": case, "phase": phase, "round": rnd, "server": srv.key, "label": srv.label,
        "rc": rc, "wall_s": round(wall, 3), **{k: v for k, v in d.items() if k != "per_second"},
        # slowest whole second after the first (dnsperf -S 1); needs a run of >= 4 s
        "worst_1s_qps": min(d["per_second"][1:]) if len(d["per_second"]) >= 3 else None,
        "p50_ms": percentile(lat, 50) * 1000 if lat else None,
        "p99_ms": percentile(lat, 99) * 1000 if lat else None,
        "server_cpu_pct": 100.0 * srv_cpu_s / rt if rt else None,
        "server_us_per_q": srv_cpu_s * 1e6 / d["completed"] if d["completed"] else None,
        "loadgen_cpu_pct": 100.0 * gen_cpu_s / wall if wall else None,
        "core_busy_pct": {c: round(v, 1) for c, v in busy.items()},
        "rss_mb": rss_mb(srv.proc.pid), "cmd": " ".join(cmd), "raw": os.path.relpath(raw_path, ctx.out),
        **(info or {}), **(extra_info or {}),
    }
    if case in NEW_CASES:
        r["per_second"] = d["per_second"]
    sc = ctx.a.server_cpu
    if sc is not None and sc in k0 and sc in k1 and k1[sc][1] > k0[sc][1]:
        # user+system time on the server's core not charged to the server: other processes
        # (interrupt and softirq time, which our own packets cause, is left out)
        other = (k1[sc][2] - k0[sc][2]) - (c1 - c0)
        r["other_load_server_cpu_pct"] = round(max(0.0, 100.0 * other / (k1[sc][1] - k0[sc][1])), 1)
    ctx.results.append(r)
    with open(os.path.join(ctx.out, "results.jsonl"), "a") as f:
        f.write(json.dumps(r) + "\n")
    extra_s = (f"p99={r['p99_ms']:.3f}ms " if r["p99_ms"] is not None else "")
    log(f"  {case:<5} {phase:<4} r{rnd} {srv.key:<10} qps={d['qps']:>9.0f} avg={d['avg_ms']:.3f}ms "
        f"{extra_s}loss={d['loss_pct']:.2f}% srv_us/q={r['server_us_per_q'] or 0:.1f} "
        f"dnsperf_cpu={r['loadgen_cpu_pct'] or 0:.0f}% rc={rc}")
    return r


def warm(ctx: Ctx, srv: Server, datafile: str | None = None) -> None:
    """One bounded pass over the distinct hit names, so every hit-run query is cached."""
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(srv.port), "-d", datafile or ctx.files["hit_unique"],
           "-c", str(ctx.a.clients), "-n", "1", "-l", "30"]
    if ctx.a.load_cpu is not None:
        cmd = ["taskset", "-c", str(ctx.a.load_cpu)] + cmd
    try:
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       stdin=subprocess.DEVNULL, timeout=45)
    except subprocess.TimeoutExpired:
        log(f"  warm-up of {srv.key} timed out")


# names of the pass that fills a cache before the cache-full miss run: more than
# node-cache's default capacity (9,984 entries per zone cache)
FILL_NAMES = 12_500
NODE_CACHE_CAPACITY = 9984


def miss_file(ctx: Ctx, phase: str, rnd: int, domain: str = DOMAIN) -> str:
    """Names never asked before in this benchmark (one file per round, shared by the
    forwarders: each has its own cache; the upstream nsd caches nothing).

    phase: max / rate (the miss runs), fill (the pass that fills the cache), full (the
    run with the cache full); each has its own first letter, so no name repeats."""
    a = ctx.a
    if phase in ("max", "full"):
        n = min(a.miss_lines, int(a.duration * a.miss_rate_cap))
    elif phase == "fill":
        n = FILL_NAMES
    else:
        n = int(a.lat_duration * a.lat_qps * 1.2) + 1000
    path = os.path.join(ctx.rundir, f"miss-{phase}-{rnd}-{domain}.txt")
    if not os.path.exists(path):
        nns = max(1, ctx.meta["namespaces"])
        with open(path, "w") as f:
            tag = {"max": "m", "rate": "r", "fill": "f", "full": "x"}[phase]
            f.writelines(f"u{tag}{rnd}-{i:07d}.ns-{i % nns}.svc.{domain} A\n" for i in range(n))
    return path


def fill_file(ctx: Ctx, rnd: int) -> str:
    """The pass that fills a cache before the cache-full run: every existing name of the
    zone once (positive answers, > 9,984 at 5,000 services) and FILL_NAMES never-asked
    names (NXDOMAIN), so a cache with separate success and denial parts is full in both."""
    path = os.path.join(ctx.rundir, f"fill-{rnd}.txt")
    if not os.path.exists(path):
        ex = existing_questions(ctx)
        names = [f"{n}.{DOMAIN} {'CNAME' if t == ['CNAME'] else 'A'}" for n, t in ex["services"]]
        names += [f"{n}.{DOMAIN} SRV" for n in ex["srv"]]
        names += [f"{n}.{DOMAIN} A" for n, _ in ex["endpoints"]]
        with open(miss_file(ctx, "fill", rnd)) as f, open(path, "w") as g:
            g.write("\n".join(names) + "\n")
            g.writelines(f)
    return path


def cache_entries(srv: Server, zone: str = DOMAIN) -> dict[str, int] | None:
    """Entries in node-cache's cache for `zone` by type (coredns_cache_entries{type}:
    success, denial) from its /metrics; None when it has no metrics endpoint or did not
    answer."""
    if not srv.metrics_port:
        return None
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    labels = (f'zones="{zone}."', f'zones="{zone}"')
    out: dict[str, int] = {}
    for ln in text.splitlines():
        if ln.startswith("coredns_cache_entries{") and any(x in ln for x in labels):
            m = re.search(r'type="(\w+)"', ln)
            kind = m.group(1) if m else "all"
            out[kind] = out.get(kind, 0) + int(float(ln.rsplit(" ", 1)[1]))
    return out or None


# --------------------------------------------------------------------------- servers

def render(ctx: Ctx, template: str, d: str, port: int, upstream_port: int = 0) -> str:
    with open(os.path.join(HERE, "configs", template + ".in")) as f:
        text = f.read()
    zone = ctx.meta["zone_file"]
    for k, v in {"@RUNDIR@": d, "@PORT@": str(port), "@UPSTREAM_PORT@": str(upstream_port),
                 "@ZONEDIR@": os.path.dirname(zone), "@ZONEFILE@": zone, "@DOMAIN@": DOMAIN,
                 "@EXTZONEFILE@": ctx.meta.get("ext_zone_file", ""),
                 "@EXTDOMAIN@": ctx.meta.get("ext_domain", ""), "@MINTTL@": "0"}.items():
        text = text.replace(k, v)
    path = os.path.join(d, template.replace(".in", ""))
    with open(path, "w") as f:
        f.write(text)
    return path


def clusterdns_cmd(ctx: Ctx) -> list[str]:
    if ctx.a.clusterdns:
        return ctx.a.clusterdns.split()
    exe = os.path.join(os.path.dirname(sys.executable), "clusterdns")
    return [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "clusterdns"]


def start(ctx: Ctx, key: str, cpu: int | None, upstream_port: int = 0,
          name: str | None = None, interval: float = 0.05, kubeconfig: str | None = None,
          timeout: float | None = None, announce: bool = True) -> Server | None:
    """Start one server on a free loopback port and wait until it answers.

    kubeconfig (clusterdns only): the API source (list/watch) instead of the manifests.
    interval: probe period while waiting. Sets server.ready_s (Popen -> first answer)."""
    name = name or key
    port = free_port()
    d = os.path.join(ctx.rundir, name)
    os.makedirs(d, exist_ok=True)
    ver = ctx.meta.get("versions", {}).get(key, "")
    role = "auth"
    flags, metrics_port = "", 0
    if key == "clusterdns" and kubeconfig:
        # every endpoint on loopback: health, ready and metrics default to all interfaces
        cmd = clusterdns_cmd(ctx) + ["serve", "--kubeconfig", kubeconfig,
                                     "--listen", f"127.0.0.1:{port}", "--ttl", "30",
                                     "--health", f"127.0.0.1:{free_port()}",
                                     "--ready", f"127.0.0.1:{free_port()}",
                                     "--metrics", f"127.0.0.1:{free_port()}",
                                     "--lameduck", "0", "--shutdown-timeout", "1",
                                     "--sync-timeout", "120", "--no-loop-detect",
                                     "--log-level", "warning"]
        label = "clusterdns serve (API watch)"
    elif key == "clusterdns":
        cmd = clusterdns_cmd(ctx) + ["serve", "--manifests", os.path.join(ctx.gen, "cluster.yaml"),
                                     "--listen", f"127.0.0.1:{port}", "--ttl", "30",
                                     "--log-level", "warning"]
        label = "clusterdns serve"
    elif key == "knotd":
        os.makedirs(os.path.join(d, "knot-db"), exist_ok=True)
        cmd = ["knotd", "-c", render(ctx, "knot.conf", d, port)]
        label = f"knotd {ver}"
    elif key == "nsd":
        # the forwarders' upstream also serves the external zone (the serve-fwd names)
        conf = "nsd-upstream.conf" if name.startswith("upstream") and ctx.meta.get("ext_zone_file") else "nsd.conf"
        cmd = ["nsd", "-d", "-c", render(ctx, conf, d, port)]
        label = f"nsd {ver}"
    elif key == "node-cache":
        role = "fwd"
        metrics_port = free_port()
        # --metrics: scraped only after the fill pass (cache entries), nothing per query
        cmd = clusterdns_cmd(ctx) + [
            "node-cache", "--listen", f"127.0.0.1:{port}", "--health", f"127.0.0.1:{free_port()}",
            "--metrics", f"127.0.0.1:{metrics_port}",
            "--cluster-dns", f"127.0.0.1:{upstream_port}", "--upstream", f"127.0.0.1:{upstream_port}",
            "--no-loop-detect", "--log-level", "warning"] + ctx.a.node_cache_args.split()
        label = "clusterdns node-cache"
        flags = (f"`{ctx.a.node_cache_args}`" if ctx.a.node_cache_args.strip() else
                 "default flags (TCP to the cluster DNS, default cache capacity: 9,984 entries per zone cache part)") + \
            "; plus --cluster-dns/--upstream = the upstream, --no-loop-detect, --metrics, loopback listen/health"
    elif key == "serve-fwd":
        role = "fwd"
        cmd = clusterdns_cmd(ctx) + ["serve", "--manifests", os.path.join(ctx.gen, "cluster.yaml"),
                                     "--listen", f"127.0.0.1:{port}", "--ttl", "30",
                                     "--upstream", f"127.0.0.1:{upstream_port}", "--no-loop-detect",
                                     "--log-level", "warning"]
        label = f"clusterdns serve --upstream ({ctx.meta.get('ext_domain', '?')} names)"
        flags = ("`serve --manifests cluster.yaml --upstream 127.0.0.1:<upstream> --no-loop-detect` (default "
                 "forwarding and cache otherwise, UDP to the upstream); asked names under "
                 f"{ctx.meta.get('ext_domain', '?')}, outside {DOMAIN}")
    elif key == "dnsmasq":
        role = "fwd"
        cmd = ["dnsmasq", "-k", "-C", "/dev/null", f"--port={port}", "--listen-address=127.0.0.1",
               "--bind-interfaces", "--no-resolv", "--no-hosts", "--no-poll",
               f"--server=/{DOMAIN}/127.0.0.1#{upstream_port}@127.0.0.1",
               f"--cache-size={ctx.a.dnsmasq_cache}", "--dns-forward-max=1000", "--pid-file=",
               "-u", "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")]
        label = f"dnsmasq {ver}"
        flags = f"`--cache-size={ctx.a.dnsmasq_cache} --dns-forward-max=1000`, UDP to the upstream"
    elif key == "unbound":
        role = "fwd"
        render(ctx, "root.hints", d, 0)
        cmd = ["unbound", "-d", "-c", render(ctx, "unbound.conf", d, port, upstream_port)]
        label = f"unbound {ver}"
        flags = ("bench/configs/unbound.conf.in: num-threads 1, msg-cache 64m, rrset-cache 128m, prefetch no, "
                 "forward-zone to the upstream (UDP)")
    else:
        raise ValueError(key)
    proc = Proc(name, cmd, cpu, d)
    ctx.procs.append(proc)
    probe = ctx.meta["probe"]
    timeout = timeout or ctx.a.ready_timeout
    ready = wait_ready(proc, port, probe, timeout, need_answer=True, interval=interval, expect=probe_addr(ctx))
    if ready is None:
        log(f"!! {name} did not answer {probe} within {timeout}s; log:\n{proc.log_tail()}")
        proc.stop()
        ctx.skipped.append(f"{name}: did not come up (log {proc.log_path})")
        return None
    if announce:
        log(f"   {name} on 127.0.0.1:{port} pid {proc.pid}, threads pinned to cpus {affinity(proc.pid)}")
    srv = Server(key, label, role, port, proc, flags=flags, metrics_port=metrics_port)
    if flags:
        ctx.flags[key] = (label, flags)
    srv.ready_s = ready
    return srv


# --------------------------------------------------------------------------- set-up

def have(tool: str) -> bool:
    return shutil.which(tool) is not None or os.path.exists(f"/usr/sbin/{tool}")


def install_missing(ctx: Ctx, tools: list[str]) -> None:
    missing = sorted({PACKAGES[t] for t in tools if t in PACKAGES and not have(t)})
    if not missing:
        return
    if ctx.a.no_install or not shutil.which("apt-get"):
        log(f"not installing {' '.join(missing)} ({'--no-install' if ctx.a.no_install else 'no apt-get'})")
        return
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        log(f"not root and no sudo: cannot install {' '.join(missing)}")
        return
    log(f"installing Debian packages: {' '.join(missing)}")
    # packaged daemons (knot, nsd, unbound) must not be started as system services by the
    # install: a policy-rc.d that says "no" for the duration, if there is none already
    policy = "/usr/sbin/policy-rc.d"
    made_policy = False
    if os.geteuid() == 0 and not os.path.exists(policy):
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
        made_policy = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        cmd = sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing
        if subprocess.run(cmd, check=False, env=env, timeout=600, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(sudo + ["apt-get", "update", "-qq"], check=False, env=env, timeout=300)
            subprocess.run(cmd, check=False, env=env, timeout=600, stdout=subprocess.DEVNULL)
    except (subprocess.TimeoutExpired, OSError) as exc:
        log(f"apt-get failed: {exc}")
    finally:
        if made_policy:
            os.unlink(policy)


def versions() -> dict:
    def run(cmd, pat=r"(\d+\.\d+(?:\.\d+)?)"):
        try:
            out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10)
            m = re.search(pat, out.stdout + out.stderr)
            return m.group(1) if m else "?"
        except (OSError, subprocess.TimeoutExpired):
            return None
    v = {"dnsperf": run(["dnsperf", "-h"], r"Version (\S+)"),
         "knotd": run(["knotd", "--version"]), "nsd": run(["nsd", "-v"]),
         "dnsmasq": run(["dnsmasq", "--version"]), "unbound": run(["unbound", "-V"])}
    return {k: x for k, x in v.items() if x}


def machine() -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    model = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1048576:.0f} GiB"
    except (OSError, ValueError):
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "memory": mem, "python": platform.python_version()}


def node_cache_available(ctx: Ctx) -> bool:
    try:
        r = subprocess.run(clusterdns_cmd(ctx) + ["node-cache", "--help"], check=False, capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "--cluster-dns" in r.stdout


def check_loopback_only(ctx: Ctx, servers: list[Server]) -> None:
    """Every listening socket of our processes must be on 127.0.0.1."""
    if not shutil.which("ss"):
        return
    pids = {p for s in servers for p in tree(s.proc.pid)}
    try:
        out = subprocess.run(["ss", "-H", "-l", "-n", "-u", "-t", "-p"], check=False, capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return
    bad = []
    for ln in out.splitlines():
        owners = {int(x) for x in re.findall(r"pid=(\d+)", ln)}
        if owners & pids:
            local = ln.split()[4] if ln.split()[0] in ("udp", "tcp") else ln.split()[3]
            if not local.startswith(("127.", "[::ffff:127.")):
                bad.append(ln.strip())
    if bad:
        ctx.notes.append("WARNING: sockets not on 127.0.0.1: " + "; ".join(bad))
        log("!! sockets not on 127.0.0.1:\n  " + "\n  ".join(bad))
    else:
        log(f"   all listening sockets of the {len(pids)} server processes are on 127.0.0.1")


def compare_answers(ctx: Ctx, ours: Server, ref: Server, n: int = 400) -> None:
    """Ask both servers a sample of distinct questions from mix.txt; compare rcode, TC and
    the answer RRsets (dnslib, which clusterdns depends on, parses the responses)."""
    try:
        import dnslib
    except ImportError:
        return
    with open(ctx.files["mix"]) as f:
        qs = list(dict.fromkeys(tuple(ln.split()) for ln in f if ln.strip()))
    random.Random(7).shuffle(qs)
    qs = qs[:n]

    def summary(resp):
        if resp is None:
            return None
        try:
            r = dnslib.DNSRecord.parse(resp)
        except Exception as exc:  # noqa: BLE001 - report unparsable answers as such
            return ("unparsable", str(exc))
        return (dnslib.RCODE.get(r.header.rcode), r.header.tc,
                tuple(sorted((str(rr.rname).lower(), rr.rtype, str(rr.rdata).lower()) for rr in r.rr)))
    bad = []
    for name, qt in qs:
        t = getattr(dnslib.QTYPE, qt)
        a, b = summary(ask(ours.port, name, t, 1.0)), summary(ask(ref.port, name, t, 1.0))
        if a != b:
            bad.append(f"{name} {qt}: clusterdns {a} vs {ref.key} {b}")
    msg = (f"answers of clusterdns and {ref.key} to {len(qs)} sampled questions of mix.txt "
           f"(rcode, TC, answer RRs): {len(qs) - len(bad)} agree")
    if bad:
        msg += f", {len(bad)} differ, e.g. " + " | ".join(x[:300] for x in bad[:3])
        with open(os.path.join(ctx.out, "answer-diffs.txt"), "w") as f:
            f.write("\n".join(bad) + "\n")
    ctx.notes.append(msg)
    log("   " + msg)


# --------------------------------------------------------------------------- phases

def measure_startup(ctx: Ctx, keys: list[str] | None = None) -> dict:
    """Process start -> first correct answer for the probe name (the last service loaded)."""
    out = {}
    keys = keys or ["clusterdns"] + [k for k in AUTH_PEERS if k in ctx.a.peers and have(k)]
    # an installed package has its bytecode (pip compiles it); an editable checkout under
    # PYTHONDONTWRITEBYTECODE=1 would compile ~50 modules on every start instead
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "clusterdns")],
                   stdout=subprocess.DEVNULL, check=False, timeout=120)
    for rnd in range(ctx.a.startup_repeats):
        for key in keys:
            port = free_port()
            d = os.path.join(ctx.rundir, f"startup-{key}-{rnd}")
            os.makedirs(d, exist_ok=True)
            if key == "clusterdns":
                cmd = clusterdns_cmd(ctx) + ["serve", "--manifests",
                                             os.path.join(ctx.gen, "cluster.yaml"),
                                             "--listen", f"127.0.0.1:{port}", "--ttl", "30"]
            elif key == "knotd":
                os.makedirs(os.path.join(d, "knot-db"), exist_ok=True)
                cmd = ["knotd", "-c", render(ctx, "knot.conf", d, port)]
            else:
                cmd = ["nsd", "-d", "-c", render(ctx, "nsd.conf", d, port)]
            proc = Proc(f"startup-{key}-{rnd}", cmd, ctx.a.server_cpu, d)
            ctx.procs.append(proc)
            t = wait_ready(proc, port, ctx.meta["probe"], ctx.a.ready_timeout, expect=probe_addr(ctx))
            cpu = getattr(proc, "ready_cpu_s", None)
            rss = rss_mb(proc.pid)
            proc.stop()
            if t is None:
                log(f"!! start-up {key}: no answer within {ctx.a.ready_timeout}s\n{proc.log_tail()}")
            else:
                log(f"  start-up {key} r{rnd}: {t:.3f} s to the first answer ({cpu:.2f} CPU s), "
                    f"RSS {rss:.0f} MB")
            out.setdefault(key, []).append({"s": t, "cpu_s": cpu, "rss_mb": rss})
            with open(os.path.join(ctx.out, "results.jsonl"), "a") as f:
                f.write(json.dumps({"case": "startup", "server": key, "round": rnd,
                                    "seconds": t, "cpu_s": cpu, "rss_mb": rss}) + "\n")
    return out


def run_case(ctx: Ctx, case: str, servers: list[Server], upstream: Server | None) -> None:
    """All rounds of one case over `servers`, alternated. The miss case restarts the
    forwarders (see run_miss) and replaces them in `servers`."""
    a = ctx.a
    if case == "miss":
        run_miss(ctx, servers, upstream)
        return
    if case in ("udp", "tcp"):
        # clusterdns renders an answer on the first query for it and replays it after that:
        # one pass over the distinct questions first, reported as the cold rate (a note)
        for srv in servers:
            dnsperf(ctx, srv, case, "cold", 0, ctx.files["mix_unique"],
                    ["-m", "tcp"] if case == "tcp" else [])
    for rnd in range(a.repeats):
        for phase in ("max", "rate"):
            if phase == "rate" and a.lat_qps <= 0:
                continue
            for srv in servers:
                if not srv.proc.alive():
                    log(f"!! {srv.key} has exited; log:\n{srv.proc.log_tail()}")
                    continue
                if case in ("udp", "tcp"):
                    dnsperf(ctx, srv, case, phase, rnd, ctx.files["mix"],
                            ["-m", "tcp"] if case == "tcp" else [])
                elif case == "hit":
                    ext = srv.key == "serve-fwd"  # forwards names outside the cluster domain
                    warm(ctx, srv, ctx.files["hit_ext_unique" if ext else "hit_unique"])
                    dnsperf(ctx, srv, case, phase, rnd, ctx.files["hit_ext" if ext else "hit"], [])


# the forwarders whose cache is filled before a second miss run (the cache-full row)
FULL_PEERS = ("node-cache", "dnsmasq")


def run_miss(ctx: Ctx, servers: list[Server], upstream: Server | None) -> None:
    """Never-repeated names, each round: every forwarder restarted (an empty cache), one
    self-paced pass over new names (the miss row), a fixed-rate run; then node-cache and
    dnsmasq get a pass of FILL_NAMES new names (node-cache's cache full: its entry count
    read from /metrics) and one more self-paced pass over new names (the missfull row)."""
    a = ctx.a
    up = upstream.port if upstream else 0

    def names(srv: Server, phase: str, rnd: int) -> str:
        dom = ctx.meta.get("ext_domain", DOMAIN) if srv.key == "serve-fwd" else DOMAIN
        return miss_file(ctx, phase, rnd, dom)
    for rnd in range(a.repeats):
        for i, srv in enumerate(servers):
            srv.proc.stop()
            new = start(ctx, srv.key, a.server_cpu, upstream_port=up, name=f"{srv.key}-miss-r{rnd}",
                        announce=False)
            if new is None:
                log(f"!! {srv.key} did not restart for miss round {rnd}")
                continue
            settle(new.proc, limit_s=5)
            servers[i] = new
        for phase in ("max", "rate"):
            if phase == "rate" and a.lat_qps <= 0:
                continue
            for srv in servers:
                if srv.proc.alive():
                    dnsperf(ctx, srv, "miss", phase, rnd, names(srv, phase, rnd), ["-n", "1"])
        for srv in servers:
            if srv.key not in FULL_PEERS or not srv.proc.alive():
                continue
            fill = dnsperf(ctx, srv, "missfull", "aux", rnd, fill_file(ctx, rnd), ["-n", "1"], dur=60.0)
            by_type = cache_entries(srv)
            info = {"fill_answered": fill["completed"], "fill_rcodes": fill["rcodes"],
                    "cache_entries": sum(by_type.values()) if by_type else None,
                    "cache_entries_by_type": by_type, "rss_after_fill_mb": rss_mb(srv.proc.pid)}
            if by_type is not None:
                log(f"   {srv.key}: {info['cache_entries']:,} entries in its {DOMAIN} cache after the fill pass "
                    f"{by_type}, RSS {info['rss_after_fill_mb']:.1f} MB")
            dnsperf(ctx, srv, "missfull", "max", rnd, names(srv, "full", rnd), ["-n", "1"], info=info)


# --------------------------------------------------------------------------- cold, fresh, churn, memory

def ref_peer(ctx: Ctx) -> str | None:
    """The C server the new cases compare with: knotd, else nsd."""
    for k in ("knotd", "nsd"):
        if k in ctx.a.peers and have(k):
            return k
    return None


def settle(proc: Proc, quiet_s: float = 0.3, limit_s: float = 15.0) -> float:
    """Wait (bounded by limit_s) until the process tree has used at most one clock tick of
    CPU over quiet_s: its start-up work (clusterdns's background warm-up) is done."""
    t0 = time.monotonic()
    last = cpu_ticks(proc.pid)
    while time.monotonic() - t0 < limit_s and proc.alive():
        time.sleep(quiet_s)
        now = cpu_ticks(proc.pid)
        if now - last <= 1:
            break
        last = now
    return time.monotonic() - t0


def hwm_mb(root: int) -> float:
    """Peak resident memory (VmHWM) summed over the process tree."""
    tot = 0
    for p in tree(root):
        try:
            with open(f"/proc/{p}/status") as f:
                for ln in f:
                    if ln.startswith("VmHWM:"):
                        tot += int(ln.split()[1])
        except OSError:
            pass
    return tot / 1024.0


def run_cold(ctx: Ctx) -> None:
    """Each round: start clusterdns and the reference fresh, poll (5 ms) until the probe name
    answers, then at once dnsperf self-paced on mix.txt for --cold-duration s; no warm-up."""
    a = ctx.a
    keys = ["clusterdns"] + [k for k in [ref_peer(ctx)] if k]
    log(f"== cold: {' / '.join(keys)} started fresh each round, mix for {a.cold_duration:g} s "
        f"right after the first answer, {a.repeats} rounds")
    for rnd in range(a.repeats):
        for key in keys:
            srv = start(ctx, key, a.server_cpu, name=f"cold-{key}-r{rnd}", interval=0.005, announce=False)
            if srv is None:
                continue
            t_ready = srv.proc.t0 + srv.ready_s
            info = {"ready_s": round(srv.ready_s, 4)}

            def before(info=info, t=t_ready):  # first answer -> dnsperf's start (after the CPU snapshots)
                info.update(gap_ms=round((time.monotonic() - t) * 1000, 2))
            dnsperf(ctx, srv, "cold", "max", rnd, ctx.files["mix"], [], dur=a.cold_duration,
                    before=before, info=info)
            srv.proc.stop()


def existing_questions(ctx: Ctx) -> dict:
    """Names the zone file (the same records clusterdns serves) publishes: Services (A, AAAA,
    or CNAME for ExternalName), their SRV names, headless endpoint names. Cached in ctx."""
    if "existing" in ctx.meta:
        return ctx.meta["existing"]
    services, srv_names, endpoints = {}, set(), {}
    with open(ctx.meta["zone_file"]) as f:
        for ln in f:
            p = ln.split()
            if len(p) < 4 or p[1] != "IN" or p[0] == "@":
                continue
            labels, rtype = p[0].split("."), p[2]
            if labels[-1] != "svc":
                continue
            if len(labels) == 5 and labels[0].startswith("_") and rtype == "SRV":
                srv_names.add(p[0])
            elif len(labels) == 3 and rtype in ("A", "AAAA", "CNAME"):
                services.setdefault(p[0], set()).add(rtype)
            elif len(labels) == 4 and rtype in ("A", "AAAA"):
                endpoints.setdefault(p[0], set()).add(rtype)
    out = {"services": sorted((k, sorted(v)) for k, v in services.items()), "srv": sorted(srv_names),
           "endpoints": sorted((k, sorted(v)) for k, v in endpoints.items()),
           "namespaces": sorted({s.split(".")[1] for s in services})}
    ctx.meta["existing"] = out
    return out


def fresh_file(ctx: Ctx, rnd: int, tag: str = "fresh") -> tuple[str, dict]:
    """A query file in which no name repeats (seeded by round): every existing name of the
    zone once (15%) and never-seen NXDOMAIN junk under existing namespaces (85%)."""
    a = ctx.a
    path = os.path.join(ctx.rundir, f"{tag}-r{rnd}.txt")
    ex = existing_questions(ctx)
    rng = random.Random(f"{tag}-{a.seed}-{rnd}")
    dom = DOMAIN
    probe = ctx.meta["probe"]  # asked while waiting for the server: not a first question
    lines = []
    for name, _types in ex["services"]:  # A or AAAA (NODATA for v4-only), CNAME for ExternalName
        fq = f"{name}.{dom}"
        if fq != probe:
            lines.append(f"{fq} {'AAAA' if rng.random() < 0.25 else 'A'}")
    lines += [f"{name}.{dom} SRV" for name in ex["srv"]]
    for name, types in ex["endpoints"]:
        lines.append(f"{name}.{dom} {'AAAA' if 'AAAA' in types and rng.random() < 0.5 else 'A'}")
    n_existing = len(lines)
    n_junk = round(n_existing * (1 - a.fresh_existing) / a.fresh_existing)
    svcs = [name for name, _ in ex["services"]]
    nss = ex["namespaces"]
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    seen: set[str] = set()
    shapes = {"random.<ns>": 0, "<svc>.<ns>.svc.zone.<ns>": 0, "random.<svc>.<ns>": 0}
    while len(seen) < n_junk:
        lab = "".join(rng.choices(alphabet, k=rng.randrange(6, 13)))
        r = rng.random()
        if r < 0.40:  # search path: a short name tried in some namespace, does not exist
            name, shape = f"{lab}.{rng.choice(nss)}.svc.{dom}", "random.<ns>"
        elif r < 0.75:  # a full service name, then the pod's search suffix appended
            name, shape = f"{rng.choice(svcs)}.{dom}.{rng.choice(nss)}.svc.{dom}", "<svc>.<ns>.svc.zone.<ns>"
        else:  # random subdomain of an existing service (a scan or a mistyped host)
            name, shape = f"{lab}.{rng.choice(svcs)}.{dom}", "random.<svc>.<ns>"
        if name in seen:
            continue
        seen.add(name)
        shapes[shape] += 1
        lines.append(f"{name} {'AAAA' if rng.random() < 0.25 else 'A'}")
    rng.shuffle(lines)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path, {"lines": len(lines), "existing": n_existing, "junk": n_junk, "junk_shapes": shapes}


def run_fresh(ctx: Ctx) -> None:
    """Each round: a new never-repeated file; each server started fresh, left to settle,
    then one -n 1 pass over the file (bounded by the file, and -l as a cap)."""
    a = ctx.a
    keys = ["clusterdns"] + [k for k in [ref_peer(ctx)] if k]
    log(f"== fresh: never-repeated names, {' / '.join(keys)} started fresh for each run, {a.repeats} rounds")
    for rnd in range(a.repeats):
        path, finfo = fresh_file(ctx, rnd)
        log(f"   fresh-r{rnd}.txt: {finfo['lines']:,} names, {finfo['existing']:,} existing, "
            f"{finfo['junk']:,} junk {finfo['junk_shapes']}")
        ctx.meta["fresh_file"] = finfo
        for key in keys:
            srv = start(ctx, key, a.server_cpu, name=f"fresh-{key}-r{rnd}", announce=False)
            if srv is None:
                continue
            info = {"ready_s": round(srv.ready_s, 4), "settle_s": round(settle(srv.proc), 2),
                    "file_lines": finfo["lines"]}
            dnsperf(ctx, srv, "fresh", "max", rnd, path, ["-n", "1"], dur=a.fresh_cap, info=info)
            srv.proc.stop()


def rt_prefix() -> list[str]:
    """chrt -f 1 when allowed: the churn driver then preempts dnsperf on their shared CPU at
    once, so its probes time clusterdns, not the scheduler. Empty otherwise."""
    if not shutil.which("chrt"):
        return []
    try:
        ok = subprocess.run(["chrt", "-f", "1", "true"], check=False, capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return ["chrt", "-f", "1"] if ok else []


def ensure_api(ctx: Ctx) -> Server | None:
    """The test API server (bench/kubefeed.py, on the load CPU) loaded with the cluster, and
    a `clusterdns serve` fed through its watch (on the server CPU); started once, shared by
    churn and memory. Records the sync time and the RSS after sync in ctx.memory."""
    a = ctx.a
    if ctx.api_srv is not None:
        return ctx.api_srv if ctx.api_srv.proc.alive() else None
    if ctx.memory.get("api_failed"):
        return None
    ctx.memory["api_failed"] = True  # until it works
    d = os.path.join(ctx.rundir, "kubefeed")
    os.makedirs(d, exist_ok=True)
    kc = os.path.join(d, "kubeconfig")
    prefix = rt_prefix()
    log(f"== API source: test API server with {ctx.meta['objects']:,} objects (bench/kubefeed.py on CPU "
        f"{a.load_cpu}{', SCHED_FIFO' if prefix else ''}), clusterdns serve --kubeconfig on CPU {a.server_cpu}")
    feed = Proc("kubefeed", [sys.executable, os.path.join(HERE, "kubefeed.py"), "--cluster",
                             os.path.join(ctx.gen, "cluster.yaml"), "--kubeconfig", kc, "--seed", str(a.seed),
                             "--max-seconds", "7200"], a.load_cpu, d, pipes=True, prefix=prefix)
    ctx.procs.append(feed)
    ready = feed.recv(180, "ready")
    if ready is None:
        log(f"!! kubefeed did not come up; log:\n{feed.log_tail()}")
        ctx.skipped.append(f"churn/memory: the test API server did not start (log {feed.log_path})")
        feed.stop()
        return None
    ctx.feed = feed
    ctx.memory["api_objects"] = ready.get("objects")
    ctx.memory["feed_rt"] = bool(prefix)
    log(f"   test API at {ready['url']}: {ready['objects']} loaded in {ready['load_s']} s")
    srv = start(ctx, "clusterdns", a.server_cpu, name="clusterdns-api", kubeconfig=kc, timeout=180)
    if srv is None:
        return None
    ctx.memory["api_sync_s"] = srv.ready_s
    settle_s = settle(srv.proc)
    ctx.memory["api_rss_sync"] = rss_mb(srv.proc.pid)
    log(f"   clusterdns (API watch) answered {srv.ready_s:.2f} s after start; settled {settle_s:.1f} s later, "
        f"RSS {ctx.memory['api_rss_sync']:.1f} MB")
    check_loopback_only(ctx, [srv, Server("kubefeed", "kubefeed", "api", 0, feed)])
    ctx.api_srv = srv
    ctx.memory.pop("api_failed")
    return srv


def run_churn(ctx: Ctx, by_key: dict) -> None:
    """mix.txt self-paced against the API-fed clusterdns while kubefeed commits --churn-rate
    changes/s and times each visible one (commit -> first answer showing it); the
    reference serves the static zone meanwhile. Alternated per round."""
    a = ctx.a
    srv = ensure_api(ctx)
    if srv is None:
        return
    ref = ref_peer(ctx)
    ref_srv, own_ref = by_key.get(ref) if ref else None, False
    if ref and ref_srv is None:
        ref_srv, own_ref = start(ctx, ref, a.server_cpu, name=f"churn-{ref}"), True
    dur = a.churn_duration
    log(f"== churn: mix for {dur:g} s, clusterdns (API watch) under {a.churn_rate:g} changes/s"
        f"{' / ' + ref_srv.key + ' (static zone)' if ref_srv else ''}, {a.repeats} rounds")
    for rnd in range(a.repeats):
        for s in [srv] + ([ref_srv] if ref_srv else []):
            if not s.proc.alive():
                log(f"!! {s.proc.name} has exited; log:\n{s.proc.log_tail()}")
                continue
            if s is not srv:
                dnsperf(ctx, s, "churn", "max", rnd, ctx.files["mix"], [], dur=dur)
                continue

            def before(s=s):
                ctx.feed.send({"cmd": "churn", "port": s.port, "rate": a.churn_rate, "seconds": dur,
                               "cadence": a.churn_probe_cadence, "every": a.churn_probe_every})

            def after():
                res = ctx.feed.recv(dur + 30, "churn")  # the driver ends with dnsperf; probes within 3 s
                if res is None:
                    return {"churn_error": "no result from kubefeed"}
                lat = sorted(res["latencies_ms"])
                return {"churn_changes": res["changes"], "churn_probed": res["probed"],
                        "churn_missed": res["missed"], "churn_lat_ms": lat,
                        "churn_bracket_ms": res.get("brackets_ms"), "churn_rtt_ms": res.get("rtts_ms"),
                        "churn_probe_queries": res.get("probe_queries"),
                        "watch_p50_ms": percentile(lat, 50) if lat else None,
                        "watch_p99_ms": percentile(lat, 99) if lat else None,
                        "driver_cpu_pct": round(100.0 * res["cpu_s"] / max(0.001, res["wall_s"]), 1)}
            r = dnsperf(ctx, s, "churn", "max", rnd, ctx.files["mix"], [], dur=dur, before=before, after=after)
            if r.get("churn_changes") is not None:
                br, rt = sorted(r["churn_bracket_ms"] or []), sorted(r["churn_rtt_ms"] or [])
                log(f"   churn r{rnd}: {r['churn_changes']} changes ({r['churn_probed']} probed, "
                    f"{r['churn_missed']} missed), change -> visible p50 {fmt(r['watch_p50_ms'], '.3f')} ms "
                    f"p99 {fmt(r['watch_p99_ms'], '.3f')} ms (bracket median {fmt(percentile(br, 50) if br else None, '.2f')} ms; "
                    f"probe round trip median {fmt(percentile(rt, 50) if rt else None, '.2f')} ms); "
                    f"driver {r['driver_cpu_pct']}% of CPU {a.load_cpu}")
            else:
                log(f"!! churn r{rnd}: {r.get('churn_error')}; kubefeed log:\n{ctx.feed.log_tail()}")
    ctx.memory["api_rss_after_churn"] = rss_mb(srv.proc.pid)
    if own_ref and ref_srv:
        ref_srv.proc.stop()


def run_memory(ctx: Ctx, churned: bool) -> None:
    """RSS of the API-fed clusterdns after sync and after the runs (the churn rounds if they
    ran, else a self-paced mix run; then one never-repeated-names pass, which fills its answer
    cache with junk); then bench/scale.py at --scale-services / --scale-endpoints-per-service."""
    a = ctx.a
    m = ctx.memory
    srv = ensure_api(ctx)
    if srv is not None:
        log("== memory: clusterdns (API watch) after sync "
            f"{m['api_rss_sync']:.1f} MB; more load on it, then RSS again")
        if not churned:
            dnsperf(ctx, srv, "memory", "aux", 0, ctx.files["mix"], [])
        path, _ = fresh_file(ctx, 0, tag="memory-fresh")
        dnsperf(ctx, srv, "memory", "aux", 1, path, ["-n", "1"], dur=a.fresh_cap)
        settle(srv.proc, limit_s=5)
        m["api_rss_after"] = rss_mb(srv.proc.pid)
        m["api_hwm"] = hwm_mb(srv.proc.pid)
        log(f"   after the runs: RSS {m['api_rss_after']:.1f} MB, peak (VmHWM) {m['api_hwm']:.1f} MB")
    n, per = a.scale_services, a.scale_endpoints_per_service
    log(f"== memory: bench/scale.py --services {n} --endpoints-per-service {per} (unpinned)")
    jpath = os.path.join(ctx.out, "scale.json")
    cmd = [sys.executable, os.path.join(HERE, "scale.py"), "--services", str(n), "--endpoints-per-service",
           str(per), "--events", str(a.scale_events), "--json", jpath]
    rc, raw, result = run_tool(ctx, "memory-scale", cmd, jpath)
    if result is not None:
        sc = m["scale"] = result
        log(f"   {sc['services']:,} services / {sc['endpoints']:,} endpoints: initial sync {sc['sync_s']:.2f} s, "
            f"RSS after sync {sc['rss_after_sync_mb']:.1f} MB, after {sc['events']} events {sc['rss_after_events_mb']:.1f} MB")
    else:
        ctx.notes.append(f"memory: bench/scale.py exited {rc} (output in raw/memory-scale.log)")
        log(f"!! scale.py exited {rc}; see {raw}")
    with open(os.path.join(ctx.out, "results.jsonl"), "a") as f:
        f.write(json.dumps({"case": "memory", "server": "clusterdns",
                            **{k: v for k, v in m.items() if k != "api_failed"}}) + "\n")


def run_script_case(ctx: Ctx, case: str) -> None:
    """bench/flood.py or bench/soak.py in its own process (each starts and pins its own
    servers and load), its JSON kept for the report."""
    a = ctx.a
    jpath = os.path.join(ctx.out, f"{case}.json")
    seconds = {"flood": (2 if a.quick else 10), "soak": (10 if a.quick else 60)}[case]
    cmd = [sys.executable, os.path.join(HERE, SCRIPT_CASES[case]), "--seconds", str(seconds),
           "--server-cpu", str(a.server_cpu), "--load-cpu", str(a.load_cpu), "--json", jpath]
    if case == "flood":
        cmd += ["--gen", ctx.gen]
    log(f"== {case}: bench/{SCRIPT_CASES[case]} --seconds {seconds}")
    rc, raw, result = run_tool(ctx, f"{case}-script", cmd, jpath)
    if result is not None:
        ctx.scripts[case] = result
    else:
        ctx.notes.append(f"{case}: bench/{SCRIPT_CASES[case]} exited {rc} (output in {raw})")
        log(f"!! {SCRIPT_CASES[case]} exited {rc}; see {raw}")


def run_tool(ctx: Ctx, name: str, cmd: list[str], jpath: str, timeout: float = 900) -> tuple[int, str, dict | None]:
    """One of bench/'s own scripts as a Proc (stopped by PID, with what it started, should it
    hang): (exit code, its log, the JSON it wrote or None)."""
    proc = Proc(name, cmd, None, os.path.join(ctx.out, "raw"))
    ctx.procs.append(proc)
    try:
        rc = proc.p.wait(timeout)
    except subprocess.TimeoutExpired:
        rc = 124
    proc.stop()
    if rc != 0 or not os.path.exists(jpath):
        return rc, proc.log_path, None
    with open(jpath) as f:
        return rc, proc.log_path, json.load(f)


def script_sections(ctx: Ctx) -> list[str]:
    """The flood and soak results for the report: their tables and verdict lines."""
    out: list[str] = []
    d = ctx.scripts.get("flood")
    if d:
        out += ["", "Floods (bench/flood.py; a probe of real names at 200 QPS beside each flood):", "",
                *(line for line in d["table"].splitlines() if line.startswith("|")), ""] + \
            [f"- {v['text']}" for v in d["verdicts"]]
    d = ctx.scripts.get("soak")
    if d:
        v, sf, fl = d["verdict"], d["servfail"], d["flood"]
        out += ["", f"Soak (bench/soak.py, {d['seconds']:g} s: checked mix, flood, API stops, upstream stop):",
                (f"- real-name answers lost: {v['lost_real']} of {d['real']['sent']:,} (target 0): "
                 f"{'**met**' if v['met'] else '**not met**'}; wrong in zone {v['wrong_in_zone']}"),
                (f"- SERVFAIL: {sf['in_zone']} in the zone, {sf['out_of_zone']} out of it (the upstream was stopped "
                 f"for {d['upstream'].get('down_s', '?')} s); flood {fl.get('qps', 0):,.0f}/s answered "
                 f"{fl.get('answered_rate', 0):.2%}; peak RSS {d['serve']['peak_rss_mb']:.1f} MB")]
    return out


# --------------------------------------------------------------------------- table

CASE_TITLES = {"udp": "cluster zone, UDP (mix)", "tcp": "cluster zone, TCP (mix)",
               "hit": "forwarder cache hit (hit.txt, warm)",
               "miss": "forwarder cache miss (unique names)",
               "missfull": "forwarder cache miss, cache full (unique names)",
               "cold": "cold start: mix from the first answer on",
               "fresh": "never-repeated names (fresh file, -n 1)",
               "churn": "mix under API churn"}
OURS = {"udp": "clusterdns", "tcp": "clusterdns", "hit": "node-cache", "miss": "node-cache",
        "missfull": "node-cache",
        "cold": "clusterdns", "fresh": "clusterdns", "churn": "clusterdns"}


def summarize(ctx: Ctx) -> dict:
    med = statistics.median
    rows = {}
    for r in ctx.results:
        rows.setdefault((r["case"], r["server"]), []).append(r)
    out = {}
    for (case, server), rs in rows.items():
        cold = [r for r in rs if r["phase"] == "cold"]
        rs = [r for r in rs if r["phase"] in ("max", "rate")]  # not cold passes, not aux runs
        if not rs:
            continue
        mx = [r for r in rs if r["phase"] == "max"]
        rt = [r for r in rs if r["phase"] == "rate"]

        def m(lst, k):
            v = [r[k] for r in lst if r.get(k) is not None]
            return med(v) if v else None
        out[(case, server)] = {
            "label": rs[0]["label"], "runs": len(mx),
            "qps": m(mx, "qps"), "qps_min": min((r["qps"] for r in mx), default=None),
            "qps_max": max((r["qps"] for r in mx), default=None),
            "worst_1s": min((r["worst_1s_qps"] for r in mx if r.get("worst_1s_qps") is not None),
                            default=None),
            "loss": m(mx, "loss_pct"), "loss_max": max((r["loss_pct"] for r in mx), default=None),
            "loss_rate": m(rt, "loss_pct"), "rate_qps": m(rt, "qps"),
            "avg_ms": m(rt, "avg_ms"), "p99_ms": m(rt, "p99_ms"),
            "us_per_q": m(mx, "server_us_per_q"), "rss": max((r["rss_mb"] for r in rs), default=None),
            "dnsperf_cpu": m(mx, "loadgen_cpu_pct"), "other_load": m(rs, "other_load_server_cpu_pct"),
            "rcodes": mx[0]["rcodes"] if mx else "", "resp_bytes": mx[0]["resp_bytes"] if mx else 0,
            "cold_qps": cold[0]["qps"] if cold else None,
            "cold_us_per_q": cold[0]["server_us_per_q"] if cold else None,
            # cold / fresh: start-up and the first second; churn: change -> answer, pooled
            "ready_s": m(mx, "ready_s"), "gap_ms": m(mx, "gap_ms"), "settle_s": m(mx, "settle_s"),
            "first_1s": med([r["per_second"][0] for r in mx if r.get("per_second")])
            if any(r.get("per_second") for r in mx) else None,
            "runtime_s": m(mx, "runtime_s"), "completed": m(mx, "completed"),
            "lost_max": max((r["lost"] for r in mx), default=None),
            "servfail": sum(r.get("servfail") or 0 for r in rs),
            "cache_entries": min((r["cache_entries"] for r in mx if r.get("cache_entries") is not None),
                                 default=None),
            "cache_by_type": next((r["cache_entries_by_type"] for r in mx if r.get("cache_entries_by_type")),
                                  None),
            "fill_rcodes": next((r["fill_rcodes"] for r in mx if r.get("fill_rcodes")), None),
            "rss_after_fill": max((r["rss_after_fill_mb"] for r in mx if r.get("rss_after_fill_mb") is not None),
                                  default=None),
        }
        lat = sorted(x for r in mx for x in (r.get("churn_lat_ms") or []))
        if any("churn_changes" in r for r in mx):
            out[(case, server)].update({
                "watch_p50": percentile(lat, 50) if lat else None,
                "watch_p99": percentile(lat, 99) if lat else None,
                "watch_max": lat[-1] if lat else None, "watch_n": len(lat),
                "churn_changes": sum(r.get("churn_changes") or 0 for r in mx),
                "churn_probed": sum(r.get("churn_probed") or 0 for r in mx),
                "churn_missed": sum(r.get("churn_missed") or 0 for r in mx),
                "churn_failed": sum(1 for r in mx if r.get("churn_error")),
                "watch_bracket": med(br) if (br := [x for r in mx for x in (r.get("churn_bracket_ms") or [])]) else None,
                "probe_rtt": med(rt) if (rt := [x for r in mx for x in (r.get("churn_rtt_ms") or [])]) else None,
                "driver_cpu": m(mx, "driver_cpu_pct"),
                "probe_qps": sum(r.get("churn_probe_queries") or 0 for r in mx) / max(1e-9, sum(r["runtime_s"] or r["wall_s"] for r in mx))})
    return out


def fmt(v, spec, dash="–"):
    return dash if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(ctx: Ctx, summ: dict, startup: dict) -> str:
    a = ctx.a
    lines = [
        (f"| workload | server | QPS, max (median of {a.repeats}; min–max) | worst 1 s | loss % max / @{a.lat_qps // 1000}k "
        f"| avg ms @{a.lat_qps // 1000}k | p99 ms @{a.lat_qps // 1000}k | server CPU µs/q | RSS MB "
        f"| clusterdns ÷ this (QPS · avg lat · CPU/q) |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = {"clusterdns": 0, "node-cache": 0, "knotd": 1, "nsd": 2, "dnsmasq": 3, "unbound": 4,
             "serve-fwd": 5}
    for case in ("udp", "tcp", "hit", "miss", "missfull") + NEW_CASES:
        keys = sorted((k for k in summ if k[0] == case), key=lambda k: order.get(k[1], 9))
        ours = summ.get((case, OURS[case]))
        for k in keys:
            s = summ[k]
            bound = " ¹" if (s["dnsperf_cpu"] or 0) >= 90 else ""
            qps = (f"**{fmt(s['qps'], ',.0f')}**{bound} ({fmt(s['qps_min'], ',.0f')}–{fmt(s['qps_max'], ',.0f')})"
                   if s["qps"] is not None else "–")
            ratio = "—"
            if ours is not None and k[1] != OURS[case] and s["qps"]:
                q = ours["qps"] / s["qps"] if ours["qps"] else None
                lr = (ours["avg_ms"] / s["avg_ms"]) if ours.get("avg_ms") and s.get("avg_ms") else None
                cr = (ours["us_per_q"] / s["us_per_q"]) if ours.get("us_per_q") and s.get("us_per_q") else None
                ratio = f"{fmt(q, '.2f')}x · {fmt(lr, '.2f')}x · {fmt(cr, '.2f')}x"
            name = s["label"] if k[1] != OURS[case] else f"**{s['label']}**"
            lines.append(
                f"| {CASE_TITLES[case]} | {name} | {qps} | {fmt(s['worst_1s'], ',.0f')} "
                f"| {fmt(s['loss'], '.2f')} / {fmt(s['loss_rate'], '.2f')} | {fmt(s['avg_ms'], '.3f')} "
                f"| {fmt(s['p99_ms'], '.3f')} | {fmt(s['us_per_q'], '.1f')} | {fmt(s['rss'], '.0f')} | {ratio} |")
    m = ctx.memory
    dash = "| – | – | – / – | – | – | – "
    if m.get("api_rss_sync") is not None:
        after = m.get("api_rss_after", m.get("api_rss_after_churn"))
        peak = f", peak {m['api_hwm']:.0f}" if m.get("api_hwm") else ""
        lines.append(f"| memory: API watch, {ctx.meta['services']:,} services (RSS after sync / after the runs{peak}) "
                     f"| **clusterdns serve (API watch)** {dash}| {m['api_rss_sync']:.0f} / {fmt(after, '.0f')} | — |")
    sc = m.get("scale")
    if sc:
        lines.append(f"| memory: API watch, {sc['services']:,} services / {sc['endpoints']:,} endpoints "
                     f"(bench/scale.py; initial sync {sc['sync_s']:.2f} s) | **clusterdns serve (API watch)** {dash}"
                     f"| {sc['rss_after_sync_mb']:.0f} | — |")
    return "\n".join(lines)


def targets(ctx: Ctx, summ: dict, startup: dict) -> list[str]:
    out = []

    def get(case, server):
        return summ.get((case, server))

    def verdict(ok):
        return "**met**" if ok else "**not met**"
    c, k = get("udp", "clusterdns"), get("udp", "knotd")
    if c and k and k["qps"] and c["qps"]:
        q = c["qps"] / k["qps"]
        lr = c["avg_ms"] / k["avg_ms"] if c.get("avg_ms") and k.get("avg_ms") else None
        ok = q >= 0.7 and (c["loss_max"] or 0) == 0 and lr is not None and lr <= 1.5
        out.append(f"cluster zone UDP: {q:.2f}x knotd's QPS (≥ 0.7x), loss {c['loss_max']:.2f}% in the "
                   f"worst run (0), avg latency @{ctx.a.lat_qps // 1000}k {fmt(lr, '.2f')}x knotd's (≤ 1.5x): {verdict(ok)}")
    else:
        out.append("cluster zone UDP vs knotd: n/a (knotd or clusterdns not measured)")
    c, k = get("tcp", "clusterdns"), get("tcp", "knotd")
    if c and k and k["qps"]:
        q = c["qps"] / k["qps"]
        out.append(f"cluster zone TCP: {q:.2f}x knotd's QPS (≥ 0.5x): {verdict(q >= 0.5)}")
    else:
        out.append("cluster zone TCP vs knotd: n/a")
    out += forwarder_targets(ctx, summ, verdict)
    s = [x["s"] for x in startup.get("clusterdns", []) if x["s"] is not None]
    if s and "startup" in ctx.a.cases:
        m = statistics.median(s)
        cpu = [x["cpu_s"] for x in startup.get("clusterdns", []) if x.get("cpu_s") is not None]
        out.append(f"start-up, {ctx.meta['services']:,} services from manifests: {m:.3f} s median (< 2 s; "
                   f"{statistics.median(cpu):.2f} s of it on the CPU): {verdict(m < 2.0)}")
    out += new_targets(ctx, summ, startup, verdict)
    return out


def ratio(a: dict | None, b: dict | None, key: str = "qps") -> float | None:
    """a[key] / b[key] when both are measured."""
    return a[key] / b[key] if a and b and a.get(key) and b.get(key) else None


def forwarder_targets(ctx: Ctx, summ: dict, verdict) -> list[str]:
    """The verdicts of the hit and miss cases: node-cache with the flags it ran with
    (default: TCP to the cluster DNS) against dnsmasq and unbound, and serve --upstream."""
    out = []
    flags = f"node-cache {ctx.a.node_cache_args.strip() or 'default flags'}"
    nc, dm = summ.get(("hit", "node-cache")), summ.get(("hit", "dnsmasq"))
    q, cpu = ratio(nc, dm), ratio(nc, dm, "us_per_q")
    if q is not None:
        out.append(f"node-local cache hits ({flags}): {q:.2f}x dnsmasq's QPS (≥ 1.0x), CPU per hit "
                   f"{fmt(nc['us_per_q'], '.1f')} vs {fmt(dm['us_per_q'], '.1f')} µs ({fmt(cpu, '.2f')}x, ≤ 1.0x): "
                   f"{verdict(q >= 1.0 and cpu is not None and cpu <= 1.0)}")
    else:
        out.append("node-local cache hits vs dnsmasq: n/a (node-cache or dnsmasq not measured)")
    nc, dm, ub = (summ.get(("miss", k)) for k in ("node-cache", "dnsmasq", "unbound"))
    qd, qu = ratio(nc, dm), ratio(nc, ub)
    if nc and (qd is not None or qu is not None):
        ok = qd is not None and qd >= 1.0 and qu is not None and qu >= 0.6 and nc["servfail"] == 0
        out.append(f"cache misses, never-repeated names, empty cache at the start ({flags}): {fmt(qd, '.2f')}x "
                   f"dnsmasq's rate (≥ 1.0x), {fmt(qu, '.2f')}x unbound's (≥ 0.6x), {nc['servfail']} SERVFAIL "
                   f"(0); worst second {fmt(nc['worst_1s'], ',.0f')} vs median {nc['qps']:,.0f} QPS: {verdict(ok)}")
    else:
        out.append("cache misses vs dnsmasq and unbound: n/a (not measured)")
    full, dmf = summ.get(("missfull", "node-cache")), summ.get(("missfull", "dnsmasq"))
    qe, qf = ratio(full, nc), ratio(full, dmf)
    if full and qe is not None:
        n = full.get("cache_entries")
        ok = qe >= 0.9 and qf is not None and qf >= 1.0 and full["servfail"] == 0 and \
            n is not None and n >= NODE_CACHE_CAPACITY
        kinds = ", ".join(f"{k} {v:,}" for k, v in (full.get("cache_by_type") or {}).items())
        out.append(f"cache misses with the cache full ({fmt(n, ',')} entries in node-cache's {DOMAIN} cache "
                   f"({kinds}) after a pass of every existing name and {FILL_NAMES:,} new names, ≥ "
                   f"{NODE_CACHE_CAPACITY:,}): {qe:.2f}x its empty-cache miss "
                   f"rate (≥ 0.9x: no collapse), {fmt(qf, '.2f')}x dnsmasq's after the same pass (dnsmasq "
                   f"--cache-size={ctx.a.dnsmasq_cache}) (≥ 1.0x), {full['servfail']} SERVFAIL (0): {verdict(ok)}")
        rss = max(x for x in (full.get("rss"), full.get("rss_after_fill")) if x is not None) \
            if full.get("rss") is not None or full.get("rss_after_fill") is not None else None
        if rss is not None:
            out.append(f"node-cache RSS with its cache full: {rss:.1f} MB at most (after the fill pass and after the "
                       f"cache-full run; ≤ 40 MB): {verdict(rss <= 40)}")
    elif "miss" in ctx.a.cases:
        out.append("cache misses with the cache full: n/a (not measured)")
    for case, what in (("hit", "hits"), ("miss", "misses")):
        sf, ncr = summ.get((case, "serve-fwd")), summ.get((case, "node-cache"))
        q = ratio(sf, ncr)
        if q is not None:
            extra = f", {sf['servfail']} SERVFAIL (0)" if case == "miss" else ""
            ok = q >= 0.9 and (case != "miss" or sf["servfail"] == 0)
            out.append(f"serve --upstream, {what} on names outside {DOMAIN}: {sf['qps']:,.0f} QPS, {q:.2f}x "
                       f"node-cache's {what} rate (same rate: ≥ 0.9x){extra}: {verdict(ok)}")
        elif case in ctx.a.cases and "serve-fwd" in ctx.a.peers:
            out.append(f"serve --upstream {what}: n/a (not measured)")
    return out


def forwarder_flags(ctx: Ctx) -> list[str]:
    """One line per forwarder row: the flags or config it ran with."""
    if not ctx.flags:
        return []
    return ["", "Forwarder rows ran with (upstream: " + (ctx.upstream_label or "?") + " on the load CPU):"] + \
        [f"- {label}: {flags}" for label, flags in ctx.flags.values()]


def new_targets(ctx: Ctx, summ: dict, startup: dict, verdict) -> list[str]:
    """The verdicts of the cold, fresh, churn and memory cases."""
    out = []
    a = ctx.a
    ref = ref_peer(ctx) or "knotd"

    def vs(case):
        c, k = summ.get((case, "clusterdns")), summ.get((case, ref))
        q = c["qps"] / k["qps"] if c and k and c.get("qps") and k.get("qps") else None
        return c, k, q

    def cpu(case):  # the steadier figure when other processes share the CPUs
        c, k = summ.get((case, "clusterdns")), summ.get((case, ref))
        r = c["us_per_q"] / k["us_per_q"] if c and k and c.get("us_per_q") and k.get("us_per_q") else None
        return f" [CPU µs/q {fmt(r, '.2f')}x {ref}'s; 0.8x QPS ≈ ≤ 1.25x CPU]"
    if "cold" in a.cases:
        c, _, q = vs("cold")
        if q is not None:
            out.append(f"cold start (mix for {a.cold_duration:g} s from the first answer, no warm-up): {q:.2f}x {ref}'s "
                       f"QPS (≥ 0.8x), loss {c['loss_max']:.2f}% in the worst run (0): "
                       f"{verdict(q >= 0.8 and (c['loss_max'] or 0) == 0)}{cpu('cold')}")
        else:
            out.append(f"cold start vs {ref}: n/a (not measured)")
    if "fresh" in a.cases:
        c, _, q = vs("fresh")
        if q is not None:
            out.append(f"never-repeated names (the same fresh file, servers fresh): {q:.2f}x {ref}'s QPS (≥ 0.8x); "
                       f"clusterdns loss {c['loss_max']:.2f}% worst run: {verdict(q >= 0.8)}{cpu('fresh')}")
        else:
            out.append(f"never-repeated names vs {ref}: n/a (not measured)")
    if "churn" in a.cases:
        c, _, q = vs("churn")
        if q is not None:
            out.append(f"mix under {a.churn_rate:g} API changes/s: {q:.2f}x {ref}'s QPS (≥ 0.8x): "
                       f"{verdict(q >= 0.8)}{cpu('churn')}")
        else:
            out.append(f"mix under churn vs {ref}: n/a (not measured)")
        if c and c.get("watch_n"):
            ok = c["watch_p50"] < 1.0 and c["churn_missed"] == 0
            out.append(f"change -> visible in answers under that load: median {c['watch_p50']:.3f} ms (< 1 ms), p99 "
                       f"{c['watch_p99']:.3f} ms, max {c['watch_max']:.1f} ms over {c['watch_n']} timed changes, "
                       f"{c['churn_missed']} not visible within 3 s: {verdict(ok)}")
        elif c:
            out.append("change -> answer: n/a (no churn results from bench/kubefeed.py)")
    if "memory" in a.cases:
        m = ctx.memory
        if m.get("api_rss_sync") is not None:
            after = m.get("api_rss_after", m.get("api_rss_after_churn"))
            worst = max(x for x in (m["api_rss_sync"], after) if x is not None)
            out.append(f"memory, API watch, {ctx.meta['services']:,} services: RSS {m['api_rss_sync']:.1f} MB after "
                       f"sync, {fmt(after, '.1f')} MB after the runs (≤ 85 MB): {verdict(worst <= 85)}")
        else:
            out.append("memory, API watch: n/a (the API-fed clusterdns did not start)")
        sc = m.get("scale")
        if sc:
            out.append(f"memory, {sc['services']:,} services / {sc['endpoints']:,} endpoints (bench/scale.py): RSS "
                       f"{sc['rss_after_sync_mb']:.1f} MB after sync (≤ 144 MB), initial sync {sc['sync_s']:.2f} s "
                       f"(< 5 s): {verdict(sc['rss_after_sync_mb'] <= 144 and sc['sync_s'] < 5)}")
        else:
            out.append("memory at 10,000 services: n/a (bench/scale.py did not finish)")
        rl = (sc or {}).get("relist")
        if rl:
            out.append(f"memory, re-list after 410 at that size: peak RSS {rl['peak_mb']:.1f} MB, {rl['ratio']:.2f}x "
                       f"the {rl['steady_mb']:.1f} MB before (≤ 1.25x): {verdict(rl['ratio'] <= 1.25)}")
        s = [x["s"] for x in startup.get("clusterdns", []) if x["s"] is not None]
        if s:
            med = statistics.median(s)
            out.append(f"start-up, {ctx.meta['services']:,} services from manifests: first answer after {med:.3f} s "
                       f"median (< 1 s): {verdict(med < 1.0)}")
    return out


def new_cases_line(ctx: Ctx) -> str:
    a, parts = ctx.a, []
    if "cold" in a.cases:
        parts.append(f"cold: servers started fresh each round, mix self-paced for {a.cold_duration:g} s from the first answer")
    if "fresh" in a.cases:
        parts.append("fresh: one pass (-n 1) over a new never-repeated file per round, servers started fresh")
    if "churn" in a.cases:
        parts.append(f"churn: mix self-paced for {a.churn_duration:g} s while {a.churn_rate:g} changes/s reach "
                     f"clusterdns through the API watch")
    return (" " + "; ".join(parts) + ".") if parts else ""


def new_notes(ctx: Ctx, summ: dict) -> list[str]:
    """What the table cannot show of the cold, fresh, churn and memory cases."""
    a, out = ctx.a, []
    ref = ref_peer(ctx) or "knotd"
    for key in ("clusterdns", ref):
        c = summ.get(("cold", key))
        if c:
            out.append(f"cold, {c['label']}: first answer {fmt(c['ready_s'], '.3f')} s after start (5 ms polls), "
                       f"dnsperf started {fmt(c['gap_ms'], '.1f')} ms after it; first second of load "
                       f"{fmt(c['first_1s'], ',.0f')} QPS (medians of {c['runs']} rounds)")
    f = ctx.meta.get("fresh_file")
    if f and any(k[0] == "fresh" for k in summ):
        out.append(f"fresh files: {f['lines']:,} names each, none repeated: {f['existing']:,} existing "
                   f"(every Service's A or AAAA, every SRV name, every headless endpoint name) and "
                   f"{f['junk']:,} NXDOMAIN junk {f['junk_shapes']}; runs are bounded by the file (QPS = answered ÷ "
                   f"dnsperf's run time), servers left to settle (CPU idle) after the first answer")
        for key in ("clusterdns", ref):
            c = summ.get(("fresh", key))
            if c:
                out.append(f"fresh, {c['label']}: {fmt(c['runtime_s'], '.2f')} s per file (median), lost "
                           f"{c['lost_max']} at most; rcodes {c['rcodes']}")
    c = summ.get(("churn", "clusterdns"))
    if c and c.get("churn_changes") is not None:
        out.append(f"churn: {c['churn_changes']:,} changes in {c['runs']} runs through the watch of the test API "
                   f"server (tests/kubeapi.py via bench/kubefeed.py: a ClusterIP Service's new clusterIP, a headless "
                   f"endpoint moved, a new Service, a ClusterIP Service's endpoint moved — the last not visible in "
                   f"DNS); every {a.churn_probe_every}th visible change timed ({c['churn_probed']} in all): probes every "
                   f"{a.churn_probe_cadence * 1000:g} ms from before the commit, change -> visible = middle of (last "
                   f"answer without it, first answer with it] - commit, bracket median {fmt(c['watch_bracket'], '.2f')} ms; "
                   f"a client's query also waits in the server's queue: probe round trip median "
                   f"{fmt(c['probe_rtt'], '.2f')} ms; the probes were {fmt(c['probe_qps'], ',.0f')} queries/s of the "
                   f"server's load (not counted in its QPS); the driver used {fmt(c['driver_cpu'], '.0f')}% of CPU "
                   f"{a.load_cpu} (dnsperf's){' at SCHED_FIFO' if ctx.memory.get('feed_rt') else ''}; clusterdns "
                   f"rcodes {c['rcodes']}" + (f"; {c['churn_failed']} runs without a result" if c["churn_failed"] else ""))
    m = ctx.memory
    if m.get("api_rss_sync") is not None:
        out.append(f"memory, API watch: {m.get('api_objects')} objects; first answer {m['api_sync_s']:.2f} s after "
                   f"start; RSS {m['api_rss_sync']:.1f} MB after sync, "
                   + (f"{m['api_rss_after_churn']:.1f} MB after the churn runs, " if m.get("api_rss_after_churn") else "")
                   + (f"{m['api_rss_after']:.1f} MB after a never-repeated-names pass (peak {m['api_hwm']:.1f} MB)"
                      if m.get("api_rss_after") else ""))
    sc = m.get("scale")
    if sc:
        out.append(f"bench/scale.py {sc['services']:,} services / {sc['endpoints']:,} endpoints (unpinned; the test "
                   f"API in its process): sync {sc['sync_s']:.2f} s, RSS {sc['rss_after_sync_mb']:.1f} MB after sync "
                   f"({sc['beyond_bare_mb']:.1f} MB beyond a bare interpreter with the imports), "
                   f"{sc['rss_after_events_mb']:.1f} MB after {sc['events']} events; event apply median "
                   f"{fmt(sc['apply_median_ms'], '.3f')} ms, p99 {fmt(sc['apply_p99_ms'], '.3f')} ms")
    return out


def report(ctx: Ctx, startup: dict) -> str:
    a, meta = ctx.a, ctx.meta
    summ = summarize(ctx)
    mach = machine()
    v = meta.get("versions", {})
    head = [
        f"## clusterdns benchmark — {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        (f"Machine: {mach['nproc']} CPUs ({mach['cpu_model']}), kernel {mach['kernel']}, {mach['memory']}, "
        f"Python {mach['python']}. Server on CPU {a.server_cpu}, dnsperf {v.get('dnsperf', '?')} on CPU "
        f"{a.load_cpu}{' (forwarders upstream: nsd on CPU ' + str(a.load_cpu) + ')' if ctx.upstream_label else ''}."),
        (f"Cluster: seed {meta['seed']}, {meta['services']:,} services ({meta['kinds'].get('clusterip', 0):,} ClusterIP, "
        f"{meta['dual_stack']:,} dual-stack, {meta['kinds'].get('headless', 0)} headless, "
        f"{meta['kinds'].get('ExternalName', 0)} ExternalName, {meta['named_port_services']:,} with named ports), "
        f"{meta['namespaces']} namespaces, {meta['endpoints']:,} endpoints; zone {meta['zone_rrs']:,} RRs."),
        f"Runs: {a.repeats} rounds, servers alternated in each; self-paced {a.duration:g} s (-c {a.clients}, "
        f"100 outstanding) for QPS, CPU and loss; fixed {a.lat_qps:,} QPS for {a.lat_duration:g} s for latency."
        + new_cases_line(ctx),
        "",
        table(ctx, summ, startup),
    ] + forwarder_flags(ctx) + [
        "",
    ]
    head.append("¹ dnsperf's core was ≥ 90% busy: the load generator, not the server, set this QPS "
                "(a lower bound on the server's capacity).")
    st = []
    for key, lst in startup.items():
        s = [x["s"] for x in lst if x["s"] is not None]
        if s:
            cpu = [x["cpu_s"] for x in lst if x.get("cpu_s") is not None]
            st.append(f"{key} {statistics.median(s):.3f} s (min {min(s):.3f}, max {max(s):.3f}; "
                      f"{statistics.median(cpu):.2f} CPU s; RSS {max(x['rss_mb'] for x in lst):.0f} MB)")
        else:
            st.append(f"{key} did not answer")
    if st:
        head.append("")
        head.append(f"Start-up, process start → first correct answer, {meta['services']:,} services "
                    f"({a.startup_repeats} runs each): " + "; ".join(st) + ".")
    head += ["", "Targets (issue 5):"] + [f"- {t}" for t in targets(ctx, summ, startup)]
    head += script_sections(ctx)
    notes = list(ctx.notes)
    rc_ours, rc_ref = summ.get(("udp", "clusterdns")), summ.get(("udp", "knotd")) or summ.get(("udp", "nsd"))
    if rc_ours and rc_ref:
        notes.append(f"mix rcodes: clusterdns {rc_ours['rcodes']} · avg response {rc_ours['resp_bytes']} B; "
                     f"{rc_ref['label']} {rc_ref['rcodes']} · {rc_ref['resp_bytes']} B")
    for case in ("udp", "tcp"):
        cold = [(summ[k]["label"], summ[k]["cold_qps"], summ[k]["cold_us_per_q"]) for k in summ
                if k[0] == case and summ[k].get("cold_qps")]
        if cold:
            notes.append(f"{case.upper()} cold pass (one pass over the {ctx.meta['mix_unique']:,} distinct "
                         f"questions of mix.txt right after start, not in the table): " +
                         "; ".join(f"{lab} {q:,.0f} QPS, {fmt(u, '.1f')} µs/q" for lab, q, u in cold))
    notes += new_notes(ctx, summ)
    loads = [r.get("other_load_server_cpu_pct") for r in ctx.results if r.get("other_load_server_cpu_pct") is not None]
    if loads:
        notes.append(f"other processes on the server's CPU during the runs (user+system time of the core "
                     f"not charged to the server, a lower bound): median {statistics.median(loads):.0f}%, "
                     f"max {max(loads):.0f}% of the core; about 0 on a quiet machine. When it is high, "
                     f"QPS and latency are noisy and the CPU µs/q column is the steadier comparison")
    bad = [r for r in ctx.results if r["rc"] != 0]
    if bad:
        notes.append(f"{len(bad)} dnsperf runs exited non-zero: " +
                     ", ".join(f"{r['case']}/{r['phase']}/{r['server']} rc={r['rc']}" for r in bad[:5]))
    notes += [f"skipped: {s}" for s in ctx.skipped]
    if notes:
        head += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(head) + "\n"


# --------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="~1 min: 1 round, 2 s self-paced + 2 s fixed-rate per server, 1 start-up run")
    ap.add_argument("--duration", type=float, default=env("BENCH_DURATION"),
                    help="seconds per self-paced run (full 10, quick 2)")
    ap.add_argument("--lat-duration", type=float, default=env("BENCH_LAT_DURATION"),
                    help="seconds per fixed-rate run (full 5, quick 2)")
    ap.add_argument("--repeats", type=int, default=env("BENCH_REPEATS"), help="rounds (full 3, quick 1)")
    ap.add_argument("--startup-repeats", type=int, default=env("BENCH_STARTUP_REPEATS"),
                    help="start-up measurements per server (full 3, quick 1)")
    ap.add_argument("--services", type=int, default=int(env("BENCH_SERVICES", 5000)))
    ap.add_argument("--seed", type=int, default=int(env("BENCH_SEED", 42)))
    ap.add_argument("--peers", default=env("BENCH_PEERS", ",".join(ALL_PEERS)),
                    help=f"comma list of {','.join(ALL_PEERS)} (default all; missing ones are skipped)")
    ap.add_argument("--cases", default=env("BENCH_CASES", ",".join(ALL_CASES)),
                    help=f"comma list of {','.join(ALL_CASES)}")
    ap.add_argument("--lat-qps", type=int, default=int(env("BENCH_LAT_QPS", 10000)),
                    help="fixed rate for the latency runs (0 skips them)")
    ap.add_argument("--clients", type=int, default=int(env("BENCH_CLIENTS", 10)))
    ap.add_argument("--server-cpu", type=int, default=int(env("BENCH_SERVER_CPU", 0)))
    ap.add_argument("--load-cpu", type=int, default=int(env("BENCH_LOAD_CPU", 1)))
    ap.add_argument("--out", default=env("BENCH_OUT"), help="results folder (default bench/results/<time>)")
    ap.add_argument("--gen-dir", default=env("BENCH_GEN"),
                    help="generated cluster folder (default bench/gen/s<seed>-n<services>)")
    ap.add_argument("--clusterdns", default=env("BENCH_CLUSTERDNS"),
                    help="command that runs clusterdns (default: the venv's clusterdns)")
    ap.add_argument("--node-cache-args", default=env("BENCH_NODE_CACHE_ARGS", ""),
                    help="extra node-cache flags (default none: its defaults, TCP to the cluster DNS as "
                         "node-local-dns's force_tcp; --cluster-udp asks it over UDP as dnsmasq and unbound do)")
    ap.add_argument("--dnsmasq-cache", type=int, default=100000,
                    help="dnsmasq --cache-size (default 100000)")
    ap.add_argument("--miss-lines", type=int, default=1_500_000, help="names per self-paced miss run, at most")
    ap.add_argument("--miss-rate-cap", type=int, default=150_000,
                    help="miss names per second of run time written to the miss files")
    ap.add_argument("--ready-timeout", type=float, default=60.0)
    ap.add_argument("--cold-duration", type=float, default=env("BENCH_COLD_DURATION"),
                    help="cold: seconds of mix right after the first answer (full 8, quick 4)")
    ap.add_argument("--fresh-cap", type=float, default=60.0,
                    help="fresh: -l cap of a run (the file ends it well before)")
    ap.add_argument("--fresh-existing", type=float, default=0.15,
                    help="fresh: share of existing names in the file (default 0.15)")
    ap.add_argument("--churn-rate", type=float, default=float(env("BENCH_CHURN_RATE", 100)),
                    help="churn: Service/EndpointSlice changes per second (default 100)")
    ap.add_argument("--churn-duration", type=float, default=env("BENCH_CHURN_DURATION"),
                    help="churn: seconds of mix per run (full 10, quick 3)")
    ap.add_argument("--churn-probe-every", type=int, default=6,
                    help="churn: time every N-th visible change (default 6: ~12 a second at 100/s)")
    ap.add_argument("--churn-probe-cadence", type=float, default=0.00025,
                    help="churn: seconds between the probes of one timed change (default 0.00025)")
    ap.add_argument("--scale-services", type=int, default=10000, help="memory: bench/scale.py --services")
    ap.add_argument("--scale-endpoints-per-service", type=int, default=10,
                    help="memory: bench/scale.py --endpoints-per-service")
    ap.add_argument("--scale-events", type=int, default=None, help="memory: bench/scale.py --events (300, quick 100)")
    ap.add_argument("--no-install", action="store_true", default=bool(env("BENCH_NO_INSTALL")),
                    help="never run apt-get")
    a = ap.parse_args(argv)
    full = {"duration": 10.0, "lat_duration": 5.0, "repeats": 3, "startup_repeats": 3,
            "cold_duration": 8.0, "churn_duration": 10.0, "scale_events": 300}
    quick = {"duration": 2.0, "lat_duration": 2.0, "repeats": 1, "startup_repeats": 1,
             "cold_duration": 4.0, "churn_duration": 3.0, "scale_events": 100}
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.duration, a.lat_duration = float(a.duration), float(a.lat_duration)
    a.cold_duration, a.churn_duration = float(a.cold_duration), float(a.churn_duration)
    a.scale_events = int(a.scale_events)
    if not 0 < a.fresh_existing < 1:
        ap.error("--fresh-existing must be between 0 and 1")
    a.repeats, a.startup_repeats = int(a.repeats), int(a.startup_repeats)
    a.peers = [p.strip() for p in a.peers.split(",") if p.strip()]
    a.cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    for p in a.peers:
        if p not in ALL_PEERS:
            ap.error(f"unknown peer {p!r} (known: {', '.join(ALL_PEERS)})")
    for c in a.cases:
        if c not in ALL_CASES:
            ap.error(f"unknown case {c!r} (known: {', '.join(ALL_CASES)})")
    cpus = os.sched_getaffinity(0)
    if a.server_cpu not in cpus or a.load_cpu not in cpus or a.server_cpu == a.load_cpu:
        log(f"CPUs {sorted(cpus)}: cannot pin server to {a.server_cpu} and dnsperf to {a.load_cpu}; not pinning")
        a.server_cpu = a.load_cpu = None
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    # SIGTERM (e.g. from a test's timeout) unwinds like Ctrl-C, so the finally below stops
    # every server this script started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = a.out or os.path.join(HERE, "results", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(os.path.join(out, "raw"), exist_ok=True)
    rundir = tempfile.mkdtemp(prefix="clusterdns-bench.")
    ctx = Ctx(a=a, out=out, rundir=rundir, meta={}, files={})
    servers: list[Server] = []
    try:
        return _main(ctx, servers)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for p in reversed(ctx.procs):
            p.stop()
        shutil.rmtree(rundir, ignore_errors=True)


def _main(ctx: Ctx, servers: list[Server]) -> int:
    a = ctx.a
    t_start = time.monotonic()
    # only the peers the selected cases use: the authoritative ones for startup/udp/tcp and
    # the new cases (knotd, else nsd), the forwarders (and nsd, their upstream) for hit/miss
    used = set()
    if {"startup", "udp", "tcp"} & set(a.cases):
        used |= set(AUTH_PEERS)
    if {"hit", "miss"} & set(a.cases):
        used |= set(FWD_PEERS) | {"nsd"}
    if set(NEW_CASES) & set(a.cases):
        used |= {"knotd"} if "knotd" in a.peers else {"nsd"}
    a.peers = [p for p in a.peers if p in used]
    need = ["dnsperf"] + [p for p in a.peers if p in PACKAGES]
    install_missing(ctx, need)
    if not have("dnsperf"):
        log("dnsperf is not installed (Debian package dnsperf) and could not be installed")
        return 2
    if not shutil.which("taskset") and a.server_cpu is not None:
        log("taskset missing: not pinning")
        a.server_cpu = a.load_cpu = None
    for p in a.peers:
        if p in PACKAGES and not have(p):
            ctx.skipped.append(f"{p}: not installed (Debian package {PACKAGES[p]})")
    if "node-cache" in a.peers and not node_cache_available(ctx):
        ctx.skipped.append("clusterdns node-cache: `clusterdns node-cache --help` does not work")
        a.peers = [p for p in a.peers if p != "node-cache"]
    a.peers = [p for p in a.peers if p not in PACKAGES or have(p)]

    # 1. the cluster
    import gen_cluster
    ctx.gen = a.gen_dir or os.path.join(HERE, "gen", f"s{a.seed}-n{a.services}")
    meta_path = os.path.join(ctx.gen, "meta.json")
    stale = not os.path.exists(meta_path) or any(
        os.path.getmtime(os.path.join(HERE, f)) > os.path.getmtime(meta_path)
        for f in ("gen_cluster.py", "gen_zone.py")) or \
        not os.path.exists(os.path.join(ctx.gen, "hit_ext.txt"))
    if stale:
        log(f"generating the cluster: seed {a.seed}, {a.services} services -> {ctx.gen}")
        gen_cluster.generate(ctx.gen, a.seed, a.services)
    with open(meta_path) as f:
        ctx.meta = json.load(f)
    ctx.meta["versions"] = versions()
    ctx.files = {k: os.path.join(ctx.gen, f"{k}.txt") for k in ("mix", "hit", "nx")}
    hu = os.path.join(ctx.gen, "hit_unique.txt")
    if stale or not os.path.exists(hu):
        with open(ctx.files["hit"]) as f, open(hu, "w") as g:
            g.writelines(dict.fromkeys(f))
    ctx.files["hit_unique"] = hu
    ctx.files["hit_ext"] = os.path.join(ctx.gen, "hit_ext.txt")
    he = os.path.join(ctx.gen, "hit_ext_unique.txt")
    if stale or not os.path.exists(he):
        with open(ctx.files["hit_ext"]) as f, open(he, "w") as g:
            g.writelines(dict.fromkeys(f))
    ctx.files["hit_ext_unique"] = he
    mu = os.path.join(ctx.gen, "mix_unique.txt")
    if stale or not os.path.exists(mu):
        with open(ctx.files["mix"]) as f, open(mu, "w") as g:
            g.writelines(dict.fromkeys(f))
    ctx.files["mix_unique"] = mu
    with open(mu) as f:
        ctx.meta["mix_unique"] = sum(1 for _ in f)
    m = ctx.meta
    log(f"cluster: {m['services']} services {m['kinds']}, {m['endpoints']} endpoints, {m['zone_rrs']} RRs")
    with open(os.path.join(ctx.out, "run.json"), "w") as f:
        json.dump({"args": vars(a), "machine": machine(), "meta": m}, f, indent=1, default=str)

    # 2. start-up
    startup = {}
    if "startup" in a.cases:
        log("== start-up (process start -> first correct answer)")
        startup = measure_startup(ctx)
    elif "memory" in a.cases:
        log("== start-up from manifests, clusterdns only (for the memory case)")
        startup = measure_startup(ctx, ["clusterdns"])

    # 3. servers
    auth_cases = [c for c in ("udp", "tcp") if c in a.cases]
    fwd_cases = [c for c in ("hit", "miss") if c in a.cases]
    by_key: dict[str, Server] = {}
    if auth_cases:
        log("== starting authoritative servers")
        for key in ["clusterdns"] + [p for p in AUTH_PEERS if p in a.peers]:
            s = start(ctx, key, a.server_cpu)
            if s:
                by_key[key] = s
    upstream = None
    fwd = [p for p in FWD_PEERS if p in a.peers]
    if fwd_cases and fwd:
        log("== starting the forwarders' upstream and the forwarders")
        up_key = "nsd" if have("nsd") else ("knotd" if have("knotd") else "clusterdns")
        upstream = start(ctx, up_key, a.load_cpu, name=f"upstream-{up_key}")
        if upstream is None:
            ctx.skipped.append("forwarder rows: the upstream did not start")
            fwd = []
        else:
            ctx.upstream_label = upstream.label
            if up_key == "knotd":
                ctx.notes.append("upstream is knotd (nsd missing): knotd re-pins its UDP worker to CPU 0")
            if up_key != "nsd" and "serve-fwd" in fwd:
                ctx.skipped.append("serve --upstream rows: only the nsd upstream serves the external zone")
                fwd = [k for k in fwd if k != "serve-fwd"]
        for key in fwd:
            s = start(ctx, key, a.server_cpu, upstream_port=upstream.port)
            if s:
                by_key[key] = s
    if by_key or upstream:
        check_loopback_only(ctx, list(by_key.values()) + ([upstream] if upstream else []))
    if "clusterdns" in by_key and ("knotd" in by_key or "nsd" in by_key):
        compare_answers(ctx, by_key["clusterdns"], by_key.get("knotd") or by_key["nsd"])

    # 4. load
    for case in auth_cases:
        order = ["clusterdns", "knotd"] + (["nsd"] if case == "udp" else [])
        srvs = [by_key[k] for k in order if k in by_key]
        log(f"== {case}: {' / '.join(s.key for s in srvs)} alternated, {a.repeats} rounds")
        run_case(ctx, case, srvs, None)
    for case in fwd_cases:
        srvs = [by_key[k] for k in FWD_PEERS if k in by_key]
        if srvs:
            log(f"== {case}: {' / '.join(s.key for s in srvs)} alternated, {a.repeats} rounds")
            run_case(ctx, case, srvs, upstream)
            by_key.update((s.key, s) for s in srvs)  # the miss case restarts them
    if "cold" in a.cases:
        run_cold(ctx)
    if "fresh" in a.cases:
        run_fresh(ctx)
    if "churn" in a.cases:
        run_churn(ctx, by_key)
    if "memory" in a.cases:
        run_memory(ctx, churned="churn" in a.cases)
    for case in SCRIPT_CASES:
        if case in a.cases:
            run_script_case(ctx, case)
    if ctx.api_srv is not None:
        by_key["clusterdns-api"] = ctx.api_srv
    for s in by_key.values():
        if not s.proc.alive():
            ctx.notes.append(f"{s.key} exited during the run (rc {s.proc.p.returncode}); "
                             f"log tail: {s.proc.log_tail(3).strip()}")

    # 5. table
    text = report(ctx, startup)
    text += f"\nTotal benchmark time {time.monotonic() - t_start:.0f} s; raw output in {ctx.out}\n"
    with open(os.path.join(ctx.out, "table.md"), "w") as f:
        f.write(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
