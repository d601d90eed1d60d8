"""Import the configuration half of the `kubernetes` package without what it never uses.

`kubernetes/__init__.py` and `kubernetes/client/__init__.py` import every API class (and
the models package); `kubernetes.config.kube_config` imports requests-oauthlib and
oauthlib (with requests) for OIDC token refresh. The server speaks raw JSON over aiohttp
(`client.py`) and needs only `kubernetes.client.configuration` and `kubernetes.config`:
the rest is 23 MB of RSS per process.

So those packages are created empty, with their real `__path__` and spec, so their
submodules import as usual. The first access to any other attribute (anyone who wants
the whole package in the same process, as tests do) runs the real `__init__` into the
same module object, so `kubernetes.client.CoreV1Api` still works. `kube_config` imports
`ApiClient` and `OAuth2Session` by name but only calls them to refresh tokens: it gets
stand-ins that build the real ones when called. If a package's layout ever differs, the
normal import is used and only the memory saving is lost.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from typing import Any

log = logging.getLogger("clusterdns")

#: made hollow (each completes itself on first use), in this order
_PACKAGES = ("kubernetes", "kubernetes.client", "oauthlib", "oauthlib.oauth2", "requests_oauthlib")
#: names `kube_config` imports from a hollow package but only calls (OIDC token refresh):
#: (hollow package, name, the module that defines it)
_STAND_INS = (
    ("kubernetes.client", "ApiClient", "kubernetes.client.api_client"),
    ("requests_oauthlib", "OAuth2Session", "requests_oauthlib.oauth2_session"),
)


def _on_demand(name: str, home: str) -> type:
    """A class whose construction builds `home.name` instead (importing it then)."""

    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(home), name)(*args, **kwargs)

    return type(name, (), {"__new__": __new__, "__module__": __name__})


def _is_hollow(module: types.ModuleType) -> bool:
    return getattr(module.__dict__.get("__getattr__"), "__module__", None) == __name__


def _complete(module: types.ModuleType) -> None:
    """Run the package's real `__init__` into the hollow module (once)."""
    if not _is_hollow(module):
        return  # completed already (its own `__getattr__`, if any, is the real one)
    del module.__dict__["__getattr__"]
    spec = module.__spec__
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(module)


def _on_first_use(module: types.ModuleType) -> Any:
    """A module `__getattr__`: any attribute not there yet loads the whole package."""

    def __getattr__(name: str) -> Any:
        _complete(module)
        return getattr(module, name)

    return __getattr__


def _hollow(name: str) -> None:
    parent, _, child = name.rpartition(".")
    if parent:
        location = f"{sys.modules[parent].__path__[0]}/{child}"
    else:
        found = importlib.util.find_spec(name)
        if found is None or not found.submodule_search_locations:
            raise ImportError(f"{name} is not an installed package")
        location = next(iter(found.submodule_search_locations))
    spec = importlib.util.spec_from_file_location(
        name, f"{location}/__init__.py", submodule_search_locations=[location]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"{name}: package layout not recognised")
    module = importlib.util.module_from_spec(spec)
    module.__getattr__ = _on_first_use(module)  # type: ignore[method-assign]  # PEP 562: a module's own __getattr__
    sys.modules[name] = module
    if parent:
        setattr(sys.modules[parent], child, module)


def install() -> None:
    """Make `kubernetes.config` importable at the cost of its configuration modules only."""
    if any(name in sys.modules for name in _PACKAGES):
        return  # already imported (whole or lean): nothing to save
    try:
        for name in _PACKAGES:
            _hollow(name)
        from kubernetes.client.configuration import Configuration

        sys.modules["kubernetes.client"].Configuration = Configuration  # type: ignore[attr-defined]  # set on the hollow package
        for package, name, home in _STAND_INS:
            setattr(sys.modules[package], name, _on_demand(name, home))
        import kubernetes.config  # noqa: F401  (proves the lean import works)

        for package, name, _ in _STAND_INS:  # kube_config holds them now; anyone else
            delattr(sys.modules[package], name)  # gets the real ones
    except Exception as e:  # noqa: BLE001 - any failure: fall back to the full import
        log.debug("lean kubernetes import failed (%s); importing the whole package", e)
        for name in [n for n in sys.modules if n.partition(".")[0] in ("kubernetes", "oauthlib", "requests_oauthlib")]:
            del sys.modules[name]
