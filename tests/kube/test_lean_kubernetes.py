"""The server imports only the configuration half of `kubernetes`; the whole package still works.

Each check runs in a fresh interpreter: the import state is what is under test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_server_import_loads_no_generated_models() -> None:
    got = _run(
        "import json, sys\n"
        "import clusterdns.kube.client, clusterdns.app.cluster\n"
        "mods = [m for m in sys.modules if m.startswith('kubernetes')]\n"
        "print(json.dumps({'models': [m for m in mods if '.models' in m],\n"
        "                  'apis': [m for m in mods if m.startswith('kubernetes.client.api.')],\n"
        "                  'oauth': [m for m in sys.modules if m.startswith(('requests', 'oauthlib.'))],\n"
        "                  'config': 'kubernetes.config.kube_config' in mods}))\n")
    assert got["config"] is True
    assert got["models"] == [] and got["apis"] == []
    assert got["oauth"] == ["oauthlib.oauth2", "requests_oauthlib"]  # hollow: none of their modules, nor requests


def test_whole_package_still_works_after_the_lean_import() -> None:
    got = _run(
        "import json\n"
        "import clusterdns.kube.client\n"
        "import kubernetes\n"
        "from kubernetes import client, watch\n"
        "from kubernetes.client.api_client import ApiClient\n"
        "api = client.CoreV1Api(client.ApiClient(client.Configuration()))\n"
        "from kubernetes.config import kube_config\n"
        "print(json.dumps({'api': type(api).__module__,\n"
        "                  'apiclient_real': client.ApiClient is ApiClient,\n"
        "                  'v1service': client.V1Service.__module__,\n"
        "                  'watch': watch.Watch.__module__,\n"
        "                  'oidc_refresh_builds': type(kube_config.ApiClient()).__module__,\n"
        "                  'oauth_session': type(kube_config.OAuth2Session()).__module__,\n"
        "                  'oauth_error': kube_config.oauthlib.oauth2.rfc6749.errors.InvalidClientIdError.__name__,\n"
        "                  'oauth_real': __import__('requests_oauthlib').OAuth2Session.__module__,\n"
        "                  'version': bool(kubernetes.__version__)}))\n")
    assert got == {"api": "kubernetes.client.api.core_v1_api", "apiclient_real": True,
                   "v1service": "kubernetes.client.models.v1_service",
                   "watch": "kubernetes.watch.watch",
                   "oidc_refresh_builds": "kubernetes.client.api_client",
                   "oauth_session": "requests_oauthlib.oauth2_session", "oauth_error": "InvalidClientIdError",
                   "oauth_real": "requests_oauthlib.oauth2_session", "version": True}


def test_kubernetes_imported_first_is_left_alone() -> None:
    got = _run(
        "import json, sys\n"
        "import kubernetes.client\n"
        "before = sys.modules['kubernetes.client']\n"
        "import clusterdns.kube.client\n"
        "from clusterdns.kube import lean_kubernetes\n"
        "after = sys.modules['kubernetes.client']\n"
        "print(json.dumps({'same': before is after,\n"
        "                  'hollow': lean_kubernetes._is_hollow(after),\n"
        "                  'models': 'kubernetes.client.models' in sys.modules}))\n")
    assert got == {"same": True, "hollow": False, "models": True}


@pytest.mark.parametrize("broken", ["kubernetes.client.configuration"])
def test_unexpected_layout_falls_back_to_the_full_import(broken: str) -> None:
    """If the lean path fails, the plain import runs: only the saving is lost."""
    got = _run(
        "import json, sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    armed = True\n"
        "    def find_spec(self, name, path, target=None):\n"
        f"        if name == {broken!r} and Block.armed:\n"
        "            Block.armed = False\n"
        "            raise ImportError('layout changed')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from clusterdns.kube import client\n"
        "from kubernetes.client import Configuration\n"
        "print(json.dumps({'models': 'kubernetes.client.models' in sys.modules,\n"
        "                  'conf': Configuration.__module__,\n"
        "                  'loads': callable(client.load_connection)}))\n")
    assert got == {"models": True, "conf": "kubernetes.client.configuration", "loads": True}
