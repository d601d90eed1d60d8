"""Kubernetes YAML from disk (what `kubectl get -o yaml` prints) as a record source.

A file that is not YAML stops start-up with the file and line; one broken object is
skipped with a warning naming file, kind, namespace/name and field, and the rest is used.

`namespaces` and `labels` filter as they do with the API source (kube/watch.py), so the
same objects give the same answers from either source: the label selector, which the API
server applies to Services and EndpointSlices, is matched against the raw object's
metadata.labels before parsing; the namespace filter drops every object outside the
listed namespaces after parsing, Namespace objects by their own name.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from clusterdns.kube import kubeyaml
from clusterdns.kube.objects import KINDS, KubeObject, Namespace, ObjectError, parse_object
from clusterdns.kube.selector import Selector, parse_selector

log = logging.getLogger("clusterdns")

try:  # libyaml is several times faster on a 5,000-service cluster
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - pyyaml wheels ship libyaml
    _Loader = yaml.SafeLoader

SUFFIXES = (".yaml", ".yml", ".json")

#: kinds the `labels` selector applies to: the API source's selectable resources
#: (watch.Resource.selectable: Services, EndpointSlices) and v1 Endpoints, which stand in
#: for a Service's EndpointSlices and carry the Service's labels as slices do
SELECTABLE_KINDS = frozenset({"Service", "EndpointSlice", "Endpoints"})


class ManifestError(Exception):
    """A manifest that cannot be read at all: names the file (and line)."""


def manifest_files(path: str | Path) -> list[Path]:
    """A file, or every YAML/JSON file below a folder, in a stable order."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES and f.is_file())
    if p.is_file():
        return [p]
    raise ManifestError(f"{path}: no such file or folder")


def _documents(path: Path) -> Iterator[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from None
    try:  # kubectl's kind of YAML, read several times faster; the documents PyYAML gives
        docs = kubeyaml.load_all(text, _one_document)
    except kubeyaml.NotPlain:
        pass  # PyYAML reads the file whole, and its errors name the line
    else:
        yield from docs
        return
    try:
        yield from yaml.load_all(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"{path}{where}: not valid YAML: {problem}") from None


def _one_document(text: str) -> Any:
    """One document kubeyaml leaves to PyYAML; any error sends the whole file there."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except Exception:  # noqa: BLE001 - whatever it is, PyYAML's whole-file read reports it
        raise kubeyaml.NotPlain from None


def _items(doc: Any) -> Iterator[Any]:
    """Flatten `kind: List` and typed lists (ServiceList items carry no kind)."""
    if (
        isinstance(doc, dict)
        and isinstance(doc.get("kind"), str)
        and doc["kind"].endswith("List")
        and isinstance(doc.get("items"), list)
    ):
        kind = doc["kind"][:-4]
        for item in doc["items"]:
            if isinstance(item, dict) and kind and "kind" not in item:
                item = {"kind": kind, "apiVersion": doc.get("apiVersion"), **item}
            yield from _items(item)
    elif doc is not None:
        yield doc


def _selected(selector: Selector, item: Any) -> bool:
    """What the API server's labelSelector would return; other kinds always pass.

    Labels that could not come from an API server (not a mapping of strings) make the
    object broken, as a broken field does, rather than silently unselected.
    """
    if not isinstance(item, dict):
        return True  # parse_object reports it
    kind = item.get("kind")
    if not isinstance(kind, str) or kind not in SELECTABLE_KINDS or item.get("apiVersion") not in KINDS[kind]:
        return True
    meta = item.get("metadata")
    if not isinstance(meta, dict):
        return True  # parse_object reports it
    labels = meta.get("labels")
    if labels is None:
        return selector.matches({})
    if isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values()):
        return selector.matches(labels)
    ref = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
    if not isinstance(labels, dict):
        raise ObjectError(kind, ref, "metadata.labels", "not a mapping")
    key, value = next((k, v) for k, v in labels.items() if not isinstance(v, str))
    raise ObjectError(kind, ref, f"metadata.labels[{key}]", f"not a string: {value!r}")


def load_manifests(
    paths: list[str], namespaces: Iterable[str] = (), labels: str | None = None, pod_names: bool = True
) -> tuple[list[KubeObject], int]:
    """Every usable object under `paths` that the filters keep, and how many broken
    objects were skipped.

    `namespaces` (empty: all) and the label selector `labels` (None or "": none) mean
    what they mean with the API source; a bad selector raises SelectorError (ValueError).
    `pod_names`: keep endpoints' pod names (`endpoint_pod_names`).
    """
    selector = parse_selector(labels) if labels else None
    allowed = frozenset(namespaces)
    objects: list[KubeObject] = []
    skipped = 0
    for path in paths:
        for f in manifest_files(path):
            for doc in _documents(f):
                for item in _items(doc):
                    try:
                        if selector is not None and not _selected(selector, item):
                            continue
                        obj = parse_object(item, pod_names)
                    except ObjectError as exc:
                        skipped += 1
                        log.warning("%s: skipped %s", f, exc)
                        continue
                    if obj is None:
                        continue
                    if allowed and (obj.name if isinstance(obj, Namespace) else obj.namespace) not in allowed:
                        continue  # watch.KubeSource._wanted: an unlisted namespace does not exist
                    objects.append(obj)
    return objects, skipped


@contextlib.contextmanager
def bulk_load() -> Iterator[None]:
    """No cyclic garbage collection while a whole cluster is read and stored.

    Parsed objects hold no reference cycles, so the collector frees nothing here, but it
    would walk the growing heap again and again (~0.2 s of a 5,000-service start-up).
    What was built is then frozen (gc.freeze): it lives as long as the process, and later
    collections, on the answer path, skip it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
