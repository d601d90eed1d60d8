"""Against a running `clusterdns`: /health, /ready and /metrics bind where they are told,
in both modes: an address on loopback other than 127.0.0.1 (loopback holds all of 127/8),
[::1], or a host read from an environment variable (`${POD_IP}:PORT`, as the Deployment
does with the downward API); an unset or non-IP variable stops start-up with one line
naming the option and the variable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import DEMO, ROOT, ServerProcess
from ops_helpers import HEALTH_LINE, METRICS_LINE, port_from

#: starts clusterdns processes end to end: left out of the quick subset (`-m "not slow"`)
pytestmark = pytest.mark.slow

BASE = ("serve", "--manifests", str(DEMO), "--listen", "127.0.0.1:0")
#: node-cache with nothing to reach: health and metrics do not need the upstreams
NODE_CACHE = ("node-cache", "--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--cluster-dns", "127.0.0.1:9",
              "--upstream", "127.0.0.1:9", "--no-loop-detect")  # a later --health wins
VAR = "CLUSTERDNS_TEST_POD_IP"


def get(host: str, port: int, path: str) -> tuple[int, str]:
    url = f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # loopback only
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def refused(host: str, port: int) -> bool:
    """Nothing listens on host:port (a server bound to every address would accept)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) != 0


def ports(srv: ServerProcess) -> tuple[int, int, int]:
    """(health, ready, metrics) ports from the log lines."""
    return port_from(srv, HEALTH_LINE, 1), port_from(srv, HEALTH_LINE, 2), port_from(srv, METRICS_LINE)


def assert_served_only_on(host: str, srv: ServerProcess, other: str = "127.0.0.1") -> None:
    health, ready, metrics = ports(srv)
    assert get(host, health, "/health") == (200, "OK")
    assert get(host, ready, "/ready") == (200, "OK")
    status, body = get(host, metrics, "/metrics")
    assert status == 200 and "coredns_dns_requests_total" in body
    for port in (health, ready, metrics):
        assert refused(other, port), f"port {port} also answers on {other}"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clusterdns", *args], check=False, capture_output=True, text=True, cwd=ROOT,
                          timeout=20, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def error_lines(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if "[ERROR]" in x]


# ----------------------------------------------------------------------- literal addresses


def test_serve_endpoints_bound_to_one_loopback_address() -> None:
    with ServerProcess(*BASE, "--health", "127.0.0.2:0", "--ready", "127.0.0.2:0",
                       "--metrics", "127.0.0.2:0") as srv:
        assert "health on 127.0.0.2:" in srv.output() and "metrics on 127.0.0.2:" in srv.output()
        assert_served_only_on("127.0.0.2", srv)


def test_serve_endpoints_bound_to_ipv6_loopback() -> None:
    with ServerProcess(*BASE, "--health", "[::1]:0", "--ready", "[::1]:0", "--metrics", "[::1]:0") as srv:
        assert_served_only_on("::1", srv)


def test_default_stays_every_address() -> None:
    """No host: every address, as CoreDNS (and as before); here :0 so the port is free."""
    with ServerProcess(*BASE, "--health", ":0", "--ready", ":0", "--metrics", ":0") as srv:
        health, _, metrics = ports(srv)
        for host in ("127.0.0.1", "127.0.0.2"):
            assert get(host, health, "/health") == (200, "OK")
            assert get(host, metrics, "/metrics")[0] == 200


# ----------------------------------------------------------------------- ${VAR} hosts


def test_serve_hosts_from_the_environment_via_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, "127.0.0.3")  # ServerProcess passes the environment on
    with ServerProcess(*BASE, "--health", f"${{{VAR}}}:0", "--ready", f"${{{VAR}}}:0",
                       "--metrics", f"${{{VAR}}}:0") as srv:
        assert_served_only_on("127.0.0.3", srv)


def test_serve_hosts_from_the_environment_via_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "clusterdns.yaml"
    cfg.write_text(f"manifests: [{DEMO}]\nlisten: ['127.0.0.1:0']\nhealth: '${{{VAR}}}:0'\n"
                   f"ready: '[${{{VAR}}}]:0'\nmetrics: '${{{VAR}}}:0'\n")
    monkeypatch.setenv(VAR, "::1")  # IPv6 without brackets in the variable, as status.podIP is
    with ServerProcess("serve", "--config", str(cfg)) as srv:
        assert "health on ::1:" in srv.output()
        assert_served_only_on("::1", srv)


def test_node_cache_hosts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, "127.0.0.4")
    with ServerProcess(*NODE_CACHE, "--health", f"${{{VAR}}}:0", "--metrics", f"${{{VAR}}}:0") as srv:
        assert "health on 127.0.0.4:" in srv.output()
        assert_served_only_on("127.0.0.4", srv)


@pytest.mark.parametrize("mode, flag", [("serve", "--health"), ("serve", "--ready"), ("serve", "--metrics"),
                                        ("node-cache", "--health"), ("node-cache", "--metrics")])
def test_unset_variable_stops_start_up_naming_option_and_variable(mode: str, flag: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != VAR}
    args = BASE if mode == "serve" else NODE_CACHE
    r = subprocess.run([sys.executable, "-m", "clusterdns", *args, flag, f"${{{VAR}}}:0"], check=False,
                       capture_output=True, text=True, cwd=ROOT, timeout=20, env={**env, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 1, r.stderr
    (line,) = error_lines(r.stderr)
    assert flag in line and f"environment variable {VAR} is not set" in line, line
    assert "serving" not in r.stderr


def test_variable_that_is_not_an_ip_stops_start_up(tmp_path: Path) -> None:
    cfg = tmp_path / "clusterdns.yaml"
    cfg.write_text(f"manifests: [{DEMO}]\nlisten: ['127.0.0.1:0']\nmetrics: '${{{VAR}}}:0'\n")
    r = run_cli("serve", "--config", str(cfg), env={VAR: "my-pod.local"})
    assert r.returncode == 1, r.stderr
    (line,) = error_lines(r.stderr)
    assert "metrics:" in line and VAR in line and "'my-pod.local', not an IPv4 or IPv6 address" in line, line


def test_kubelet_style_reference_is_a_config_error() -> None:
    """`$(POD_IP)` is the kubelet's syntax; left unexpanded it must not look like a host."""
    r = run_cli(*BASE, "--metrics", "$(POD_IP):9153")
    assert r.returncode == 2
    (line,) = error_lines(r.stderr)
    assert "--metrics" in line and "${VAR}:PORT" in line, line
