#!/usr/bin/env python3
"""Generate one synthetic Kubernetes cluster, deterministically from a seed.

Adapted from the team's shared rig (shared/bench/gen_cluster.py): one output
folder, the number of namespaces / headless / ExternalName services scales with
--services (5,000 services -> 250 namespaces, 20 headless, 12 ExternalName, as
in docs/perf-anchors.md), and meta.json describes what was written.

Outputs (all from the same in-memory model, so they always agree):

  <out>/cluster.yaml        multi-document YAML: v1 Service + discovery.k8s.io/v1
                            EndpointSlice objects (what clusterdns serves)
  <out>/cluster.local.zone  RFC 1035 zone file of what the Kubernetes DNS spec
                            says those objects publish (for knotd / nsd)
  <out>/mix.txt             dnsperf query file: 70% A (existing services),
                            10% AAAA, 5% SRV, 15% NXDOMAIN search-path junk
  <out>/hit.txt             only A queries for existing ClusterIP services
                            (every line a cache hit once a forwarder is warm)
  <out>/nx.txt              only NXDOMAIN search-path junk (repeating set)
  <out>/ext.test.zone       the same records under ext.test (the forwarders'
                            upstream serves it: names outside the cluster domain)
  <out>/hit_ext.txt         hit.txt with the names moved under ext.test
  <out>/meta.json           seed, sizes, counts, a probe name for start-up timing

The zone rendering lives in gen_zone.py (zone_from_objects), which can also
rebuild the zone from any YAML file of Services/EndpointSlices.

Usage: gen_cluster.py [--seed 42] [--services 5000] [--out DIR]
"""
from __future__ import annotations

import argparse
import ipaddress
import itertools
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gen_zone import zone_from_objects

WORDS = (  # noqa: SIM905 - a word list, wrapped
    "alpha api auth billing cache cart catalog checkout config core data db "
    "edge events feed front gateway graph identity images index ingest "
    "inventory jobs kafka ledger logs mail media metrics notify orders "
    "payments pricing profile queue rank redis report search session "
    "shipping social stock store stream tasks tracker users vault web "
    "worker zookeeper"
).split()

NS_WORDS = (  # noqa: SIM905 - a word list, wrapped
    "team prod stage dev shop infra data ml web mobile ops payments "
    "search ads media games iot sec"
).split()

PORT_NAMES = [("http", 80, "TCP"), ("https", 443, "TCP"), ("grpc", 9090, "TCP"),
              ("metrics", 9100, "TCP"), ("admin", 8081, "TCP"),
              ("dns", 53, "UDP"), ("redis", 6379, "TCP"), ("postgres", 5432, "TCP")]

EXTERNAL_TARGETS = ["db.example.com", "api.partner.example.net",
                    "storage.example.org", "mq.example.com", "ldap.corp.example"]

# names pods commonly look up that are outside the cluster; with ndots:5 the
# resolver first tries them with every search suffix -> NXDOMAIN junk
EXTERNAL_LOOKUPS = ["example.com", "api.github.com", "www.google.com",
                    "s3.amazonaws.com", "registry.npmjs.org", "pypi.org",
                    "login.microsoftonline.com", "sts.amazonaws.com",
                    "oauth2.googleapis.com", "hooks.slack.com",
                    "api.stripe.com", "sentry.io", "cdn.jsdelivr.net",
                    "time.cloudflare.com", "metadata.google.internal"]


def build_cluster(seed: int = 42, n_services: int = 5000, n_namespaces: int = 250,
                  n_headless: int = 20, n_external: int = 12,
                  dual_stack_frac: float = 0.2):
    """Return (objects, meta). objects: list of k8s dicts (Service, EndpointSlice)."""
    rnd = random.Random(seed)

    # namespaces, Zipf-ish sizes
    namespaces = ["default", "kube-system"]
    i = 0
    while len(namespaces) < n_namespaces:
        name = f"{NS_WORDS[i % len(NS_WORDS)]}-{i // len(NS_WORDS)}"
        namespaces.append(name)
        i += 1
    ns_weights = list(itertools.accumulate(1.0 / (k + 1) ** 0.8 for k in range(len(namespaces))))

    svc_cidr = ipaddress.ip_network("10.96.0.0/12")
    svc6_base = int(ipaddress.ip_address("fd00:10:96::"))
    pod_base = int(ipaddress.ip_address("10.244.0.0"))
    pod6_base = int(ipaddress.ip_address("fd00:10:244::"))
    used_ips = {int(svc_cidr.network_address) + 1, int(svc_cidr.network_address) + 10}
    used_pod = set()

    def new_svc_ip():
        while True:
            v = int(svc_cidr.network_address) + rnd.randrange(2, svc_cidr.num_addresses - 1)
            if v not in used_ips:
                used_ips.add(v)
                return v

    def new_pod_ip():
        while True:
            off = rnd.randrange(2, 1 << 16)
            if off not in used_pod:
                used_pod.add(off)
                return off

    objects = []
    services = []  # meta for query generation
    names_seen = set()

    def add_service(ns, name, kind, ports, dual, n_ep, statefulset=False,
                    cluster_ip=None, external=None):
        svc = {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {},
        }
        spec = svc["spec"]
        meta = {"ns": ns, "name": name, "kind": kind, "ports": ports,
                "dual": dual, "endpoints": n_ep}
        if kind == "ExternalName":
            spec["type"] = "ExternalName"
            spec["externalName"] = external
            meta["external"] = external
            objects.append(svc)
            services.append(meta)
            return
        spec["type"] = "ClusterIP"
        spec["selector"] = {"app": name}
        if kind == "headless":
            spec["clusterIP"] = "None"
            spec["clusterIPs"] = ["None"]
        else:
            v4 = cluster_ip if cluster_ip is not None else new_svc_ip()
            ips = [str(ipaddress.ip_address(v4))]
            if dual:
                ips.append(str(ipaddress.ip_address(svc6_base + (v4 & 0xFFFF))))
            spec["clusterIP"] = ips[0]
            spec["clusterIPs"] = ips
        spec["ipFamilies"] = ["IPv4", "IPv6"] if dual else ["IPv4"]
        spec["ipFamilyPolicy"] = "PreferDualStack" if dual else "SingleStack"
        spec["ports"] = [
            ({"name": pn} if pn else {}) | {"port": p, "protocol": proto,
                                            "targetPort": p}
            for (pn, p, proto) in ports
        ]
        objects.append(svc)
        # EndpointSlices (one per family, as the controller does)
        eps = []
        for k in range(n_ep):
            off = new_pod_ip()
            ep = {"v4": str(ipaddress.ip_address(pod_base + off)),
                  "v6": str(ipaddress.ip_address(pod6_base + off)),
                  "ready": rnd.random() > 0.03 or k == 0}
            if statefulset:
                ep["hostname"] = f"{name}-{k}"
            eps.append(ep)
        meta["eps"] = eps
        families = ["IPv4", "IPv6"] if dual else ["IPv4"]
        for fam in families:
            sl = {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-{'v4' if fam == 'IPv4' else 'v6'}{rnd.randrange(16**5):05x}",
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name,
                               "endpointslice.kubernetes.io/managed-by":
                                   "endpointslice-controller.k8s.io"},
                },
                "addressType": fam,
                "endpoints": [],
                "ports": [
                    ({"name": pn} if pn else {"name": ""}) | {"port": p, "protocol": proto}
                    for (pn, p, proto) in ports
                ],
            }
            for ep in eps:
                e = {"addresses": [ep["v4"] if fam == "IPv4" else ep["v6"]],
                     "conditions": {"ready": ep["ready"]}}
                if "hostname" in ep:
                    e["hostname"] = ep["hostname"]
                sl["endpoints"].append(e)
            objects.append(sl)
        services.append(meta)

    # well-known services first
    add_service("default", "kubernetes", "clusterip", [("https", 443, "TCP")],
                False, 3, cluster_ip=int(svc_cidr.network_address) + 1)
    add_service("kube-system", "kube-dns", "clusterip",
                [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")],
                False, 2, cluster_ip=int(svc_cidr.network_address) + 10)
    names_seen.update({("default", "kubernetes"), ("kube-system", "kube-dns")})

    headless_left = n_headless
    external_left = n_external
    while len(services) < n_services:
        ns = rnd.choices(namespaces, cum_weights=ns_weights)[0]
        name = f"{rnd.choice(WORDS)}-{rnd.choice(WORDS)}"
        if rnd.random() < 0.5:
            name += f"-{rnd.randrange(100)}"
        if (ns, name) in names_seen:
            continue
        names_seen.add((ns, name))
        remaining = n_services - len(services)
        if external_left and rnd.random() < max(0.003, external_left / remaining):
            external_left -= 1
            add_service(ns, name, "ExternalName", [], False, 0,
                        external=rnd.choice(EXTERNAL_TARGETS))
            continue
        nports = rnd.choices([1, 2, 3], [0.6, 0.3, 0.1])[0]
        picked = rnd.sample(PORT_NAMES, nports)
        if nports == 1 and rnd.random() < 0.3:
            picked = [(None, picked[0][1], picked[0][2])]  # unnamed port: no SRV
        dual = rnd.random() < dual_stack_frac
        if headless_left and rnd.random() < max(0.004, headless_left / remaining):
            headless_left -= 1
            n_ep = rnd.randrange(10, 101)
            add_service(ns, name, "headless", picked, dual, n_ep,
                        statefulset=rnd.random() < 0.5)
            continue
        add_service(ns, name, "clusterip", picked, dual,
                    rnd.choices([1, 2, 3, 5], [0.3, 0.35, 0.25, 0.1])[0])
    return objects, {"services": services, "namespaces": namespaces}


def write_yaml(objects, path):
    import yaml  # PyYAML
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    with open(path, "w") as f:
        yaml.dump_all(objects, f, Dumper=dumper, sort_keys=False,
                      default_flow_style=False)


def gen_queries(meta, rnd, n, domain="cluster.local"):
    """Return dict of query lists (each a list of 'name TYPE' lines)."""
    services = meta["services"]
    namespaces = meta["namespaces"]
    # popularity: Zipf over services (real traffic is very skewed)
    clusterip = [s for s in services if s["kind"] == "clusterip"]
    rnd.shuffle(clusterip)
    w_cip = list(itertools.accumulate(1.0 / (k + 1) ** 0.9 for k in range(len(clusterip))))
    headless = [s for s in services if s["kind"] == "headless"]
    external = [s for s in services if s["kind"] == "ExternalName"]
    srv_capable = [s for s in services
                   if s["kind"] != "ExternalName" and any(p[0] for p in s["ports"])]
    rnd.shuffle(srv_capable)
    w_srv = list(itertools.accumulate(1.0 / (k + 1) ** 0.9 for k in range(len(srv_capable))))
    pod_namespaces = namespaces[:60]
    w_ns = list(itertools.accumulate(1.0 / (k + 1) for k in range(len(pod_namespaces))))

    def fq(s):
        return f"{s['name']}.{s['ns']}.svc.{domain}"

    def a_name():
        r = rnd.random()
        if r < 0.93:
            return fq(rnd.choices(clusterip, cum_weights=w_cip)[0])
        if r < 0.98:
            return fq(rnd.choice(headless))
        return fq(rnd.choice(external))

    def srv_name():
        s = rnd.choices(srv_capable, cum_weights=w_srv)[0]
        pn, _, proto = rnd.choice([p for p in s["ports"] if p[0]])
        return f"_{pn}._{proto.lower()}.{fq(s)}"

    def junk_name():
        # what ndots:5 search-path expansion produces from a pod in namespace pod_ns
        pod_ns = rnd.choices(pod_namespaces, cum_weights=w_ns)[0]
        r = rnd.random()
        if r < 0.6:     # external name + search suffixes
            base = rnd.choice(EXTERNAL_LOOKUPS)
            suffix = rnd.choice([f"{pod_ns}.svc.{domain}", f"svc.{domain}", domain])
            return f"{base}.{suffix}"
        if r < 0.9:     # svc.ns lookup tried first with the pod's own namespace
            s = rnd.choices(clusterip, cum_weights=w_cip)[0]
            return f"{s['name']}.{s['ns']}.{pod_ns}.svc.{domain}"
        # service that does not exist (typo / deleted)
        return f"{rnd.choice(WORDS)}-{rnd.choice(WORDS)}-x{rnd.randrange(50)}.{pod_ns}.svc.{domain}"

    mix = []
    for _ in range(n):
        r = rnd.random()
        if r < 0.70:
            mix.append(f"{a_name()} A")
        elif r < 0.80:
            mix.append(f"{a_name()} AAAA")
        elif r < 0.85:
            mix.append(f"{srv_name()} SRV")
        else:
            mix.append(f"{junk_name()} A")
    hit = [f"{fq(rnd.choices(clusterip, cum_weights=w_cip)[0])} A" for _ in range(n)]
    nx = [f"{junk_name()} A" for _ in range(n // 4)]
    return {"mix": mix, "hit": hit, "nx": nx}


EXT_DOMAIN = "ext.test"
"""The external zone: the cluster's records renamed, for the forwarding (serve --upstream) rows."""


def scaled(n_services: int, per_5000: int, minimum: int) -> int:
    """A count that is per_5000 at 5,000 services and scales linearly."""
    return max(minimum, round(n_services * per_5000 / 5000))


def generate(out: str, seed: int = 42, services: int = 5000, namespaces: int | None = None,
             headless: int | None = None, external: int | None = None,
             domain: str = "cluster.local", n_queries: int = 100000) -> dict:
    """Write cluster.yaml, the zone file and the query files into out; return meta."""
    import json
    namespaces = namespaces if namespaces is not None else scaled(services, 250, 3)
    headless = headless if headless is not None else scaled(services, 20, 1)
    external = external if external is not None else scaled(services, 12, 1)
    os.makedirs(out, exist_ok=True)
    objects, meta = build_cluster(seed, services, namespaces, headless, external)
    write_yaml(objects, os.path.join(out, "cluster.yaml"))
    zone = zone_from_objects(objects, domain)
    zone_path = os.path.join(out, f"{domain}.zone")
    with open(zone_path, "w") as f:
        f.write(zone)
    # the same records under an external zone, served by the forwarders' upstream: the
    # names `clusterdns serve --upstream` forwards (outside the cluster domain)
    ext_zone_path = os.path.join(out, f"{EXT_DOMAIN}.zone")
    with open(ext_zone_path, "w") as f:
        f.write(zone_from_objects(objects, EXT_DOMAIN))
    rnd = random.Random(seed + 1)
    qs = gen_queries(meta, rnd, n_queries, domain)
    for k, lines in qs.items():
        with open(os.path.join(out, f"{k}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    # hit.txt with every name moved under the external zone (same popularity, same order)
    suffix = "." + domain
    with open(os.path.join(out, "hit_ext.txt"), "w") as f:
        f.writelines(f"{n.removesuffix(suffix)}.{EXT_DOMAIN} {t}\n"
                     for n, t in (ln.split() for ln in qs["hit"]))
    kinds: dict[str, int] = {}
    for s in meta["services"]:
        kinds[s["kind"]] = kinds.get(s["kind"], 0) + 1
    # the last ClusterIP service in the YAML: answering it means everything is loaded
    probe = next(s for s in reversed(meta["services"]) if s["kind"] == "clusterip")
    info = {
        "seed": seed, "services": len(meta["services"]), "kinds": kinds,
        "namespaces": len(meta["namespaces"]),
        "endpoints": sum(len(s.get("eps", [])) for s in meta["services"]),
        "dual_stack": sum(1 for s in meta["services"] if s.get("dual")),
        "named_port_services": sum(1 for s in meta["services"] if any(p[0] for p in s["ports"])),
        "objects": len(objects),
        "zone_rrs": sum(1 for ln in zone.splitlines() if ln and not ln.startswith((";", "$"))),
        "domain": domain, "zone_file": zone_path,
        "ext_domain": EXT_DOMAIN, "ext_zone_file": ext_zone_path,
        "probe": f"{probe['name']}.{probe['ns']}.svc.{domain}",
        "queries": {k: len(v) for k, v in qs.items()},
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--namespaces", type=int, help="default: 250 per 5,000 services")
    ap.add_argument("--headless", type=int, help="default: 20 per 5,000 services")
    ap.add_argument("--external", type=int, help="default: 12 per 5,000 services")
    ap.add_argument("--domain", default="cluster.local")
    ap.add_argument("--out", default=os.path.join(HERE, "gen", "s42-n5000"))
    ap.add_argument("--n-queries", type=int, default=100000)
    a = ap.parse_args(argv)
    info = generate(a.out, a.seed, a.services, a.namespaces, a.headless, a.external,
                    a.domain, a.n_queries)
    print(f"services={info['services']} {info['kinds']} namespaces={info['namespaces']} "
          f"endpoints={info['endpoints']} objects={info['objects']} zone_rrs={info['zone_rrs']}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
