"""The config file of both modes: load it, check it, lay the flags over it, and tell a reload
what it may apply.

One YAML file holds everything the flags set (`clusterdns serve --config FILE`,
`clusterdns node-cache --config FILE`). Keys are the option names of settings/schema.py
(`--log-format` is `log_format`); cache, upstream and RRL tuning sit in the `cache`,
`forward` and `rrl` sections.

Precedence: built-in defaults < the file < the flags the user typed (settings/flags.py) <
for node-cache, `cluster_dns` from the kube-dns-upstream Service's env vars when nothing set it.

Unknown keys, wrong types and impossible values stop start-up with the file, the line, the
key path (`cache.max_ttl`) and what was expected, all problems at once: an operator editing
a ConfigMap should not fix them one restart at a time. `clusterdns check-config` prints the
same without starting.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from clusterdns.options.declare import ConfigError, meaning
from clusterdns.settings import typedyaml
from clusterdns.settings.flags import apply_flags
from clusterdns.settings.schema import MODES, SCHEMAS, AnyConfig, NodeCacheConfig, ServeConfig
from clusterdns.settings.typedyaml import Problems

__all__ = ["MODES", "SCHEMAS", "AnyConfig", "ConfigError", "NodeCacheConfig", "ServeConfig"]


def _cross_checks(cfg: Any) -> list[tuple[str, str]]:
    """Rules between keys: (key path, problem)."""
    out: list[tuple[str, str]] = []
    c = cfg.cache
    caps = [("success_ttl", c.success_ttl), ("denial_ttl", c.denial_ttl)]
    if isinstance(cfg, NodeCacheConfig):
        caps += [("cluster_success_ttl", c.cluster_success_ttl), ("cluster_denial_ttl", c.cluster_denial_ttl)]
    for name, cap in caps:
        if c.min_ttl > cap:
            out.append(("cache.min_ttl", f"expected at most cache.{name} ({cap}), got {c.min_ttl}"))
            break
    if cfg.forward.read_timeout > cfg.forward.timeout:
        out.append(
            (
                "forward.read_timeout",
                f"expected at most forward.timeout ({cfg.forward.timeout:g}), got {cfg.forward.read_timeout:g}",
            )
        )
    if isinstance(cfg, ServeConfig) and cfg.manifests and (cfg.kubeconfig or cfg.context):
        out.append(("manifests", "expected either manifests or kubeconfig/context: serve files or a cluster"))
    if not cfg.listen:
        out.append(("listen", "expected at least one address"))
    return out


# --------------------------------------------------------------------------- the file


def parse(data: Any, mode: str = "serve", source: str = "<config>") -> AnyConfig:
    """Validate already-loaded YAML (a mapping or None) into the mode's settings."""
    if mode not in SCHEMAS:
        raise ValueError(f"mode must be one of {MODES}")
    problems = Problems(source)
    cfg = SCHEMAS[mode]()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add("", None, f"expected a mapping of settings at the top, got {typedyaml._got(data)}")
        raise ConfigError(problems.items)
    typedyaml.fill(cfg, data, "", problems, None)
    if not problems.items:
        lines = getattr(data, "lines", {})
        for path, message in _cross_checks(cfg):
            problems.add(path, lines.get(path.split(".")[0]), message)
    if problems.items:
        raise ConfigError(problems.items)
    return cfg


def read_yaml(path: str | Path) -> Any:
    """The YAML document in `path`, with line numbers kept; ConfigError if unreadable."""
    try:
        return typedyaml.read_yaml(path)
    except typedyaml.YAMLError as exc:
        raise ConfigError(exc.problems) from None


def parse_text(text: str, source: str) -> Any:
    """YAML text (a docs snippet, a ConfigMap value) with line numbers kept."""
    try:
        return typedyaml.parse_text(text, source)
    except typedyaml.YAMLError as exc:
        raise ConfigError(exc.problems) from None


def load(path: str | Path, mode: str = "serve") -> AnyConfig:
    """Defaults overlaid with the YAML file; ConfigError lists every problem."""
    return parse(read_yaml(path), mode, str(path))


def guess_mode(data: Any) -> str:
    """The mode a file is written for: the schema that knows most of its top-level keys
    (ties: serve), so the errors shown are about values, not about the wrong schema."""
    keys = [str(k).replace("-", "_") for k in data] if isinstance(data, dict) else []
    known = {mode: sum(k in {f.name for f in fields(SCHEMAS[mode])} for k in keys) for mode in MODES}
    return max(MODES, key=lambda m: (known[m], m == "serve"))


# --------------------------------------------------------------------------- file + flags


def with_env(cfg: NodeCacheConfig, environ: Mapping[str, str] | None = None) -> NodeCacheConfig:
    """node-cache's `cluster_dns` from the kube-dns-upstream Service's env vars when nothing
    set it (node-cache's -upstreamsvc)."""
    env = os.environ if environ is None else environ
    host = env.get("KUBE_DNS_UPSTREAM_SERVICE_HOST")
    if cfg.cluster_dns is None and host:
        host = f"[{host}]" if ":" in host else host
        cfg.cluster_dns = f"{host}:{env.get('KUBE_DNS_UPSTREAM_SERVICE_PORT', '53')}"
    return cfg


def resolve(mode: str, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> AnyConfig:
    """Defaults < the --config file < the flags typed (< node-cache's env), checked; a reload
    calls this again, so flags keep winning."""
    path = getattr(args, "config", None)
    cfg = load(path, mode) if path else SCHEMAS[mode]()
    cfg = apply_flags(cfg, args)
    cross = _cross_checks(cfg)
    if cross:
        raise ConfigError([f"command line and config: {p}: {m}" for p, m in cross])
    return with_env(cfg, environ) if isinstance(cfg, NodeCacheConfig) else cfg


# --------------------------------------------------------------------------- reload


def _restart_keys(schema: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(schema) if meaning(f).restart)


#: top-level keys a reload cannot apply to a running process (declared `restart=True`):
#: sockets, the record source (a new one would drop the watch cache), the process layout
RESTART_ONLY = _restart_keys(ServeConfig) | _restart_keys(NodeCacheConfig)


def changed_keys(old: AnyConfig, new: AnyConfig) -> list[str]:
    """Top-level keys (sections count as one) whose value differs, in schema order."""
    return [f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name)]


def split_reload(old: AnyConfig, new: AnyConfig) -> tuple[list[str], list[str]]:
    """(keys a reload applies, keys that wait for a restart)."""
    changed = changed_keys(old, new)
    return [k for k in changed if k not in RESTART_ONLY], [k for k in changed if k in RESTART_ONLY]


def with_restart_keys(old: AnyConfig, new: AnyConfig) -> AnyConfig:
    """`new`, but with the restart-only keys kept at their running values."""
    out = copy.deepcopy(new)
    for key in RESTART_ONLY:
        if hasattr(out, key):
            setattr(out, key, copy.deepcopy(getattr(old, key)))
    return out


# --------------------------------------------------------------------------- check-config


def check_references(cfg: AnyConfig) -> list[str]:
    """Problems with the files a valid config points to, that start-up would hit."""
    from clusterdns.forward.sources import load_kube_dns_configmap  # the forwarding code's reader

    out: list[str] = []
    if cfg.kube_dns_configmap:
        try:
            load_kube_dns_configmap(cfg.kube_dns_configmap)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            out.append(f"kube_dns_configmap: {getattr(exc, 'strerror', None) or exc}")
    if isinstance(cfg, ServeConfig):
        for i, m in enumerate(cfg.manifests):
            if not Path(m).exists():
                out.append(f"manifests[{i}]: {m}: no such file or folder")
        if cfg.kubeconfig and not Path(cfg.kubeconfig).is_file():
            out.append(f"kubeconfig: {cfg.kubeconfig}: no such file")
    resolv = cfg.resolv_conf
    if resolv and not cfg.upstreams and not Path(resolv).is_file():
        out.append(f"resolv_conf: {resolv}: no such file (set upstreams instead)")
    return out


def main_check(path: str, mode: str | None = None) -> tuple[int, list[str]]:
    """`clusterdns check-config FILE`: (exit code, lines to print)."""
    try:
        data = read_yaml(path)
        mode = mode or guess_mode(data)
        cfg = parse(data, mode, path)
    except ConfigError as exc:
        return 1, exc.problems
    refs = check_references(cfg)
    if refs:
        return 1, [f"{path}: {r}" for r in refs]
    return 0, [f"{path}: OK ({mode})"]
