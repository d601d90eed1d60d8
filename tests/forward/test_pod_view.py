"""The pod's view: glibc, nslookup and dig with a pod's resolv.conf, through the chain

    client -> node-cache on 127.0.0.1:53 -> clusterdns serve (cluster.local, reverse)
                                         -> dnsmasq (everything else)

glibc only talks to port 53, so the node cache takes 127.0.0.1:53 in the test's own
network namespace (CI runs the suite under `unshare -n`), and each client runs under
`unshare -m` with the pod-like resolv.conf bind-mounted on /etc/resolv.conf.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakedns import Dnsmasq
from helpers import DEMO, ServerProcess, port_53_free

POD_RESOLV_CONF = """\
search default.svc.cluster.local svc.cluster.local cluster.local
nameserver 127.0.0.1
options ndots:5 timeout:2 attempts:2
"""


@pytest.fixture(scope="module")
def pod_resolv_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The whole chain up, and the pod's resolv.conf to mount."""
    port_53_free()
    path = tmp_path_factory.mktemp("pod") / "resolv.conf"
    path.write_text(POD_RESOLV_CONF)
    with Dnsmasq("--host-record=web.example.test,192.0.2.7") as upstream, \
            ServerProcess("serve", "--manifests", str(DEMO), "--listen", "127.0.0.1:0",
                          "--upstream", f"127.0.0.1:{upstream.port}") as cluster, \
            ServerProcess("node-cache", "--listen", "127.0.0.1:53", "--health", "",
                          "--cluster-dns", f"127.0.0.1:{cluster.port}",
                          "--upstream", f"127.0.0.1:{upstream.port}"):
        yield path


def in_pod(resolv_conf: Path, *command: str) -> str:
    """Run `command` in a private mount namespace where /etc/resolv.conf is the pod's."""
    tool = shutil.which(command[0])
    if tool is None:
        pytest.fail(f"{command[0]} is not installed (bind9-dnsutils / libc-bin)")
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, str(resolv_conf), tool, *command[1:]],
                          capture_output=True, text=True, timeout=20)
    return done.stdout + done.stderr


@pytest.mark.parametrize("name, address", [
    ("httpd-svc", "10.99.229.179"),  # short name: first search domain
    ("httpd-svc.default", "10.99.229.179"),  # second search domain
    ("my-nginx.default.svc.cluster.local", "10.96.162.149"),  # 4 dots < ndots: search first
    ("web.example.test", "192.0.2.7"),  # only the upstream knows it: after the search list
])
def test_glibc_getent_resolves_like_a_pod(pod_resolv_conf: Path, name: str, address: str) -> None:
    out = in_pod(pod_resolv_conf, "getent", "ahosts", name)
    assert address in out.split(), out


def test_nslookup_uses_the_search_path(pod_resolv_conf: Path) -> None:
    out = in_pod(pod_resolv_conf, "nslookup", "httpd-svc")
    assert "httpd-svc.default.svc.cluster.local" in out and "10.99.229.179" in out, out
    out = in_pod(pod_resolv_conf, "nslookup", "web.example.test")
    assert "192.0.2.7" in out, out


def test_dig_search_resolves_short_names(pod_resolv_conf: Path) -> None:
    out = in_pod(pod_resolv_conf, "dig", "+search", "+short", "httpd-svc.default")
    assert out.split() == ["10.99.229.179"], out
    out = in_pod(pod_resolv_conf, "dig", "+search", "+short", "my-nginx")
    assert out.split() == ["10.96.162.149"], out
