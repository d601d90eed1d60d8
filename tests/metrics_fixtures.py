"""A Metrics object wired to real parts (demo cluster, a forward table, a watch source),
with a little traffic, so every metric family has samples to lint and read."""

from __future__ import annotations

import dns.message

from clusterdns.app.cluster import build_cluster
from clusterdns.kube.manifests import load_manifests
from clusterdns.kube.watch import KubeSource
from clusterdns.obs import metrics as M
from clusterdns.server.tcp import TCPLimits
from clusterdns.settings.schema import ServeConfig
from helpers import DEMO

NAME = "httpd-svc.default.svc.cluster.local."


def wire(name: str = NAME, rdtype: str = "A", **kw: object) -> bytes:
    return dns.message.make_query(name, rdtype, **kw).to_wire()  # type: ignore[arg-type]


def populated() -> M.Metrics:
    store, handler = build_cluster(ServeConfig(manifests=[str(DEMO)], upstreams=["127.0.0.1:9"], loop_detect=False))
    store.load(load_manifests([str(DEMO)])[0])
    source = KubeSource(store, conn=None)  # type: ignore[arg-type] - never run, only its counters are read
    sources = M.Sources(handler=handler, forwarding=handler.forwarding, kube=source,
                        store=store, tcp_limits=TCPLimits(),
                        plugins=("kubernetes", "forward", "cache", "errors", "prometheus"))
    m = M.Metrics(sources)
    s = m.stats
    v4 = s.add_listener("127.0.0.1", 5353)
    v6 = s.add_listener("::1", 5353)
    q = wire(use_edns=0, want_dnssec=True)
    reply = handler.handle(q, False)
    assert isinstance(reply, bytes)
    hot = s.hot_class(q, reply, False)
    hot[v4] += 3
    hot[v6] += 1
    s.observe(v4, True, q, reply, 0.003, "kubernetes")
    s.drop(v4, False, "short")
    M.observe_programming(sources, "cluster_ip", 0.05)
    upstream = handler.forwarding.forwarders[0].upstreams[0]
    upstream.stats.observe(0, 0.012)  # one NOERROR exchange of 12 ms
    upstream.stats.conn_misses += 1
    return m
