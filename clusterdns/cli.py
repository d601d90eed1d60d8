"""Command line: `clusterdns serve|node-cache [--config FILE] ...`, `clusterdns check-config FILE`.

The config file and the flags typed on the command line become one config (config.py:
defaults < file < flags given), then a ServeOptions for app.serve, or the node-cache
settings for nodecache.serve. A reload repeats exactly that, so flags keep winning.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from dataclasses import replace

from clusterdns import __version__
from clusterdns.app import nodecache
from clusterdns.settings import config
from clusterdns.app.cluster import ServeOptions, run, serve, serve_worker
from clusterdns.app.lifecycle import StartupError
from clusterdns.server.listeners import parse_listen
from clusterdns.kube.manifests import ManifestError
from clusterdns.settings.nodecache import add_rrl_arguments, with_env
from clusterdns.obs import logs
from clusterdns.app.workers import Journal, fork_workers, resolve_ports
from clusterdns.cluster.compile import PODS_MODES

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
    from clusterdns.obs.health import parse_address  # imported only when the flag is given

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
    f = s.add_argument_group("which objects exist (API watch and --manifests alike)")
    k = s.add_argument_group("Kubernetes API (used when no --manifests are given)")
    k.add_argument("--kubeconfig", metavar="PATH",
                   help="kubeconfig to use (default: in-cluster service account in a pod, "
                        "else $KUBECONFIG or ~/.kube/config)")
    k.add_argument("--context", metavar="NAME", help="kubeconfig context (default: its current-context)")
    f.add_argument("--namespaces", type=_names, default=(), metavar="NS[,NS...]",
                   help="only these namespaces exist (default all)")
    f.add_argument("--labels", metavar="SELECTOR",
                   help="label selector for Services and EndpointSlices, e.g. 'app=web,tier!=test'")
    k.add_argument("--sync-timeout", type=_seconds, default=d.sync_timeout, metavar="SECONDS",
                   help="wait this long for the first sync, then serve anyway with SERVFAIL for "
                        "unknown cluster names (default %(default)s)")
    k.add_argument("--health", type=_address, metavar="HOST:PORT",
                   help="liveness endpoint /health; HOST:PORT, [v6]:PORT or ${POD_IP}:PORT (host from "
                        "that env var) (default :8080, every address, with the API, off with --manifests)")
    k.add_argument("--ready", type=_address, metavar="HOST:PORT",
                   help="readiness endpoint /ready, as --health (default :8181 with the API, off with --manifests)")
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
    s.add_argument("--config", metavar="FILE", help="YAML settings (config/clusterdns.yaml); flags given override it")
    add_rrl_arguments(s)
    _operating_flags(s)
    _operating_flags(nodecache.add_parser(sub))
    c = sub.add_parser("check-config", help="validate a config file without starting (exit 1 on problems)")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--mode", choices=config.MODES, help="the mode the file is for (default: guessed from its keys)")
    return p


def _operating_flags(p: argparse.ArgumentParser) -> None:
    """Metrics, logs, reload and stop flags, the same for both modes (defaults: config.py)."""
    g = p.add_argument_group("metrics, logs, reload and shutdown")
    g.add_argument("--metrics", type=_address, metavar="HOST:PORT",
                   help="serve Prometheus /metrics here, as --health takes it (serve: :9153 with the API source, off with "
                        "--manifests; node-cache: off unless set, node-local-dns uses :9253)")
    g.add_argument("--log-format", choices=config.LOG_FORMATS, help="text lines or JSON lines (default text)")
    g.add_argument("--query-log", action="store_true", help="log every query in CoreDNS's common format")
    g.add_argument("--query-log-sample", type=int, metavar="N", help="with --query-log, log one query in N")
    g.add_argument("--error-consolidate", type=_seconds, metavar="SECONDS",
                   help="collapse repeats of an error within this window into one line (default 10)")
    g.add_argument("--watch-config", action="store_true",
                   help="reload when the --config file changes (SIGHUP always reloads)")
    g.add_argument("--shutdown-timeout", type=_seconds, metavar="SECONDS",
                   help="after SIGTERM and the lame duck, wait this long for answers in flight (default 5)")
    if "--lameduck" not in p._option_string_actions:
        g.add_argument("--lameduck", type=_seconds, metavar="SECONDS",
                       help="after SIGTERM, fail /ready but keep answering this long")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check-config":
        code, lines = config.main_check(args.file, args.mode)
        print("\n".join(lines))
        return code
    given = config.explicit_flags(parser, argv)

    def load() -> config.AnyConfig:
        """Defaults < the --config file < the flags typed (again on every reload)."""
        cfg = config.load(args.config, args.command) if args.config else config.SCHEMAS[args.command]()
        cfg = config.apply_flags(cfg, args, given)
        return with_env(cfg) if args.command == "node-cache" else cfg  # type: ignore[arg-type]

    try:
        cfg = load()
    except config.ConfigError as exc:
        logs.setup()
        for problem in exc.problems:
            log.error("%s", problem)
        return 2
    logs.setup(cfg.log_level, cfg.log_format, cfg.error_consolidate)
    if args.command == "node-cache":
        return nodecache.main_config(cfg, load if args.config else None, args.config)  # type: ignore[arg-type]
    opts = serve_options(cfg, args.config, load)  # type: ignore[arg-type]
    try:
        if opts.workers > 1:
            return _serve_with_workers(opts)
        return run(serve(opts))
    except (ManifestError, StartupError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0


def serve_options(cfg: config.ServeConfig, path: str | None,
                  load: Callable[[], config.AnyConfig] | None = None) -> ServeOptions:
    """The app's options from a validated config; `load` re-reads it on reload."""
    opts = ServeOptions(**cfg.options_kwargs(), config=path)
    if path is not None and load is not None:
        opts.reload = lambda: serve_options(load(), path, load)  # type: ignore[arg-type]
    return opts


def _serve_with_workers(opts: ServeOptions) -> int:
    """Fork the workers first (no loop, no threads yet), then lead: source + answering."""
    opts = replace(opts, listen=resolve_ports(opts.listen, parse_listen))
    workers = fork_workers(opts.workers - 1, lambda index, fd, mfd: run(serve_worker(opts, index, fd, mfd)))
    journal = Journal([w.journal for w in workers])
    try:
        return run(serve(opts, journal, workers))
    finally:
        journal.close()  # end-of-file on the pipes tells the workers to stop
        for _ in workers:
            try:
                os.wait()
            except ChildProcessError:
                break
