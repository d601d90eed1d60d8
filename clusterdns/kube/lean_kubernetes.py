"""Import the configuration half of the `kubernetes` package without its generated models.

`kubernetes/__init__.py` and `kubernetes/client/__init__.py` import every API class and
every generated (pydantic) model: ~400 modules, 13 MB of RSS and ~0.15 s, none of which
the server uses (it speaks raw JSON over aiohttp, `client.py`). Only
`kubernetes.client.configuration` and `kubernetes.config` are needed.

So the two package modules are created empty, with their real `__path__` and spec, so
their submodules import as usual. The first access to any other attribute (anyone who
wants the whole package in the same process, as tests do) runs the real `__init__` into
the same module objects, so `kubernetes.client.CoreV1Api` still works. `kube_config`
imports `ApiClient` by name but only calls it to refresh OIDC tokens: it gets a stand-in
that builds the real one when called. If the package's layout ever differs, the normal import
is used and only the memory saving is lost.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from typing import Any

log = logging.getLogger("clusterdns")

_PACKAGES = ("kubernetes", "kubernetes.client")


class _ApiClientOnDemand:
    """Builds `kubernetes.client.api_client.ApiClient` (and its models) only when called."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.api_client import ApiClient

        return ApiClient(*args, **kwargs)


def _complete_all() -> None:
    """Run the real `__init__` of both packages (client first) into the hollow modules."""
    for name in reversed(_PACKAGES):
        module = sys.modules[name]
        if not _is_hollow(module):
            continue  # completed already (its own `__getattr__`, if any, is the real one)
        del module.__dict__["__getattr__"]
        module.__dict__.pop("ApiClient", None)
        spec = module.__spec__
        assert spec is not None and spec.loader is not None
        spec.loader.exec_module(module)


def _is_hollow(module: types.ModuleType) -> bool:
    return getattr(module.__dict__.get("__getattr__"), "__module__", None) == __name__


def _on_first_use(module: types.ModuleType) -> Any:
    """A module `__getattr__`: any attribute not there yet loads the whole package."""

    def __getattr__(name: str) -> Any:
        _complete_all()
        return getattr(module, name)

    return __getattr__


def _hollow(name: str, location: str) -> bool:
    spec = importlib.util.spec_from_file_location(name, f"{location}/__init__.py",
                                                  submodule_search_locations=[location])
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    module.__getattr__ = _on_first_use(module)  # type: ignore[method-assign]
    sys.modules[name] = module
    if "." in name:
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, module)
    return True


def install() -> None:
    """Make `kubernetes.config` importable at the cost of its configuration modules only."""
    if any(name in sys.modules for name in _PACKAGES):
        return  # already imported (whole or lean): nothing to save
    found = importlib.util.find_spec("kubernetes")
    if found is None or not found.submodule_search_locations:
        return
    root = next(iter(found.submodule_search_locations))
    try:
        if not (_hollow("kubernetes", root) and _hollow("kubernetes.client", f"{root}/client")):
            raise ImportError("kubernetes package layout not recognised")
        from kubernetes.client.configuration import Configuration

        client = sys.modules["kubernetes.client"]
        client.Configuration = Configuration  # type: ignore[attr-defined]
        client.ApiClient = _ApiClientOnDemand  # type: ignore[attr-defined]
        import kubernetes.config  # noqa: F401  (proves the lean import works)

        del client.ApiClient  # kube_config holds it now; anyone else gets the real one
    except Exception as e:  # noqa: BLE001 - any failure: fall back to the full import
        log.debug("lean kubernetes import failed (%s); importing the whole package", e)
        for name in [n for n in sys.modules if n == "kubernetes" or n.startswith("kubernetes.")]:
            del sys.modules[name]
