"""Against a running `clusterdns`: metrics move with queries, config reloads (valid,
invalid, ConfigMap-style swap) without dropping queries or the watch cache, SIGTERM
drains without losing an answered query, query-log lines parse, start-up failures
say what to do in one line."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.rcode
import pytest

from clusterdns.obs.logs import parse_common
from helpers import DEMO, ROOT, ServerProcess
from ops_helpers import (
    HEALTH_LINE,
    METRICS_LINE,
    ThreadedUpstream,
    eventually,
    http_get,
    port_from,
    query,
    scrape,
    total,
)

#: starts clusterdns processes end to end: left out of the quick subset (`-m "not slow"`)
pytestmark = pytest.mark.slow

NAME = "httpd-svc.default.svc.cluster.local."
IP = "10.99.229.179"
BASE = ("serve", "--manifests", str(DEMO), "--listen", "127.0.0.1:0")


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clusterdns", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def errors(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if "[ERROR]" in x or "ERROR" in x.split(":")[0]]


# ----------------------------------------------------------------------- CLI basics


def test_version() -> None:
    from clusterdns import __version__
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"clusterdns {__version__}"


def test_check_config(tmp_path: Path) -> None:
    r = run_cli("check-config", str(ROOT / "config" / "clusterdns.yaml"))
    assert r.returncode == 0 and r.stdout.strip().endswith("OK (serve)"), r.stdout + r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("ttl: 30\ncache:\n  success_ttl: -3\n")
    r = run_cli("check-config", str(bad))
    assert r.returncode == 1
    assert r.stdout.strip() == f"{bad}:3: cache.success_ttl: expected 0..604800 seconds, got -3 (integer)"


def test_bad_config_stops_start_up_naming_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("zone: cluster.local\nlog_format: xml\n")
    r = run_cli("serve", "--config", str(bad), "--listen", "127.0.0.1:0")
    assert r.returncode == 2
    assert f"{bad}:2: log_format: expected one of text, json, got 'xml' (string)" in r.stderr


def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        r = run_cli("serve", "--manifests", str(DEMO), "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1
    lines = errors(r.stderr)
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0] and "--listen" in lines[0], r.stderr


def test_metrics_port_in_use_is_one_clear_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = run_cli(*BASE, "--metrics", f"127.0.0.1:{port}")
    assert r.returncode == 1
    lines = errors(r.stderr)
    assert len(lines) == 1 and "/metrics" in lines[0] and "--metrics" in lines[0], r.stderr


def test_unreadable_kubeconfig_is_one_clear_line(tmp_path: Path) -> None:
    r = run_cli("serve", "--kubeconfig", str(tmp_path / "nope"), "--listen", "127.0.0.1:0")
    assert r.returncode != 0
    lines = errors(r.stderr)
    assert len(lines) == 1 and "kubeconfig" in lines[0], r.stderr


# ----------------------------------------------------------------------- metrics


def test_metrics_move_as_queries_are_made() -> None:
    with ThreadedUpstream() as up, \
            ServerProcess(*BASE, "--metrics", "127.0.0.1:0", "--upstream", f"127.0.0.1:{up.port}",
                          "--no-loop-detect") as srv:
        mport = port_from(srv, METRICS_LINE)
        server = f"dns://127.0.0.1:{srv.port}"
        before = scrape(mport)
        for _ in range(5):
            assert query(srv.port, NAME).answer[0][0].address == IP
        for _ in range(2):
            assert query(srv.port, "nope.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
        assert query(srv.port, NAME, tcp=True).rcode() == 0
        assert query(srv.port, "www.example.test.").answer[0][0].address == "192.0.2.1"
        assert query(srv.port, "www.example.test.").answer[0][0].address == "192.0.2.1"  # cache hit
        after = scrape(mport)

        def delta(name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        assert delta("coredns_dns_requests_total", server=server, proto="udp", family="1", type="A", zone=".") == 9
        assert delta("coredns_dns_requests_total", server=server, proto="tcp", type="A") == 1
        assert delta("coredns_dns_responses_total", rcode="NXDOMAIN", plugin="kubernetes") == 2
        assert delta("coredns_dns_responses_total", rcode="NOERROR", plugin="kubernetes") == 6
        assert delta("coredns_dns_responses_total", rcode="NOERROR", plugin="forward") == 1
        assert delta("coredns_dns_responses_total", rcode="NOERROR", plugin="cache") == 1
        # every cluster answer is compiled, asked before or not: 5 A and 2 NXDOMAIN; and the
        # cache hit is the plain lane's (`Handler.cached`), not the general path's
        assert delta("clusterdns_hot_path_answers_total", proto="udp") == 5 + 2 + 1
        assert delta("coredns_cache_hits_total", type="success", zones=".") == 1
        assert delta("coredns_cache_misses_total", zones=".") == 1
        assert delta("coredns_dns_request_duration_seconds_count", server=server, type="A") == 10
        assert delta("coredns_dns_request_size_bytes_count", server=server, proto="udp") == 9
        assert total(after, "coredns_build_info") == 1
        assert total(after, "coredns_plugin_enabled", name="kubernetes") == 1
        assert total(after, "process_resident_memory_bytes") > 0


# ----------------------------------------------------------------------- reload


class QueryLoop:
    """Asks for NAME over UDP in a thread until stopped; records every failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answered = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                r = query(self.port, NAME, timeout=1.0)
                if r.rcode() != 0 or r.answer[0][0].address != IP:
                    self.failures.append(f"wrong answer {r}")
                self.answered += 1
            except (dns.exception.Timeout, OSError) as exc:
                self.failures.append(repr(exc))
            time.sleep(0.002)

    def __enter__(self) -> QueryLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _ttl(port: int) -> int:
    return query(port, NAME).answer[0].ttl


def test_sighup_reload_valid_then_invalid(tmp_path: Path) -> None:
    cfg = tmp_path / "clusterdns.yaml"
    cfg.write_text(f"manifests: [{DEMO}]\nlisten: ['127.0.0.1:0']\nttl: 7\nmetrics: '127.0.0.1:0'\n")
    with ServerProcess("serve", "--config", str(cfg)) as srv, QueryLoop(srv.port) as loop:
        mport = port_from(srv, METRICS_LINE)
        assert _ttl(srv.port) == 7
        cfg.write_text(f"manifests: [{DEMO}]\nlisten: ['127.0.0.1:0']\nttl: 42\nmetrics: '127.0.0.1:0'\n")
        srv.proc.send_signal(signal.SIGHUP)
        eventually(lambda: "config reloaded" in srv.output(), what="the reload line")
        assert _ttl(srv.port) == 42
        objects = total(scrape(mport), "clusterdns_kubernetes_objects", kind="Service")

        cfg.write_text(f"manifests: [{DEMO}]\nlisten: ['127.0.0.1:0']\nttl: 99999\n")
        srv.proc.send_signal(signal.SIGHUP)
        eventually(lambda: "keeping the running config" in srv.output(), what="the rejection line")
        assert f"{cfg}:3: ttl: expected 0..3600" in srv.output()
        assert _ttl(srv.port) == 42
        samples = scrape(mport)
        assert total(samples, "coredns_reload_failed_total") == 1
        assert total(samples, "clusterdns_config_reloads_total", result="success") == 1
        assert total(samples, "clusterdns_kubernetes_objects", kind="Service") == objects
        time.sleep(0.2)
    assert loop.answered > 20 and loop.failures == []


def test_flags_still_win_after_a_reload(tmp_path: Path) -> None:
    cfg = tmp_path / "clusterdns.yaml"
    cfg.write_text(f"manifests: [{DEMO}]\nlisten: ['127.0.0.1:0']\nttl: 7\n")
    with ServerProcess("serve", "--config", str(cfg), "--ttl", "11") as srv:
        assert _ttl(srv.port) == 11
        cfg.write_text(f"manifests: [{DEMO}]\nlisten: ['127.0.0.1:0']\nttl: 8\nlog_level: debug\n")
        srv.proc.send_signal(signal.SIGHUP)
        eventually(lambda: "config reloaded" in srv.output(), what="the reload line")
        assert _ttl(srv.port) == 11


def test_restart_only_keys_are_reported_and_kept(tmp_path: Path) -> None:
    cfg = tmp_path / "clusterdns.yaml"
    cfg.write_text(f"manifests: [{DEMO}]\nlisten: ['127.0.0.1:0']\n")
    with ServerProcess("serve", "--config", str(cfg)) as srv:
        cfg.write_text(f"manifests: [{DEMO}]\nlisten: ['127.0.0.1:1']\nttl: 9\n")
        srv.proc.send_signal(signal.SIGHUP)
        eventually(lambda: "config reloaded" in srv.output(), what="the reload line")
        warning = eventually(lambda: [x for x in srv.lines if "takes effect on restart" in x], what="the warning")
        assert "changes listen:" in warning[0] and "[WARNING]" in warning[0]
        assert _ttl(srv.port) == 9  # still on the old port, with the new ttl


def test_configmap_symlink_swap_is_picked_up_with_watch_config(tmp_path: Path) -> None:
    def version(n: int, ttl: int) -> None:
        data = tmp_path / f"..2026_01_0{n}"
        data.mkdir()
        (data / "clusterdns.yaml").write_text(f"manifests: [{DEMO}]\nlisten: ['127.0.0.1:0']\nttl: {ttl}\n")
        (tmp_path / "..data_tmp").symlink_to(data.name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    version(1, 5)
    (tmp_path / "clusterdns.yaml").symlink_to("..data/clusterdns.yaml")
    with ServerProcess("serve", "--config", str(tmp_path / "clusterdns.yaml"), "--watch-config") as srv, \
            QueryLoop(srv.port) as loop:
        assert _ttl(srv.port) == 5
        version(2, 25)
        eventually(lambda: _ttl(srv.port) == 25, timeout=10, what="the new ttl")
    assert "config reloaded" in srv.output() and loop.failures == []


def test_reload_keeps_the_watch_cache(tmp_path: Path) -> None:
    """Against the test API server: a reload neither re-lists nor reopens watches."""
    from kubeapi import KubeAPIServer, service, write_kubeconfig

    async def scenario() -> None:
        async with KubeAPIServer(bookmark_interval=0.2) as api:
            api.apply(service("app", "web", "10.96.0.10"))
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
            cfg = tmp_path / "c.yaml"
            text = (f"kubeconfig: {kubeconfig}\nlisten: ['127.0.0.1:0']\nhealth: '127.0.0.1:0'\n"
                    f"ready: '127.0.0.1:0'\nmetrics: '127.0.0.1:0'\nlameduck: 0\n")
            cfg.write_text(text + "ttl: 3\n")
            srv = ServerProcess("serve", "--config", str(cfg))
            await asyncio.to_thread(srv.start)
            try:
                for _ in range(100):
                    if api.open_streams() >= 3:
                        break
                    await asyncio.sleep(0.05)
                lists = {r: api.lists(r) for r in ("services", "endpointslices", "namespaces")}
                cfg.write_text(text + "ttl: 33\n")
                srv.proc.send_signal(signal.SIGHUP)
                for _ in range(100):
                    if "config reloaded" in srv.output():
                        break
                    await asyncio.sleep(0.05)
                r = await asyncio.to_thread(query, srv.port, "web.app.svc.cluster.local.")
                assert r.answer[0][0].address == "10.96.0.10" and r.answer[0].ttl == 33
                assert {r: api.lists(r) for r in lists} == lists
                assert api.open_streams() >= 3
                api.apply(service("app", "new", "10.96.0.11"))  # the watch still feeds the store
                for _ in range(100):
                    r = await asyncio.to_thread(query, srv.port, "new.app.svc.cluster.local.")
                    if r.answer:
                        break
                    await asyncio.sleep(0.05)
                assert r.answer[0][0].address == "10.96.0.11"
            finally:
                await asyncio.to_thread(srv.stop)

    asyncio.run(scenario())


# ----------------------------------------------------------------------- SIGTERM


def test_sigterm_lame_duck_then_drain_loses_no_answered_query() -> None:
    with ThreadedUpstream(delay=1.0) as slow:
        srv = ServerProcess(*BASE, "--ready", "127.0.0.1:0", "--health", "127.0.0.1:0", "--lameduck", "1",
                            "--shutdown-timeout", "4", "--upstream", f"127.0.0.1:{slow.port}", "--no-loop-detect")
        srv.start()
        try:
            _, ready_port = (port_from(srv, HEALTH_LINE, 1), port_from(srv, HEALTH_LINE, 2))
            assert http_get(ready_port, "/ready")[0] == 200
            tcp = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            with QueryLoop(srv.port) as loop:
                time.sleep(0.2)
                sent_at = time.monotonic()
                srv.proc.send_signal(signal.SIGTERM)
                eventually(lambda: http_get(ready_port, "/ready")[0] == 503, 1.0, "readiness to drop")
                assert query(srv.port, NAME).answer  # lame duck: still answering
                # a forwarded question still in flight when the listeners close (~1 s)
                time.sleep(0.5)
                q = dns.message.make_query("slow.example.test.", "A")
                wire = q.to_wire()
                tcp.sendall(len(wire).to_bytes(2, "big") + wire)
                eventually(lambda: loop.failures, 3.0, "the listeners to close")
                closed_after = time.monotonic() - sent_at
            size = int.from_bytes(tcp.recv(2), "big")
            reply = dns.message.from_wire(tcp.recv(size))
            assert reply.id == q.id and reply.answer[0][0].address == "192.0.2.1"
            rc = srv.proc.wait(10)
        finally:
            srv.stop()
    assert rc == 0
    assert 0.9 <= closed_after < 3.0
    # every query before the close was answered; the first failure is the close itself
    assert loop.answered > 50
    assert "lame duck" in srv.output() and "stopped" in srv.output().splitlines()[-1]


def test_second_sigterm_skips_the_lame_duck() -> None:
    srv = ServerProcess(*BASE, "--ready", "127.0.0.1:0", "--health", "127.0.0.1:0", "--lameduck", "30")
    srv.start()
    try:
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        eventually(lambda: "lame duck" in srv.output(), what="the lame duck line")
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(10) == 0 and time.monotonic() - started < 10
    finally:
        srv.stop()


# ----------------------------------------------------------------------- query log


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_query_log_lines_parse(fmt: str) -> None:
    import json

    with ServerProcess(*BASE, "--query-log", "--log-format", fmt) as srv:
        sent = [query(srv.port, NAME), query(srv.port, NAME.upper()),  # slow path, then hot path
                query(srv.port, "nope.default.svc.cluster.local.", "AAAA", tcp=True),
                query(srv.port, NAME, use_edns=0, want_dnssec=True, payload=1232)]
        eventually(lambda: sum("clusterdns.query" in x for x in srv.lines) >= 4, what="4 query-log lines")
    lines = [x for x in srv.lines if "clusterdns.query" in x]
    parsed = [parse_common(json.loads(x)["msg"] if fmt == "json" else x) for x in lines]
    assert all(parsed), lines
    assert [p["id"] for p in parsed] == [r.id for r in sent]
    assert [p["name"] for p in parsed] == [NAME, NAME, "nope.default.svc.cluster.local.", NAME]
    assert [p["proto"] for p in parsed] == ["udp", "udp", "tcp", "udp"]
    assert [p["rcode"] for p in parsed] == ["NOERROR", "NOERROR", "NXDOMAIN", "NOERROR"]
    assert parsed[2]["type"] == "AAAA" and parsed[3]["do"] is True and parsed[3]["bufsize"] == 1232
    assert all(p["remote"] == "127.0.0.1" and p["duration"] < 1 and "qr" in p["rflags"].split(",") for p in parsed)


def test_query_log_is_off_by_default_and_samples() -> None:
    with ServerProcess(*BASE) as srv:
        query(srv.port, NAME)
        time.sleep(0.2)
        assert not any("clusterdns.query" in x for x in srv.lines)
    with ServerProcess(*BASE, "--query-log", "--query-log-sample", "5") as srv:
        for _ in range(20):
            query(srv.port, NAME)
        eventually(lambda: sum("clusterdns.query" in x for x in srv.lines) >= 4, what="4 sampled lines")
        time.sleep(0.2)
        assert sum("clusterdns.query" in x for x in srv.lines) == 4


# ----------------------------------------------------------------------- --workers


def test_workers_metrics_add_up_and_sighup_reaches_every_worker(tmp_path: Path) -> None:
    """With --workers, /metrics counts every process's answers, and a reload applies in
    all of them (each query below comes from a new source port, so the kernel spreads
    them over the processes)."""
    cfg = tmp_path / "clusterdns.yaml"
    cfg.write_text(f"manifests: [{DEMO}]\nlisten: ['127.0.0.1:0']\nmetrics: '127.0.0.1:0'\nttl: 7\nworkers: 3\n")
    with ServerProcess("serve", "--config", str(cfg)) as srv:
        mport = port_from(srv, METRICS_LINE)
        eventually(lambda: srv.output().count("worker ") >= 2, what="two workers")
        before = total(scrape(mport), "coredns_dns_requests_total")
        assert {_ttl(srv.port) for _ in range(60)} == {7}
        eventually(lambda: total(scrape(mport), "coredns_dns_requests_total") - before == 60, timeout=6,
                   what="every process's answers in /metrics")
        cfg.write_text(cfg.read_text().replace("ttl: 7", "ttl: 70"))
        srv.proc.send_signal(signal.SIGHUP)
        eventually(lambda: srv.output().count("config reloaded") >= 3, what="a reload in all three processes")
        assert {_ttl(srv.port) for _ in range(60)} == {70}
        assert total(scrape(mport), "coredns_build_info") == 1
