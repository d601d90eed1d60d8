"""The benchmark (bench/run.py) still runs end to end: a tiny cluster, ~1 s runs.

Only that it ran and printed its table is checked; the figures are printed (see them with
`pytest -s tests/test_bench_smoke.py`), never asserted. Needs dnsperf (Debian package
dnsperf) and, for the peer row, knotd (knot) or nsd (nsd); everything stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"

pytestmark = pytest.mark.slow


def _peer() -> str:
    for tool in ("knotd", "nsd"):
        if shutil.which(tool) or Path("/usr/sbin", tool).exists():
            return tool
    return ""


@pytest.mark.timeout(150)
def test_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    assert shutil.which("dnsperf"), "dnsperf is missing: `make test` installs it (Debian package dnsperf)"
    peer = _peer()
    cmd = [sys.executable, str(RUN), "--services", "200", "--duration", "1", "--lat-duration", "1",
           "--repeats", "1", "--startup-repeats", "1", "--lat-qps", "2000", "--cases", "startup,udp,tcp",
           "--peers", peer, "--no-install", "--out", str(tmp_path / "out"),
           "--gen-dir", str(tmp_path / "gen")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.terminate()  # run.py stops the servers it started on SIGTERM
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"bench/run.py did not finish in 120 s\n{err[-3000:]}")
    print(out)  # the figures, for the log
    assert proc.returncode == 0, f"bench/run.py exited {proc.returncode}\n{err[-3000:]}"
    assert "| workload | server |" in out, out
    rows = [ln for ln in out.splitlines() if ln.startswith("| cluster zone")]
    assert any("clusterdns serve" in r for r in rows), out
    if peer:
        assert any(peer in r for r in rows), out
    assert (tmp_path / "out" / "table.md").read_text().strip()
    results = [json.loads(ln) for ln in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    ours = [r for r in results if r.get("server") == "clusterdns" and r.get("phase") == "max"]
    assert ours and all(r["completed"] > 0 for r in ours), "clusterdns answered nothing"
    started = [r for r in results if r.get("case") == "startup" and r.get("server") == "clusterdns"]
    assert started and started[0]["seconds"] is not None, "clusterdns never answered at start-up"


@pytest.mark.timeout(150)
def test_soak_runs_every_disruption_and_reports_its_fields(tmp_path: Path) -> None:
    """bench/soak.py, a few seconds on a small cluster: it ran the mix, the three API stops
    (one forcing a re-list through a 410), the upstream stop and the flood, and wrote the
    figures the report is read from. Only that they exist and add up, no thresholds."""
    out_json = tmp_path / "soak.json"
    cmd = [sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "6", "--services", "100",
           "--qps", "300", "--flood-qps", "2000", "--json", str(out_json)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.terminate()  # soak.py stops serve and dnsperf on SIGTERM
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"bench/soak.py did not finish in 120 s\n{err[-3000:]}")
    print(out)
    assert proc.returncode == 0, f"bench/soak.py exited {proc.returncode}\n{err[-3000:]}"
    r = json.loads(out_json.read_text())
    for kind in ("real", "churn", "junk", "outzone"):
        t = r["mix"][kind]
        assert t["sent"] > 0, kind
        assert t["answered"] + t["timeouts"] == t["sent"], (kind, t)
        assert t["right"] + t["wrong"] + t["servfail"] == t["answered"], (kind, t)
    assert r["real"] == r["mix"]["real"]
    assert r["in_zone"]["lost"] == sum(r["mix"][k]["lost"] for k in ("real", "churn", "junk"))
    assert set(r["servfail"]) == {"in_zone", "out_of_zone"}
    assert r["out_of_zone"]["failed_while_upstream_down"] + r["out_of_zone"]["failed_otherwise"] \
        == r["mix"]["outzone"]["lost"]
    whats = [p["what"] for p in r["phases"]]
    assert sum(w.startswith("API down") for w in whats) == 3, whats
    assert "upstream down" in whats, whats
    assert all(p["to_s"] is not None for p in r["phases"]), r["phases"]
    assert r["api"]["relist_after_410"], r["api"]
    assert r["changes"]["applied"] > 0
    assert r["serve"]["peak_rss_mb"] > 0 and r["serve"]["rss_after_sync_mb"] > 0
    if shutil.which("dnsperf"):
        assert r["flood"]["ran"] and r["flood"]["sent"] > 0, r["flood"]
        assert 0.0 <= r["flood"]["answered_rate"] <= 1.0
    assert r["verdict"]["lost_real"] == r["real"]["lost"]
    verdict = "met" if r["verdict"]["met"] else "not met"
    assert f"lost real-name answers: {r['real']['lost']} — {verdict}" in out, out


FLOOD = ROOT / "bench" / "flood.py"
FLOOD_FIELDS = {
    "mode", "flood", "seconds", "flood_sent", "flood_sent_qps", "flood_answered", "flood_answered_qps",
    "flood_rcodes", "mix_qps", "probe_sent", "probe_lost", "probe_wrong", "probe_loss_pct", "probe_p50_ms",
    "probe_p99_ms", "probe_max_ms", "rss_before_mb", "rss_after_mb", "rss_peak_mb", "rss_growth_mb",
    "server_cpu_pct", "server_us_per_q", "other_load_server_cpu_pct", "server_requests", "server_formerr",
    "server_dropped", "server_processed_qps",
    "kernel_drops", "note"}
FLOOD_TARGETS = {"probe_loss_pct", "probe_p99_ms", "rss_growth_mb", "flood_rate_ratio"}


@pytest.mark.timeout(150)
def test_flood_benchmark_reports_every_row_field_and_verdict(tmp_path: Path) -> None:
    """bench/flood.py on a 200-service cluster, 1 s runs: the JSON has a row per (mode, flood)
    with every field, the probe and the floods really ran, and a verdict per target. No
    thresholds: the figures are only printed."""
    assert shutil.which("dnsperf"), "dnsperf is missing: `make test` installs it (Debian package dnsperf)"
    modes = ["serve"] + (["node-cache"] if _peer() else [])
    out_json = tmp_path / "flood.json"
    cmd = [sys.executable, str(FLOOD), "--gen", str(tmp_path / "gen"), "--services", "200", "--seconds", "1",
           "--modes", ",".join(modes), "--json", str(out_json)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.terminate()  # flood.py stops the servers it started on SIGTERM
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"bench/flood.py did not finish in 120 s\n{err[-3000:]}")
    print(out)
    assert proc.returncode == 0, f"bench/flood.py exited {proc.returncode}\n{err[-3000:]}"
    assert "| mode | flood |" in out, out
    data = json.loads(out_json.read_text())
    floods = ("none", "random-subdomain", "junk")
    assert [(r["mode"], r["flood"]) for r in data["rows"]] == [(m, f) for m in modes for f in floods]
    for r in data["rows"]:
        assert set(r) == FLOOD_FIELDS, r
        assert r["probe_sent"] and r["probe_p50_ms"] is not None, f"the probe did not run: {r}"
        assert r["mix_qps"] > 0, f"the mix did not run: {r}"
        if r["flood"] != "none":
            assert r["flood_sent"] > 0 and r["rss_after_mb"] > 0, f"the flood did not run: {r}"
    assert {(v["mode"], v["flood"], v["target"]) for v in data["verdicts"]} == {
        (m, f, t) for m in modes for f in floods[1:] for t in FLOOD_TARGETS}
    assert all(isinstance(v["met"], bool) and v["text"] in out for v in data["verdicts"])
