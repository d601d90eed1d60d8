"""Bind addresses of the HTTP endpoints (/health, /ready, /metrics).

`HOST:PORT`, `:PORT` (every address, CoreDNS's default), `[v6]:PORT`, or a host read
from the environment at start-up: `${POD_IP}:9153` (or `[${POD_IP}]:9153`), where the
Deployment sets POD_IP from the downward API (`fieldPath: status.podIP`). The variable
must hold an IPv4 or IPv6 literal; an IPv6 one needs no brackets in the variable.

No HTTP server here: settings/checks.py checks the syntax with `env_reference`, the modes resolve the
variable with `resolve` just before binding.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping

from clusterdns.net.addr import split

#: `${NAME}`, the whole host
ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class BindError(ValueError):
    """A bind address that cannot be used; the message names the option and the variable."""


def env_reference(addr: str) -> str | None:
    """The variable named by a `${NAME}` host, else None."""
    m = ENV_REF.match(split(addr)[0])
    return m.group(1) if m else None


def resolve(addr: str, option: str, environ: Mapping[str, str] | None = None) -> str:
    """`addr` with a `${NAME}` host replaced by the variable's IP (bracketed if IPv6).

    `option` names the setting in errors, e.g. "--metrics (config `metrics:`)".
    """
    name = env_reference(addr)
    if name is None:
        return addr
    env = os.environ if environ is None else environ
    _, port = split(addr)
    value = env.get(name)
    if value is None or not value.strip():
        raise BindError(
            f"{option} is {addr!r}, but environment variable {name} is not set "
            "(in a pod, set it from the downward API: fieldRef fieldPath status.podIP)"
        )
    value = value.strip()
    try:
        ip = ipaddress.ip_address(value.split("%")[0])
    except ValueError:
        raise BindError(
            f"{option} is {addr!r}, but environment variable {name} is {value!r}, not an IPv4 or IPv6 address"
        ) from None
    host = f"[{value}]" if ip.version == 6 else value
    return f"{host}:{port}" if port is not None else host
