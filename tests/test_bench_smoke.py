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
