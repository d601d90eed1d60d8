"""API configuration through the `kubernetes` package: contexts, $KUBECONFIG, exec
credentials refreshed per request, TLS with the kubeconfig's CA, the in-cluster account."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clusterdns.kube.client import ApiConfigError, load_connection
from clusterdns.kube.store import ClusterStore
from clusterdns.kube.watch import KubeSource, WatchSettings
from conftest import FAST, eventually
from kubeapi import KubeAPIServer, service, write_kubeconfig


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return d


def _server_tls(certs: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs / "server.crt", certs / "server.key")
    return ctx


async def _synced(source: KubeSource, timeout: float = 5.0) -> None:
    task = asyncio.create_task(source.run())
    try:
        await eventually(source.synced.is_set, timeout=timeout, what="sync")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_context_flag_picks_the_cluster(kubeapi: KubeAPIServer, tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:9", context="broken",
                          extra_contexts={"test": kubeapi.url})
    assert load_connection(str(kc)).base_url == "http://127.0.0.1:9"  # current-context
    conn = load_connection(str(kc), context="test")
    assert conn.base_url == kubeapi.url
    await _synced(KubeSource(ClusterStore(), conn, WatchSettings(**FAST)))
    with pytest.raises(ApiConfigError, match="nope"):
        load_connection(str(kc), context="nope")


def test_kubeconfig_env_is_used_without_flag(kubeapi: KubeAPIServer, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    kc = write_kubeconfig(tmp_path / "kc", kubeapi.url)
    monkeypatch.setenv("KUBECONFIG", str(kc))
    conn = load_connection()
    assert conn.base_url == kubeapi.url and conn.source == str(kc)


def test_missing_kubeconfig_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ApiConfigError, match=f"no kubeconfig file at {tmp_path / 'absent'}"):
        load_connection(str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ApiConfigError, match=r"not in a pod, and no kubeconfig file at .*/.kube/config"):
        load_connection()
    (tmp_path / "broken").write_text("clusters: [")
    with pytest.raises(ApiConfigError, match="cannot configure the Kubernetes API client"):
        load_connection(str(tmp_path / "broken"))


def test_serve_without_a_usable_kubeconfig_exits_with_the_reason(tmp_path: Path) -> None:
    """A start-up error, not a server that never syncs."""
    proc = subprocess.run([sys.executable, "-m", "clusterdns", "serve", "--kubeconfig", str(tmp_path / "absent"),
                           "--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--ready", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert f"no kubeconfig file at {tmp_path / 'absent'}" in proc.stderr


async def test_exec_credential_is_refreshed_for_each_request(kubeapi: KubeAPIServer, tmp_path: Path) -> None:
    """A rotated credential is picked up on the next request, without a restart."""
    token_file = tmp_path / "token"
    token_file.write_text("test-token")
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import datetime, json, sys\n"
        "exp = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=60))"
        ".strftime('%Y-%m-%dT%H:%M:%SZ')\n"
        f"print(json.dumps({{'apiVersion': 'client.authentication.k8s.io/v1beta1', 'kind': 'ExecCredential',"
        f" 'status': {{'token': open({str(token_file)!r}).read(), 'expirationTimestamp': exp}}}}))\n")
    kc = write_kubeconfig(tmp_path / "kc", kubeapi.url)
    doc = yaml.safe_load(kc.read_text())
    doc["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                        "command": sys.executable, "args": [str(plugin)],
                                        "interactiveMode": "Never"}}
    kc.write_text(yaml.safe_dump(doc))
    source = KubeSource(ClusterStore(), load_connection(str(kc)), WatchSettings(**FAST))
    task = asyncio.create_task(source.run())
    try:
        await eventually(source.synced.is_set, what="sync with the first token")
        kubeapi.token = "rotated"
        token_file.write_text("rotated")
        kubeapi.cut_streams(mid_event=False)
        kubeapi.apply(service("app", "after-rotation", "10.96.0.3"))
        await eventually(lambda: source.store.view("app", "after-rotation"), what="watch with the new token")
        assert kubeapi.auth_seen["Bearer rotated"] >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_tls_verified_with_the_kubeconfig_ca(certs: Path, tmp_path: Path) -> None:
    async with KubeAPIServer(ssl_context=_server_tls(certs)) as api:
        api.apply(service("app", "tls", "10.96.0.4"))
        conn = load_connection(str(write_kubeconfig(tmp_path / "kc", api.url, ca_file=certs / "ca.crt")))
        source = KubeSource(ClusterStore(), conn, WatchSettings(**FAST))
        await _synced(source)
        assert source.store.view("app", "tls") is not None


async def test_tls_with_an_unknown_ca_never_syncs(certs: Path, tmp_path: Path) -> None:
    """Verification is on: a server our CA did not sign is not trusted."""
    async with KubeAPIServer(ssl_context=_server_tls(certs)) as api:
        conn = load_connection(str(write_kubeconfig(tmp_path / "kc", api.url)))  # system CAs only
        source = KubeSource(ClusterStore(), conn, WatchSettings(**FAST))
        with pytest.raises(AssertionError, match="sync"):
            await _synced(source, timeout=1.0)
        assert source.outage and api.lists("services") == 0


async def test_in_cluster_service_account(certs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a pod: KUBERNETES_SERVICE_HOST/PORT, the mounted token and ca.crt."""
    async with KubeAPIServer(token="sa-token", ssl_context=_server_tls(certs)) as api:
        sa = tmp_path / "serviceaccount"
        sa.mkdir()
        (sa / "token").write_text("sa-token")
        (sa / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
        conn = load_connection(service_account_dir=sa)
        assert conn.source == "in-cluster service account" and conn.base_url == api.url
        await _synced(KubeSource(ClusterStore(), conn, WatchSettings(**FAST)))
        assert set(api.auth_seen) == {"bearer sa-token"}  # the mounted token, on every request
