"""The command-line flags, generated from the schema: one flag per option, named from it.

`--<name>` for a top-level option, `--<section>-<name>` for one in a section (`--rrl-window`),
unless the option names its flag (`--upstream`, `--stub`, `--max-udp-size`, `--serve-stale`...);
a bool that is on by default gets `--no-<name>` (`--no-loop-detect`). Every flag's default is
"not given" (argparse.SUPPRESS), so the parsed namespace holds exactly the flags typed, and
`apply_flags` lays them over the file's values with the file's checks: `--ttl 5` wins over
`ttl: 30` although 5 is the default.
"""

from __future__ import annotations

import argparse
import copy
import typing
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any

from clusterdns.options.declare import ConfigError, Option, meaning
from clusterdns.settings import typedyaml
from clusterdns.settings.typedyaml import Problems

#: parsed names that are not settings
NOT_SETTINGS = frozenset({"command", "config", "help", "version", "file", "mode"})


@dataclass(frozen=True)
class Flag:
    """One option's flag: its name, the key path it sets, and the option's declaration."""

    name: str
    path: str
    tp: Any
    opt: Option
    default: Any


def flags(schema: type) -> list[Flag]:
    """Every flag of a mode, in schema order (sections after the top-level options)."""
    out: list[Flag] = []
    cfg = schema()

    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in fields(obj):
            opt, value = meaning(f), getattr(obj, f.name)
            if is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
                continue
            if opt.flag is None:
                continue
            name = opt.flag
            if not name:
                base = (prefix.replace(".", "-") + f.name).replace("_", "-")
                name = f"--no-{base}" if opt.invert else f"--{base}"
            out.append(Flag(name, prefix + f.name, hints[f.name], opt, value))

    walk(cfg, "")
    return out


def _kind(tp: Any) -> type:
    """bool, int, float, str, list or dict: what the flag's text becomes."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is not None and type(None) in args:
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    return origin or tp


def yaml_text(value: Any) -> str:
    """A default as it is written in the config file (`true`, `null`, `[a, b]`, `{}`): the
    help text's form, without a YAML dump per flag at every start (~9 ms for 90 flags)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def _help(flag: Flag) -> str:
    text = flag.opt.doc
    if _kind(flag.tp) is not bool:
        default = yaml_text(flag.default)
        text += f" (default {default})"
    return text.replace("%", "%%")


def add_flags(parser: argparse.ArgumentParser, schema: type) -> None:
    """Add a mode's flags to its subcommand, grouped by section."""
    groups: dict[str, Any] = {}
    for flag in flags(schema):
        section = flag.path.rpartition(".")[0]
        if section not in groups:
            groups[section] = parser.add_argument_group(f"{section} settings") if section else parser
        kind = _kind(flag.tp)
        kw: dict[str, Any] = dict(dest=flag.path, default=argparse.SUPPRESS, help=_help(flag))
        if kind is bool:
            kw["action"] = "store_true"
        else:
            fallback = {int: "N", float: "SECONDS"}.get(kind, flag.path.rpartition(".")[2].upper())
            kw["metavar"] = flag.opt.metavar or fallback
            if kind in (list, dict) and not flag.opt.comma:
                kw["action"] = "append"
            elif flag.opt.const is not None:
                kw.update(nargs="?", const=flag.opt.const)
        groups[section].add_argument(flag.name, **kw)


def _from_text(flag: Flag, raw: Any, current: Any, problems: Problems) -> Any:
    """The flag's parsed text as the value the loader checks (MISSING after a problem)."""
    kind = _kind(flag.tp)
    if kind is bool:
        return not flag.opt.invert
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            problems.add(flag.name, None, f"expected an integer, got {raw!r}")
            return MISSING
    if kind is list:
        if flag.opt.comma:
            return [n.strip().lower() for n in raw.split(",") if n.strip()]
        return list(raw)
    if kind is dict:
        out = dict(current)  # a mapping flag adds its keys to the file's
        for text in raw:
            zone, sep, servers = text.partition("=")
            if not sep or not zone.strip():
                problems.add(flag.name, None, f"stub domain must look like ZONE=IP[:PORT][,IP...], not {text!r}")
                return MISSING
            out[zone.strip()] = [s.strip() for s in servers.split(",") if s.strip()]
        return out
    return raw  # str, and float: the loader reads durations such as 1m30s


def apply_flags(cfg: Any, args: argparse.Namespace) -> Any:
    """A copy of `cfg` with the flags typed (the names `args` holds) applied and checked like
    file values; ConfigError lists every problem."""
    out = copy.deepcopy(cfg)
    by_path = {f.path: f for f in flags(type(cfg))}
    problems = Problems("command line")
    for dest, raw in sorted(vars(args).items()):
        flag = by_path.get(dest)
        if flag is None:
            continue
        *parents, leaf = dest.split(".")
        owner = out
        for part in parents:
            owner = getattr(owner, part)
        value = _from_text(flag, raw, getattr(owner, leaf), problems)
        if value is MISSING:
            continue
        conv = typedyaml.convert(flag.tp, value, flag.name, None, problems, flag.opt)
        if conv is not MISSING:
            setattr(owner, leaf, conv)
    if problems.items:
        raise ConfigError(problems.items)
    return out
