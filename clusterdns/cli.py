"""Command line: `clusterdns serve ...`; flags become a ServeOptions, then app runs it."""

from __future__ import annotations

import argparse
import logging
import sys

from clusterdns import __version__
from clusterdns.app import ServeOptions, StartupError, parse_listen, run, serve
from clusterdns.kube.manifests import ManifestError
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clusterdns", description="In-cluster DNS for Kubernetes Service discovery.")
    p.add_argument("--version", action="version", version=f"clusterdns {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    d = ServeOptions()
    s = sub.add_parser("serve", help="serve the cluster zone")
    s.add_argument("--manifests", action="append", default=[], metavar="PATH",
                   help="Kubernetes YAML file or folder to serve instead of a live cluster (repeatable)")
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
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = ServeOptions(
        manifests=args.manifests, listen=args.listen or ServeOptions().listen, zone=args.zone,
        ttl=args.ttl, pods=args.pods, endpoint_pod_names=args.endpoint_pod_names,
        ignore_empty_service=args.ignore_empty_service, max_udp=args.max_udp,
        tcp_idle_timeout=args.tcp_idle_timeout, max_tcp_connections=args.max_tcp_connections,
        answer_cache_size=args.answer_cache_size)
    if not opts.manifests:
        log.error("no --manifests given: serving a live cluster needs the API watch (not built yet)")
        return 2
    try:
        return run(serve(opts))
    except (ManifestError, StartupError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0
