"""Command line: `clusterdns serve ...`; flags become a ServeOptions, then app runs it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace

from clusterdns import __version__, nodecache
from clusterdns.app import ServeOptions, StartupError, parse_listen, run, serve
from clusterdns.kube.manifests import ManifestError
from clusterdns.obs.health import parse_address
from clusterdns.workers import Journal, fork_workers, resolve_ports, serve_worker
from clusterdns.zones.kubernetes import PODS_MODES

log = logging.getLogger("clusterdns")


def _ttl(value: str) -> int:
    n = int(value)
    if not 0 <= n <= 3600:
        raise argparse.ArgumentTypeError("ttl must be 0..3600 (CoreDNS's range)")
    return n


def _listen(value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _seconds(value: str) -> float:
    n = float(value.removesuffix("s"))
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return n


def _names(value: str) -> tuple[str, ...]:
    return tuple(n.strip().lower() for n in value.split(",") if n.strip())


def _address(value: str) -> str:
    try:
        parse_address(value, 0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clusterdns", description="In-cluster DNS for Kubernetes Service discovery.")
    p.add_argument("--version", action="version", version=f"clusterdns {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    d = ServeOptions()
    s = sub.add_parser("serve", help="serve the cluster zone")
    s.add_argument("--manifests", action="append", default=[], metavar="PATH",
                   help="Kubernetes YAML file or folder to serve instead of a live cluster (repeatable)")
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes answering on the same port (SO_REUSEPORT); one watches, all answer (default 1)")
    s.add_argument("--listen", action="append", type=_listen, metavar="HOST:PORT",
                   help=f"UDP+TCP address, repeatable; [::1]:5353 for IPv6 (default {d.listen[0]})")
    s.add_argument("--zone", default=d.zone, help="cluster domain (default %(default)s)")
    s.add_argument("--ttl", type=_ttl, default=d.ttl, help="record TTL and negative TTL, 0..3600 (default %(default)s)")
    s.add_argument("--pods", choices=PODS_MODES, default=d.pods,
                   help="pod records <a-b-c-d>.<ns>.pod.<zone> (default %(default)s)")
    s.add_argument("--endpoint-pod-names", action="store_true",
                   help="name hostname-less endpoints by their pod name instead of the dashed IP")
    s.add_argument("--ignore-empty-service", action="store_true",
                   help="ClusterIP services without ready endpoints answer NXDOMAIN")
    s.add_argument("--max-udp-size", type=int, default=d.max_udp, dest="max_udp",
                   help="largest UDP answer for EDNS clients (default %(default)s)")
    s.add_argument("--tcp-idle-timeout", type=float, default=d.tcp_idle_timeout,
                   help="seconds before an idle TCP connection is closed (default %(default)s)")
    s.add_argument("--max-tcp-connections", type=int, default=d.max_tcp_connections,
                   help="open TCP connections at most (default %(default)s)")
    s.add_argument("--answer-cache-size", type=int, default=d.answer_cache_size,
                   help="rendered answers kept for the hot path (default %(default)s)")
    k = s.add_argument_group("Kubernetes API (used when no --manifests are given)")
    k.add_argument("--kubeconfig", metavar="PATH",
                   help="kubeconfig to use (default: in-cluster service account in a pod, "
                        "else $KUBECONFIG or ~/.kube/config)")
    k.add_argument("--context", metavar="NAME", help="kubeconfig context (default: its current-context)")
    k.add_argument("--namespaces", type=_names, default=(), metavar="NS[,NS...]",
                   help="only these namespaces exist (default all)")
    k.add_argument("--labels", metavar="SELECTOR",
                   help="label selector for Services and EndpointSlices, e.g. 'app=web,tier!=test'")
    k.add_argument("--sync-timeout", type=_seconds, default=d.sync_timeout, metavar="SECONDS",
                   help="wait this long for the first sync, then serve anyway with SERVFAIL for "
                        "unknown cluster names (default %(default)s)")
    k.add_argument("--health", type=_address, metavar="HOST:PORT",
                   help="liveness endpoint /health (default :8080 with the API, off with --manifests)")
    k.add_argument("--ready", type=_address, metavar="HOST:PORT",
                   help="readiness endpoint /ready (default :8181 with the API, off with --manifests)")
    k.add_argument("--lameduck", type=_seconds, default=d.lameduck, metavar="SECONDS",
                   help="after SIGTERM, fail /ready but keep answering this long (default %(default)s)")
    f = s.add_argument_group("forwarding (names outside the cluster zone; off, i.e. REFUSED, "
                             "unless one of these is given)")
    f.add_argument("--upstream", action="append", default=[], metavar="HOST[:PORT]",
                   help="upstream server, repeatable; [::1]:53 for IPv6; tcp://HOST for TCP only")
    f.add_argument("--resolv-conf", nargs="?", const="/etc/resolv.conf", metavar="PATH",
                   help="forward to this resolv.conf's nameservers (PATH default /etc/resolv.conf)")
    f.add_argument("--stub", action="append", default=[], metavar="ZONE=IP[:PORT][,IP...]",
                   help="send a zone to its own servers, repeatable")
    f.add_argument("--kube-dns-configmap", metavar="PATH",
                   help="kube-dns ConfigMap (stubDomains, upstreamNameservers): mounted dir or YAML/JSON")
    f.add_argument("--no-loop-detect", action="store_true",
                   help="skip the start-up forwarding-loop probe (CoreDNS `loop`)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    nodecache.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "node-cache":
        return nodecache.main_args(args)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = ServeOptions(
        manifests=args.manifests, listen=args.listen or ServeOptions().listen, zone=args.zone,
        ttl=args.ttl, pods=args.pods, endpoint_pod_names=args.endpoint_pod_names,
        ignore_empty_service=args.ignore_empty_service, max_udp=args.max_udp,
        tcp_idle_timeout=args.tcp_idle_timeout, max_tcp_connections=args.max_tcp_connections,
        answer_cache_size=args.answer_cache_size, kubeconfig=args.kubeconfig, context=args.context,
        namespaces=args.namespaces, labels=args.labels, sync_timeout=args.sync_timeout,
        health=args.health, ready=args.ready, lameduck=args.lameduck,
        upstreams=args.upstream, resolv_conf=args.resolv_conf, stubs=args.stub,
        kube_dns_configmap=args.kube_dns_configmap, loop_detect=not args.no_loop_detect,
        workers=args.workers)
    if opts.manifests and (opts.kubeconfig or opts.context):
        log.error("--manifests and --kubeconfig/--context exclude each other: serve files or a cluster")
        return 2
    if opts.workers < 1:
        log.error("--workers must be at least 1")
        return 2
    try:
        if opts.workers > 1:
            return _serve_with_workers(opts)
        return run(serve(opts))
    except (ManifestError, StartupError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0


def _serve_with_workers(opts: ServeOptions) -> int:
    """Fork the workers first (no loop, no threads yet), then lead: source + answering."""
    opts = replace(opts, listen=resolve_ports(opts.listen, parse_listen))
    fds = fork_workers(opts.workers - 1, lambda index, fd: run(serve_worker(opts, index, fd)))
    journal = Journal(fds)
    try:
        return run(serve(opts, journal))
    finally:
        journal.close()  # end-of-file on the pipes tells the workers to stop
        for _ in fds:
            try:
                os.wait()
            except ChildProcessError:
                break
