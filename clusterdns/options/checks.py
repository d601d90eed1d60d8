"""Value checks most options use: each returns None when a value is fine, else what was
expected; the loader turns an expectation into "<file>:<line>: <key>: expected <it>, got <value>".
"""

from __future__ import annotations

import re
from typing import Any

from clusterdns.net import addr
from clusterdns.options.declare import Check

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_NS_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # RFC 1123 label, what the API allows


def between(lo: float, hi: float | None = None, unit: str = "") -> Check:
    def check(v: Any) -> str | None:
        if v < lo or (hi is not None and v > hi):
            span = f"{lo:g}..{hi:g}" if hi is not None else f"at least {lo:g}"
            return f"{span}{unit}"
        return None

    return check


def above(lo: float, unit: str = "") -> Check:
    def check(v: Any) -> str | None:
        return None if v > lo else f"more than {lo:g}{unit}"

    return check


def one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"one of {', '.join(choices)}"

    return check


def domain(v: str) -> str | None:
    name = v.strip().rstrip(".").lower()
    if name == "":
        return None if v.strip() == "." else "a domain name such as cluster.local"
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        return "a domain name such as cluster.local (labels a-z 0-9 -, at most 63 characters)"
    return None


def namespace(v: str) -> str | None:
    return None if _NS_NAME.match(v) else "a namespace name (lowercase RFC 1123 label)"


def host_port(v: str, what: str = "an address") -> tuple[str, int] | str:
    """(host, port, -1 when none is written) or an expectation (the grammar: net/addr.py)."""
    try:
        host, port = addr.split(v)
    except addr.AddressError:
        return f"{what} like [::1]:53"
    try:
        number = -1 if port is None else addr.port_number(v, port)
    except addr.AddressError:
        return f"{what} with a port 0..65535"
    if host and not addr.is_ip(host):
        return f"{what} whose host is an IP address literal (names are never resolved)"
    return host, number


def listen_address(v: str) -> str | None:
    r = host_port(v, "a listen address HOST:PORT")
    return r if isinstance(r, str) else None


def upstream(v: str) -> str | None:
    s = v.strip()
    for prefix in ("tcp://", "dns://", "udp://"):
        s = s.removeprefix(prefix)
    if not s:
        return "a server HOST[:PORT], [v6]:PORT or tcp://HOST"
    r = host_port(s, "a server HOST[:PORT], [v6]:PORT or tcp://HOST")
    if isinstance(r, str):
        return r
    return None if r[0] and r[1] != 0 else "a server HOST[:PORT] with an IP address and a port 1..65535"
