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
   `clusterdns node-cache`, dnsmasq, unbound (caching forwarders to an nsd upstream pinned to
   the load CPU); checks a sample of answers against knotd's;
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
FWD_PEERS = ("node-cache", "dnsmasq", "unbound")
ALL_PEERS = AUTH_PEERS + FWD_PEERS
ALL_CASES = ("startup", "udp", "tcp", "hit", "miss")
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
                 env: dict | None = None) -> None:
        self.name = name
        self.cmd = (["taskset", "-c", str(cpu)] if cpu is not None else []) + cmd
        self.log_path = os.path.join(logdir, f"{name}.log")
        self._log = open(self.log_path, "w")
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                  stderr=subprocess.STDOUT, cwd=logdir,
                                  env={**os.environ, **(env or {})})
        self.pid = self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def log_tail(self, n: int = 8) -> str:
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
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
               interval: float = 0.01) -> float | None:
    """Seconds from process start to the first (correct) answer, None on timeout/exit.
    Sets proc.ready_cpu_s: CPU seconds the process tree had used by then."""
    deadline = proc.t0 + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            return None
        r = ask(port, name, timeout=0.05)
        if (answered(r) if need_answer else r is not None):
            t = time.monotonic() - proc.t0
            proc.ready_cpu_s = cpu_ticks(proc.pid) / CLK
            return t
        time.sleep(interval)
    return None


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
    d["loss_pct"] = 100.0 * d["lost"] / d["sent"] if d["sent"] else 0.0
    # -S 1: one "<unix time>: <qps>" line per second; the last partial second is dropped
    per_s = [float(x) for x in re.findall(r"^\s*\d+\.\d+: ([\d.]+)\s*$", text, re.M)]
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


def dnsperf(ctx: Ctx, srv: Server, case: str, phase: str, rnd: int, datafile: str,
            extra: list[str]) -> dict:
    a = ctx.a
    dur = {"max": a.duration, "rate": a.lat_duration, "cold": 60.0}[phase]
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(srv.port), "-d", datafile,
           "-c", str(a.clients), "-l", str(dur)] + extra
    if phase == "max":
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
    t0 = time.monotonic()
    rc = 0
    with open(raw_path, "w+") as raw:
        try:
            rc = subprocess.run(cmd, stdout=raw, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                timeout=dur + 20).returncode
        except subprocess.TimeoutExpired:  # subprocess.run kills it (our own child) on timeout
            rc = 124
        wall = time.monotonic() - t0
        c1, k1 = cpu_ticks(srv.proc.pid), core_times()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        raw.seek(0)
        text = raw.read()
    d = parse_dnsperf(text)
    lat = []
    if phase == "rate":
        lat = sorted(float(m) for m in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", text, re.M))
        if not d["completed"] or len(lat) < 0.5 * d["completed"]:
            lat = []  # -v output not as expected: no p99 rather than a wrong one
        with open(raw_path, "w") as raw:  # keep the summary, not one line per query
            raw.write(re.sub(r"^> .*\n", "", text, flags=re.M))
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
    }
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
    log(f"  {case:<4} {phase:<4} r{rnd} {srv.key:<10} qps={d['qps']:>9.0f} avg={d['avg_ms']:.3f}ms "
        f"{extra_s}loss={d['loss_pct']:.2f}% srv_us/q={r['server_us_per_q'] or 0:.1f} "
        f"dnsperf_cpu={r['loadgen_cpu_pct'] or 0:.0f}% rc={rc}")
    return r


def warm(ctx: Ctx, srv: Server) -> None:
    """One bounded pass over the distinct hit names, so every hit-run query is cached."""
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(srv.port), "-d", ctx.files["hit_unique"],
           "-c", str(ctx.a.clients), "-n", "1", "-l", "30"]
    if ctx.a.load_cpu is not None:
        cmd = ["taskset", "-c", str(ctx.a.load_cpu)] + cmd
    try:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       stdin=subprocess.DEVNULL, timeout=45)
    except subprocess.TimeoutExpired:
        log(f"  warm-up of {srv.key} timed out")


def miss_file(ctx: Ctx, phase: str, rnd: int) -> str:
    """Names never asked before in this benchmark (one file per round, shared by the
    forwarders: each has its own cache; the upstream nsd caches nothing)."""
    a = ctx.a
    if phase == "max":
        n = min(a.miss_lines, int(a.duration * a.miss_rate_cap))
    else:
        n = int(a.lat_duration * a.lat_qps * 1.2) + 1000
    path = os.path.join(ctx.rundir, f"miss-{phase}-{rnd}.txt")
    if not os.path.exists(path):
        nns = max(1, ctx.meta["namespaces"])
        with open(path, "w") as f:
            f.writelines(f"u{phase[0]}{rnd}-{i:07d}.ns-{i % nns}.svc.{DOMAIN} A\n" for i in range(n))
    return path


# --------------------------------------------------------------------------- servers

def render(ctx: Ctx, template: str, d: str, port: int, upstream_port: int = 0) -> str:
    with open(os.path.join(HERE, "configs", template + ".in")) as f:
        text = f.read()
    zone = ctx.meta["zone_file"]
    for k, v in {"@RUNDIR@": d, "@PORT@": str(port), "@UPSTREAM_PORT@": str(upstream_port),
                 "@ZONEDIR@": os.path.dirname(zone), "@ZONEFILE@": zone, "@DOMAIN@": DOMAIN,
                 "@MINTTL@": "0"}.items():
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
          name: str | None = None) -> Server | None:
    """Start one server on a free loopback port and wait until it answers."""
    name = name or key
    port = free_port()
    d = os.path.join(ctx.rundir, name)
    os.makedirs(d, exist_ok=True)
    ver = ctx.meta.get("versions", {}).get(key, "")
    role = "auth"
    if key == "clusterdns":
        cmd = clusterdns_cmd(ctx) + ["serve", "--manifests", os.path.join(ctx.gen, "cluster.yaml"),
                                     "--listen", f"127.0.0.1:{port}", "--ttl", "30",
                                     "--log-level", "warning"]
        label = "clusterdns serve"
    elif key == "knotd":
        os.makedirs(os.path.join(d, "knot-db"), exist_ok=True)
        cmd = ["knotd", "-c", render(ctx, "knot.conf", d, port)]
        label = f"knotd {ver}"
    elif key == "nsd":
        cmd = ["nsd", "-d", "-c", render(ctx, "nsd.conf", d, port)]
        label = f"nsd {ver}"
    elif key == "node-cache":
        role = "fwd"
        cmd = clusterdns_cmd(ctx) + [
            "node-cache", "--listen", f"127.0.0.1:{port}", "--health", f"127.0.0.1:{free_port()}",
            "--cluster-dns", f"127.0.0.1:{upstream_port}", "--upstream", f"127.0.0.1:{upstream_port}",
            "--no-loop-detect", "--log-level", "warning"] + ctx.a.node_cache_args.split()
        label = "clusterdns node-cache"
    elif key == "dnsmasq":
        role = "fwd"
        cmd = ["dnsmasq", "-k", "-C", "/dev/null", f"--port={port}", "--listen-address=127.0.0.1",
               "--bind-interfaces", "--no-resolv", "--no-hosts", "--no-poll",
               f"--server=/{DOMAIN}/127.0.0.1#{upstream_port}@127.0.0.1",
               f"--cache-size={ctx.a.dnsmasq_cache}", "--dns-forward-max=1000", "--pid-file=",
               "-u", "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")]
        label = f"dnsmasq {ver}"
    elif key == "unbound":
        role = "fwd"
        render(ctx, "root.hints", d, 0)
        cmd = ["unbound", "-d", "-c", render(ctx, "unbound.conf", d, port, upstream_port)]
        label = f"unbound {ver}"
    else:
        raise ValueError(key)
    proc = Proc(name, cmd, cpu, d)
    ctx.procs.append(proc)
    probe = ctx.meta["probe"]
    if wait_ready(proc, port, probe, ctx.a.ready_timeout, need_answer=True, interval=0.05) is None:
        log(f"!! {name} did not answer {probe} within {ctx.a.ready_timeout}s; log:\n{proc.log_tail()}")
        proc.stop()
        ctx.skipped.append(f"{name}: did not come up (log {proc.log_path})")
        return None
    log(f"   {name} on 127.0.0.1:{port} pid {proc.pid}, threads pinned to cpus {affinity(proc.pid)}")
    return Server(key, label, role, port, proc)


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
        if subprocess.run(cmd, env=env, timeout=600, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(sudo + ["apt-get", "update", "-qq"], env=env, timeout=300)
            subprocess.run(cmd, env=env, timeout=600, stdout=subprocess.DEVNULL)
    except (subprocess.TimeoutExpired, OSError) as exc:
        log(f"apt-get failed: {exc}")
    finally:
        if made_policy:
            os.unlink(policy)


def versions() -> dict:
    def run(cmd, pat=r"(\d+\.\d+(?:\.\d+)?)"):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
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
        r = subprocess.run(clusterdns_cmd(ctx) + ["node-cache", "--help"], capture_output=True,
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
        out = subprocess.run(["ss", "-H", "-l", "-n", "-u", "-t", "-p"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return
    bad = []
    for ln in out.splitlines():
        owners = {int(x) for x in re.findall(r"pid=(\d+)", ln)}
        if owners & pids:
            local = ln.split()[4] if ln.split()[0] in ("udp", "tcp") else ln.split()[3]
            if not (local.startswith("127.") or local.startswith("[::ffff:127.")):
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

def measure_startup(ctx: Ctx) -> dict:
    """Process start -> first correct answer for the probe name (the last service loaded)."""
    out = {}
    keys = ["clusterdns"] + [k for k in AUTH_PEERS if k in ctx.a.peers and have(k)]
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
            t = wait_ready(proc, port, ctx.meta["probe"], ctx.a.ready_timeout)
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
    a = ctx.a
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
                    warm(ctx, srv)
                    dnsperf(ctx, srv, case, phase, rnd, ctx.files["hit"], [])
                elif case == "miss":
                    dnsperf(ctx, srv, case, phase, rnd, miss_file(ctx, phase, rnd), ["-n", "1"])


# --------------------------------------------------------------------------- table

CASE_TITLES = {"udp": "cluster zone, UDP (mix)", "tcp": "cluster zone, TCP (mix)",
               "hit": "forwarder cache hit (hit.txt, warm)",
               "miss": "forwarder cache miss (unique names)"}
OURS = {"udp": "clusterdns", "tcp": "clusterdns", "hit": "node-cache", "miss": "node-cache"}


def summarize(ctx: Ctx) -> dict:
    med = statistics.median
    rows = {}
    for r in ctx.results:
        rows.setdefault((r["case"], r["server"]), []).append(r)
    out = {}
    for (case, server), rs in rows.items():
        cold = [r for r in rs if r["phase"] == "cold"]
        rs = [r for r in rs if r["phase"] != "cold"]
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
        }
    return out


def fmt(v, spec, dash="–"):
    return dash if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(ctx: Ctx, summ: dict, startup: dict) -> str:
    a = ctx.a
    lines = [
        f"| workload | server | QPS, max (median of {a.repeats}; min–max) | worst 1 s | loss % max / @{a.lat_qps // 1000}k "
        f"| avg ms @{a.lat_qps // 1000}k | p99 ms @{a.lat_qps // 1000}k | server CPU µs/q | RSS MB "
        f"| clusterdns ÷ this (QPS · avg lat · CPU/q) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = {"clusterdns": 0, "node-cache": 0, "knotd": 1, "nsd": 2, "dnsmasq": 3, "unbound": 4}
    for case in ("udp", "tcp", "hit", "miss"):
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
    c, d = get("hit", "node-cache"), get("hit", "dnsmasq")
    if c and d and d["qps"]:
        q = c["qps"] / d["qps"]
        out.append(f"node-local cache hits: {q:.2f}x dnsmasq's QPS (≥ 1.0x): {verdict(q >= 1.0)}")
    else:
        out.append("node-local cache hits vs dnsmasq: n/a (node-cache or dnsmasq not measured)")
    c, u = get("miss", "node-cache"), get("miss", "unbound")
    if c and u and u["qps"]:
        q = c["qps"] / u["qps"]
        out.append(f"cache misses: {q:.2f}x unbound's rate (≥ 0.5x); worst second {fmt(c['worst_1s'], ',.0f')} "
                   f"vs median {c['qps']:,.0f} QPS: {verdict(q >= 0.5)}")
    else:
        out.append("cache misses vs unbound: n/a (node-cache or unbound not measured)")
    s = [x["s"] for x in startup.get("clusterdns", []) if x["s"] is not None]
    if s:
        m = statistics.median(s)
        cpu = [x["cpu_s"] for x in startup.get("clusterdns", []) if x.get("cpu_s") is not None]
        out.append(f"start-up, {ctx.meta['services']:,} services from manifests: {m:.3f} s median (< 2 s; "
                   f"{statistics.median(cpu):.2f} s of it on the CPU): {verdict(m < 2.0)}")
    return out


def report(ctx: Ctx, startup: dict) -> str:
    a, meta = ctx.a, ctx.meta
    summ = summarize(ctx)
    mach = machine()
    v = meta.get("versions", {})
    head = [
        f"## clusterdns benchmark — {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Machine: {mach['nproc']} CPUs ({mach['cpu_model']}), kernel {mach['kernel']}, {mach['memory']}, "
        f"Python {mach['python']}. Server on CPU {a.server_cpu}, dnsperf {v.get('dnsperf', '?')} on CPU "
        f"{a.load_cpu}{' (forwarders upstream: nsd on CPU ' + str(a.load_cpu) + ')' if ctx.upstream_label else ''}.",
        f"Cluster: seed {meta['seed']}, {meta['services']:,} services ({meta['kinds'].get('clusterip', 0):,} ClusterIP, "
        f"{meta['dual_stack']:,} dual-stack, {meta['kinds'].get('headless', 0)} headless, "
        f"{meta['kinds'].get('ExternalName', 0)} ExternalName, {meta['named_port_services']:,} with named ports), "
        f"{meta['namespaces']} namespaces, {meta['endpoints']:,} endpoints; zone {meta['zone_rrs']:,} RRs.",
        f"Runs: {a.repeats} rounds, servers alternated in each; self-paced {a.duration:g} s (-c {a.clients}, "
        f"100 outstanding) for QPS, CPU and loss; fixed {a.lat_qps:,} QPS for {a.lat_duration:g} s for latency.",
        "",
        table(ctx, summ, startup),
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
    ap.add_argument("--node-cache-args", default=env("BENCH_NODE_CACHE_ARGS", "--cluster-udp"),
                    help="extra node-cache flags (default --cluster-udp: UDP to the upstream, as "
                         "dnsmasq and unbound do)")
    ap.add_argument("--dnsmasq-cache", type=int, default=100000)
    ap.add_argument("--miss-lines", type=int, default=1_500_000, help="names per self-paced miss run, at most")
    ap.add_argument("--miss-rate-cap", type=int, default=150_000,
                    help="miss names per second of run time written to the miss files")
    ap.add_argument("--ready-timeout", type=float, default=60.0)
    ap.add_argument("--no-install", action="store_true", default=bool(env("BENCH_NO_INSTALL")),
                    help="never run apt-get")
    a = ap.parse_args(argv)
    full = {"duration": 10.0, "lat_duration": 5.0, "repeats": 3, "startup_repeats": 3}
    quick = {"duration": 2.0, "lat_duration": 2.0, "repeats": 1, "startup_repeats": 1}
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.duration, a.lat_duration = float(a.duration), float(a.lat_duration)
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
        for f in ("gen_cluster.py", "gen_zone.py"))
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
        for key in fwd:
            s = start(ctx, key, a.server_cpu, upstream_port=upstream.port)
            if s:
                by_key[key] = s
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
