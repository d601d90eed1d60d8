"""YAML into typed dataclasses, with every problem named by file, line and key path.

Generic: it knows nothing about clusterdns. A dataclass's type hints say what each key
takes (bool, int, float seconds, str, Optional, list[str], dict[str, list[str]], nested
dataclasses); each field's declared Option (options/declare.py) says which values make
sense. Problems are collected, not raised one by one, so an operator fixing a ConfigMap
sees all of them at once.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from clusterdns.options.declare import Check, Option, meaning

_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?!s))?\s*"
    r"(?:(\d+(?:\.\d+)?)s)?\s*(?:(\d+(?:\.\d+)?)ms)?\s*$"
)

_PLAIN = Option("")


class YAMLError(ValueError):
    """A file that cannot be read or is not YAML; `problems` has the one line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# --------------------------------------------------------------------------- YAML with lines


class _Map(dict):
    """A mapping that remembers the line of each key (for error messages)."""

    lines: dict[Any, int]


class _Seq(list):
    lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records lines and refuses duplicate keys (PyYAML keeps the last)."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value", key_node.start_mark
            ) from None
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(n, deep=True) for n in node.value)
    out.lines = [n.start_mark.line + 1 for n in node.value]
    return out


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


# --------------------------------------------------------------------------- conversion


class Problems:
    """Collects '<file>:<line>: <path>: <message>' lines."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, path: str, line: int | None, message: str) -> None:
        where = f"{self.source}:{line}" if line else self.source
        self.items.append(f"{where}: {path}: {message}" if path else f"{where}: {message}")


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number of seconds (5, 0.5 or '1m30s')"
    if tp is str:
        return "a string"
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return f"{_describe(inner[0])} or null" if len(inner) == 1 else " or ".join(map(_describe, inner))
    if origin in (list, tuple):
        return "a list of strings" if args and args[0] is str else "a list"
    if origin is dict:
        return "a mapping of domain to a list of servers"
    if is_dataclass(tp):
        return "a mapping of settings"
    return str(tp)


def _got(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    name = kind.get(type(value)) or (
        "list" if isinstance(value, list) else "mapping" if isinstance(value, dict) else type(value).__name__
    )
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({name})"


def parse_duration(value: Any) -> float | None:
    """5, 0.5, '5s', '500ms', '1m30s', '1h' -> seconds; None if not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip():
        m = _DURATION.match(value)
        if m and any(m.groups()):
            h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
            return h * 3600 + mi * 60 + s + ms / 1000
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _check(check: Check | None, path: str, value: Any, line: int | None, problems: Problems) -> None:
    if check is not None:
        expected = check(value)
        if expected is not None:
            problems.add(path, line, f"expected {expected}, got {_got(value)}")


def convert(tp: Any, value: Any, path: str, line: int | None, problems: Problems, opt: Option = _PLAIN) -> Any:
    """`value` as type `tp`, or `dataclasses.MISSING` after recording a problem; `opt`'s
    checks apply to the scalars (each item of a list, each server of a mapping's lists)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = MISSING
    out: Any
    optional = ""
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or value == ""):
            return None  # "" too: a flag cannot say null (`--health ""` turns it off)
        inner = [a for a in args if a is not type(None)]
        optional = " or null" if type(None) in args else ""
        tp, origin, args = inner[0], typing.get_origin(inner[0]), typing.get_args(inner[0])
    if tp is bool:
        out = value if isinstance(value, bool) else bad
    elif tp is int:
        out = value if isinstance(value, int) and not isinstance(value, bool) else bad
    elif tp is float:
        d = parse_duration(value)
        out = d if d is not None and d == d and d not in (float("inf"), float("-inf")) else bad
    elif tp is str:
        out = value if isinstance(value, str) else bad
    elif origin in (list, tuple):
        if not isinstance(value, list):
            out = bad
        else:
            lines = getattr(value, "lines", [line] * len(value))
            items = [convert(args[0], v, f"{path}[{i}]", lines[i] or line, problems, opt) for i, v in enumerate(value)]
            if any(i is MISSING for i in items):
                return bad
            return tuple(items) if origin is tuple else items
    elif origin is dict:
        if not isinstance(value, dict):
            out = bad
        else:
            lines = getattr(value, "lines", {})
            result = {}
            for k, v in value.items():
                kl = lines.get(k, line)
                kpath = f"{path}.{k}"
                if not isinstance(k, str):
                    problems.add(kpath, kl, f"expected a domain name as key, got {_got(k)}")
                    continue
                _check(opt.keys, kpath, k, kl, problems)
                if isinstance(v, list) and not v:
                    problems.add(kpath, kl, "expected a non-empty list of servers")
                    continue
                conv = convert(args[1], v, kpath, kl, problems, opt)
                if conv is not MISSING:
                    result[k.rstrip(".").lower() if k != "." else k] = conv
            return result
    elif isinstance(tp, type) and is_dataclass(tp):
        if not isinstance(value, dict):
            out = bad
        else:
            obj = tp()
            fill(obj, value, path + ".", problems, line)
            return obj
    else:  # pragma: no cover - a schema type this loader does not know
        raise TypeError(f"config field {path}: unsupported type {tp!r}")
    if out is MISSING:
        example = f" such as {opt.example}" if opt.example else ""
        problems.add(path, line, f"expected {_describe(tp)}{example}{optional}, got {_got(value)}")
        return bad
    _check(opt.check, path, out, line, problems)
    return out


def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def fill(obj: Any, data: Mapping[str, Any], prefix: str, problems: Problems, line: int | None) -> None:
    """Set `obj`'s fields from `data`, recording unknown keys and bad values."""
    types_ = hints(type(obj))
    declared = {f.name: f for f in fields(obj)}
    known = list(declared)
    lines = getattr(data, "lines", {})
    for key, value in data.items():
        kl = lines.get(key, line)
        if not isinstance(key, str):
            problems.add(f"{prefix}{key}", kl, "expected a setting name, got " + _got(key))
            continue
        name = key.replace("-", "_")
        path = prefix + name
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            problems.add(prefix + key, kl, f"unknown key{hint}; expected one of: {', '.join(known)}")
            continue
        conv = convert(types_[name], value, path, kl, problems, meaning(declared[name]))
        if conv is not MISSING:
            setattr(obj, name, conv)


def read_yaml(path: str | Path) -> Any:
    """The YAML document in `path`, with line numbers kept; YAMLError if unreadable."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise YAMLError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise YAMLError([f"{path}: not UTF-8 text: {exc.reason}"]) from None
    return parse_text(text, str(path))


def parse_text(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise YAMLError([f"{source}{line}: not valid YAML: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise YAMLError([f"{source}: not valid YAML: {exc}"]) from None
