"""How to reach the Kubernetes API: base URL, TLS and per-request auth headers.

The official `kubernetes` package is used for configuration and authentication only
(kubeconfig parsing, contexts, exec/OIDC plugins, the in-cluster service account whose
token it re-reads as the kubelet rotates it). The HTTP itself is aiohttp with raw JSON
bodies: the generated models are ~6x slower on large lists and raise on the
`endpoints: null` real API servers send (dns-spec.md §3.11, operators.md §2.3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

from clusterdns.kube import lean_kubernetes

lean_kubernetes.install()  # before the first kubernetes import: 13 MB of models skipped

from kubernetes.client import Configuration  # noqa: E402 - after install()
from kubernetes.config.config_exception import ConfigException  # noqa: E402 - after install()
from kubernetes.config.incluster_config import (  # noqa: E402 - after install()
    SERVICE_HOST_ENV_NAME,
    SERVICE_PORT_ENV_NAME,
    InClusterConfigLoader,
)
from kubernetes.config.kube_config import load_kube_config  # noqa: E402 - after install()

log = logging.getLogger("clusterdns")

#: where the kubelet mounts the pod's service account (token, ca.crt, namespace)
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiConfigError(Exception):
    """No usable API configuration (no kubeconfig, not in a pod, bad context...)."""


@dataclass
class ApiConnection:
    """What a list or watch request needs; auth headers are asked for per request."""

    base_url: str
    ssl: ssl.SSLContext | bool  # False: verification disabled (insecure-skip-tls-verify)
    server_hostname: str | None  # tls-server-name from the kubeconfig
    source: str  # "in-cluster" or the kubeconfig path, for the startup log line
    config: Configuration

    async def headers(self) -> dict[str, str]:
        """Authorization headers, fresh for this request.

        The package's refresh hook re-reads a rotated service-account token (once a
        minute) or runs an exec plugin; both may block, so it runs off the event loop.
        """
        return await asyncio.to_thread(self._headers_now)

    def _headers_now(self) -> dict[str, str]:
        out = {"Accept": "application/json", "User-Agent": "clusterdns"}
        bearer = self.config.auth_settings().get("BearerToken")
        token = bearer.get("value") if bearer else None
        if not token and (self.config.username or self.config.password):
            token = self.config.get_basic_auth_token()
        if token:
            out["Authorization"] = token
        return out

    def session(self, connect_timeout: float = 10.0) -> aiohttp.ClientSession:
        """A client session for this API; watches set their own inactivity timeouts."""
        timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout)
        connector = aiohttp.TCPConnector(ssl=self.ssl, limit=20)
        return aiohttp.ClientSession(timeout=timeout, connector=connector)

    def url(self, path: str) -> str:
        """Absolute URL; the host may carry a path prefix (API proxies such as Rancher's)."""
        return self.base_url + path


def _ssl_context(cfg: Configuration) -> ssl.SSLContext | bool:
    if not cfg.verify_ssl:
        return False
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    return ctx


def in_cluster() -> bool:
    """Are we in a pod? The kubelet sets these for every container."""
    return bool(os.environ.get(SERVICE_HOST_ENV_NAME)) and bool(os.environ.get(SERVICE_PORT_ENV_NAME))


def load_connection(
    kubeconfig: str | None = None,
    context: str | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> ApiConnection:
    """Pick the API configuration the way client-go's BuildConfigFromFlags does.

    An explicit `--kubeconfig` wins; else the in-cluster service account inside a pod;
    else `$KUBECONFIG` (colon-separated list allowed) or `~/.kube/config`, with `context`.
    """
    cfg = type.__call__(Configuration)  # never touch the package-wide default
    try:
        if kubeconfig is None and in_cluster():
            InClusterConfigLoader(
                token_filename=str(service_account_dir / "token"),
                cert_filename=str(service_account_dir / "ca.crt"),
            ).load_and_set(cfg)
            source = "in-cluster service account"
        else:
            path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            if not any(os.path.isfile(p) for p in path.split(os.pathsep) if p):
                where = "" if kubeconfig or os.environ.get("KUBECONFIG") else "not in a pod, and "
                raise ApiConfigError(f"{where}no kubeconfig file at {path}")
            # persist_config=False: never write refreshed tokens back (read-only root fs)
            load_kube_config(config_file=path, context=context, client_configuration=cfg, persist_config=False)
            source = path
    except (ConfigException, OSError, ValueError, TypeError, KeyError, yaml.YAMLError) as e:
        raise ApiConfigError(f"cannot configure the Kubernetes API client: {e}") from e
    try:
        tls = _ssl_context(cfg) if cfg.host.startswith("https:") else False
    except (OSError, ssl.SSLError) as e:
        raise ApiConfigError(f"cannot load the API server's TLS settings: {e}") from e
    return ApiConnection(cfg.host.rstrip("/"), tls, cfg.tls_server_name or None, source, cfg)
