"""Command line: `clusterdns serve|node-cache [--config FILE] ...`, `clusterdns check-config FILE`.

The config file and the flags typed on the command line become one config (settings/config.py:
defaults < file < flags given), which the mode's stack runs (app/cluster.py, app/nodecache.py).
A reload repeats exactly that, so flags keep winning.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace

from clusterdns import __version__
from clusterdns.app import nodecache
from clusterdns.app.cluster import Reload, serve, serve_worker
from clusterdns.app.lifecycle import StartupError
from clusterdns.app.server import run
from clusterdns.app.workers import Journal, fork_workers, resolve_ports
from clusterdns.kube.manifests import ManifestError
from clusterdns.obs import logs
from clusterdns.options.declare import ConfigError
from clusterdns.server.listeners import parse_listen
from clusterdns.settings import config, schema
from clusterdns.settings.flags import add_flags

log = logging.getLogger("clusterdns")


def build_parser() -> argparse.ArgumentParser:
    """The command line; each mode's flags are generated from its settings (settings/flags.py)."""
    p = argparse.ArgumentParser(prog="clusterdns", description="In-cluster DNS for Kubernetes Service discovery.")
    p.add_argument("--version", action="version", version=f"clusterdns {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    modes = {
        "serve": ("serve the cluster zone (the CoreDNS role)", "config/clusterdns.yaml"),
        "node-cache": ("run as the node-local DNS cache (the NodeLocal DNSCache role)", "config/node-cache.yaml"),
    }
    for mode, (what, example) in modes.items():
        s = sub.add_parser(mode, help=what, description=what)
        s.add_argument("--config", metavar="FILE", help=f"YAML settings ({example}); flags given override it")
        add_flags(s, schema.SCHEMAS[mode])
    c = sub.add_parser("check-config", help="validate a config file without starting (exit 1 on problems)")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--mode", choices=schema.MODES, help="the mode the file is for (default: guessed from its keys)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        code, lines = config.main_check(args.file, args.mode)
        print("\n".join(lines))
        return code

    def load() -> schema.AnyConfig:
        """Defaults < the --config file < the flags typed (again on every reload)."""
        return config.resolve(args.command, args)

    try:
        cfg = load()
    except ConfigError as exc:
        logs.setup()
        for problem in exc.problems:
            log.error("%s", problem)
        return 2
    logs.setup(cfg.log_level, cfg.log_format, cfg.error_consolidate)
    if isinstance(cfg, schema.NodeCacheConfig):
        return nodecache.main_config(cfg, load if args.config else None, args.config)  # type: ignore[arg-type]  # load gives this mode's settings
    reload = Reload(load if args.config else None, args.config)  # type: ignore[arg-type]  # load gives this mode's settings
    try:
        if cfg.workers > 1:
            return _serve_with_workers(cfg, reload)
        return run(serve(cfg, reload))
    except (ManifestError, StartupError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0


def _serve_with_workers(cfg: schema.ServeConfig, reload: Reload) -> int:
    """Fork the workers first (no loop, no threads yet), then lead: source + answering."""
    cfg = replace(cfg, listen=resolve_ports(cfg.listen, parse_listen))
    workers = fork_workers(cfg.workers - 1, lambda index, fd, mfd: run(serve_worker(cfg, index, fd, mfd, reload)))
    journal = Journal([w.journal for w in workers])
    try:
        return run(serve(cfg, reload, journal, workers))
    finally:
        journal.close()  # end-of-file on the pipes tells the workers to stop
        for _ in workers:
            try:
                os.wait()
            except ChildProcessError:
                break
