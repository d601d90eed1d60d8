"""A small Kubernetes API server for tests: the real list/watch protocol over HTTP.

Speaks what a list+watch client meets in a real cluster: paginated lists with
`metadata.resourceVersion` and `continue` tokens (items without kind/apiVersion),
chunked watch streams of ADDED / MODIFIED / DELETED / BOOKMARK JSON lines, one global
resourceVersion counter (like etcd), compaction (a watch from before it gets 410, as an
ERROR event by default, as the watch cache does, or as an HTTP 410), bearer-token auth.
Faults on demand: HTTP 410 / 429 with Retry-After / 503, streams cut mid-event, streams
that go silent, the whole server refusing connections. Counters per resource and request
type let tests assert e.g. "resumed without re-listing".

Runs on the test's own event loop, on 127.0.0.1 with an ephemeral port.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import ssl
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

#: resource name -> (collection path, kind, apiVersion, namespaced)
RESOURCES: dict[str, tuple[str, str, str, bool]] = {
    "services": ("/api/v1/services", "Service", "v1", True),
    "endpointslices": ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSlice", "discovery.k8s.io/v1", True),
    "namespaces": ("/api/v1/namespaces", "Namespace", "v1", False),
    "pods": ("/api/v1/pods", "Pod", "v1", True),
}
KIND_TO_RESOURCE = {kind: name for name, (_, kind, _, _) in RESOURCES.items()}

REASONS = {410: "Expired", 429: "TooManyRequests", 503: "ServiceUnavailable"}
CUT = object()  # queue sentinel: cut this stream mid-event
END = object()  # queue sentinel: end this stream cleanly


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


# ------------------------------------------------------------------ object builders
def service(ns: str, name: str, cluster_ip: str | None = "10.96.0.100", ports: list[dict] | None = None,
            labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A v1 Service; cluster_ip "None" = headless, None with externalName = ExternalName."""
    if ports is None:
        ports = [{"name": "http", "port": 80, "protocol": "TCP"}]
    s: dict[str, Any] = {"type": "ClusterIP", "ports": ports}
    if cluster_ip is not None:
        s["clusterIP"] = cluster_ip
        s["clusterIPs"] = [cluster_ip]
    s.update(spec)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": ns, "name": name, "labels": labels or {}}, "spec": s}


def endpoint_slice(ns: str, name: str, svc: str, addresses: list[str], ready: bool | None = True,
                   address_type: str = "IPv4", ports: list[dict] | None = None,
                   labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A discovery.k8s.io/v1 EndpointSlice of `svc`; no addresses gives `endpoints: null`."""
    eps = [{"addresses": [a], "conditions": {} if ready is None else {"ready": ready}} for a in addresses]
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": name,
                         "labels": {"kubernetes.io/service-name": svc, **(labels or {})}},
            "addressType": address_type, "endpoints": eps or None,
            "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def pod(ns: str, name: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]}}


# ------------------------------------------------------------------ selectors
def selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    """Equality-based label selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, comma = AND."""
    if not selector:
        return True
    for term in selector.split(","):
        term = term.strip()
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term and term not in labels:
            return False
    return True


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") if isinstance(obj, dict) else None
    return labels if isinstance(labels, dict) else {}


# ------------------------------------------------------------------ faults and streams
@dataclass
class Fault:
    """Answer the next `count` matching requests with `code` instead of serving them."""

    resource: str | None  # None: any
    on: str | None  # "list", "watch" or None: any
    code: int
    count: int
    retry_after: str | None = None
    served: list[float] = field(default_factory=list)  # monotonic times it was used


@dataclass
class Watcher:
    resource: str
    selector: str | None
    bookmarks: bool
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    silent: bool = False
    cut_after: int | None = None  # cut mid-event after this many events
    sent: int = 0


@dataclass
class Request:
    """One request the server received (for timing assertions)."""

    at: float  # time.monotonic()
    resource: str
    type: str  # list, watch
    params: dict[str, str]
    status: int


class KubeAPIServer:
    """The test API. Mutate it with apply/delete; inject faults; read the counters."""

    def __init__(self, token: str = "test-token", bookmark_interval: float = 60.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.ssl_context = ssl_context
        self.rv = 1
        self.compacted = 0  # watches from a version below this get 410
        self.gone_as = "event"  # how a too-old watch is refused: "event" or "http"
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {r: {} for r in RESOURCES}
        self.history: dict[str, list[tuple[int, str, dict[str, Any]]]] = {r: [] for r in RESOURCES}
        self.watchers: list[Watcher] = []
        self.faults: list[Fault] = []
        self.silenced: set[str] = set()  # resources whose new streams stay silent
        self.cut_next: dict[str, int] = {}  # resource -> cut the next stream after N events
        self.requests: list[Request] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        self.auth_seen: Counter[str] = Counter()
        self.emitted: dict[str, float] = {}  # "<resource>/<ns>/<name>@<rv>" -> monotonic time of the change
        self.port = 0
        self._snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._streams: set[asyncio.Task] = set()

    # ------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/version", self._version)
        for name, (path, *_rest) in RESOURCES.items():
            app.router.add_get(path, self._collection(name))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await self.start_listening()

    async def start_listening(self) -> None:
        """(Re)open the listener; after stop_listening, on the same port."""
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True,
                                 ssl_context=self.ssl_context)
        await self._site.start()
        self.port = self._runner.addresses[-1][1]

    async def stop_listening(self) -> None:
        """API down: cut every stream and refuse new connections (port kept)."""
        self.cut_streams(mid_event=False)
        await asyncio.sleep(0.05)  # let the streams write their end
        if self._site is not None:
            await self._site.stop()
            self._site = None
        assert self._runner is not None and self._runner.server is not None
        await self._runner.server.shutdown(0.2)  # keep-alive connections too

    async def close(self) -> None:
        for w in list(self.watchers):
            w.queue.put_nowait(END)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> KubeAPIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ cluster state
    def apply(self, obj: dict[str, Any]) -> int:
        """Create or replace an object (ADDED or MODIFIED); returns its resourceVersion."""
        resource = KIND_TO_RESOURCE[obj["kind"]]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace", "") if RESOURCES[resource][3] else "", meta.get("name", ""))
        old = self.objects[resource].get(key)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", old["metadata"].get("uid") if old else str(uuid.uuid4()))
        self.objects[resource][key] = obj
        self._record(resource, "MODIFIED" if old else "ADDED", obj, old)
        return self.rv

    def add_raw(self, resource: str, obj: dict[str, Any]) -> int:
        """Store anything, even an object a client cannot parse (malformed-object tests)."""
        self.rv += 1
        obj = copy.deepcopy(obj)
        if isinstance(obj.get("metadata"), dict):
            obj["metadata"]["resourceVersion"] = str(self.rv)
        key = ("raw", str(self.rv))
        self.objects[resource][key] = obj
        self._record(resource, "ADDED", obj, None)
        return self.rv

    def delete(self, resource: str, ns: str, name: str) -> int:
        key = (ns if RESOURCES[resource][3] else "", name)
        old = self.objects[resource].pop(key)
        self.rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._record(resource, "DELETED", gone, None)
        return self.rv

    def compact(self) -> None:
        """Forget history up to now: a watch from an older version gets 410 Gone."""
        self.compacted = self.rv
        for r in self.history:
            self.history[r] = [h for h in self.history[r] if h[0] > self.compacted]
        self._snapshots.clear()

    def _record(self, resource: str, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        self.history[resource].append((self.rv, etype, obj))
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        self.emitted[f"{resource}/{meta.get('namespace', '')}/{meta.get('name', '')}@{self.rv}"] = time.monotonic()
        for w in self.watchers:
            if w.resource == resource:
                ev = self._event_for(w, etype, obj, old)
                if ev is not None:
                    w.queue.put_nowait(ev)

    @staticmethod
    def _event_for(w: Watcher, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> dict | None:
        now = selector_matches(w.selector, _labels(obj))
        before = old is not None and selector_matches(w.selector, _labels(old))
        if now:
            return {"type": "ADDED" if etype == "MODIFIED" and not before and old is not None else etype, "object": obj}
        if before:  # left the selection: the API server says DELETED
            return {"type": "DELETED", "object": obj}
        return None

    # ------------------------------------------------------------ faults
    def fail(self, code: int, resource: str | None = None, on: str | None = None, count: int = 1,
             retry_after: float | None = None) -> Fault:
        """The next `count` requests (of `resource`, of type `on`) get HTTP `code`."""
        f = Fault(resource, on, code, count, None if retry_after is None else f"{retry_after:g}")
        self.faults.append(f)
        return f

    def cut_streams(self, resource: str | None = None, mid_event: bool = True) -> int:
        """Cut the open watch streams (mid-event: half a JSON line, then the socket)."""
        n = 0
        for w in list(self.watchers):
            if resource is None or w.resource == resource:
                w.queue.put_nowait(CUT if mid_event else END)
                n += 1
        return n

    def silence(self, resource: str, on: bool = True) -> None:
        """Open and new streams of `resource` stop sending anything, bookmarks included."""
        if on:
            self.silenced.add(resource)
            for w in self.watchers:
                if w.resource == resource:
                    w.silent = True
        else:  # silent streams swallowed events: end them so the client resumes
            self.silenced.discard(resource)
            for w in self.watchers:
                if w.resource == resource and w.silent:
                    w.queue.put_nowait(END)

    def open_streams(self, resource: str | None = None) -> int:
        return sum(1 for w in self.watchers if resource is None or w.resource == resource)

    # ------------------------------------------------------------ counters
    def lists(self, resource: str) -> int:
        """Complete list operations started (first pages) for `resource`."""
        return self.counts[(resource, "list")]

    def watches(self, resource: str) -> int:
        return self.counts[(resource, "watch")]

    # ------------------------------------------------------------ handlers
    async def _version(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response(status(401, "Unauthorized", "Unauthorized"), status=401)
        return web.json_response({"major": "1", "minor": "34", "gitVersion": "v1.34.0"})

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        self.auth_seen[auth] += 1
        return auth.lower() == f"bearer {self.token}".lower()

    def _collection(self, resource: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            q = dict(request.query)
            rtype = "watch" if q.get("watch") in ("1", "true") else "list"
            if rtype == "list" and not q.get("continue"):
                self.counts[(resource, "list")] += 1
            if rtype == "list":
                self.counts[(resource, "list-page")] += 1
            else:
                self.counts[(resource, "watch")] += 1
            record = Request(time.monotonic(), resource, rtype, q, 200)
            self.requests.append(record)
            if not self._authorized(request):
                record.status = 401
                return web.json_response(status(401, "Unauthorized", "Unauthorized"), status=401)
            fault = self._take_fault(resource, rtype)
            if fault is not None:
                record.status = fault.code
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                reason = REASONS.get(fault.code, "InternalError")
                body = status(fault.code, reason, f"injected {fault.code}")
                return web.json_response(body, status=fault.code, headers=headers)
            if rtype == "list":
                resp = self._list(resource, q)
            else:
                resp = await self._watch(request, resource, q)
            record.status = resp.status
            return resp
        return handler

    def _take_fault(self, resource: str, rtype: str) -> Fault | None:
        for f in self.faults:
            if f.count > 0 and f.resource in (None, resource) and f.on in (None, rtype):
                f.count -= 1
                f.served.append(time.monotonic())
                return f
        return None

    def _list(self, resource: str, q: dict[str, str]) -> web.Response:
        _path, kind, api, _ = RESOURCES[resource]
        limit = int(q.get("limit") or 0)
        if q.get("continue"):
            token = q["continue"]
            snap = self._snapshots.get(token)
            if snap is None:
                expired = status(410, "Expired", "The provided continue parameter is too old")
                return web.json_response(expired, status=410)
            rv, items = snap
        else:
            rv = self.rv
            items = [o for o in self.objects[resource].values() if selector_matches(q.get("labelSelector"), _labels(o))]
            items = sorted(items, key=lambda o: json.dumps(o.get("metadata", {}).get("name")))
        page, rest = (items[:limit], items[limit:]) if limit else (items, [])
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if rest:
            token = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()
            self._snapshots[token] = (rv, rest)
            meta["continue"] = token
            meta["remainingItemCount"] = len(rest)
        out = []
        for o in page:  # list items carry no kind/apiVersion: the List does
            o = dict(o)
            o.pop("kind", None)
            o.pop("apiVersion", None)
            out.append(o)
        return web.json_response({"kind": kind + "List", "apiVersion": api, "metadata": meta, "items": out})

    async def _watch(self, request: web.Request, resource: str, q: dict[str, str]) -> web.StreamResponse:
        since = int(q.get("resourceVersion") or 0)
        too_old = since and since < self.compacted
        gone = status(410, "Expired", f"too old resource version: {since} ({self.compacted})")
        if too_old and self.gone_as == "http":
            return web.json_response(gone, status=410)
        w = Watcher(resource, q.get("labelSelector"), q.get("allowWatchBookmarks") == "true",
                    silent=resource in self.silenced, cut_after=self.cut_next.pop(resource, None))
        if too_old:
            w.queue.put_nowait({"type": "ERROR", "object": gone})
            w.queue.put_nowait(END)
        elif since == 0:  # "any version": synthetic ADDED for what exists
            for o in self.objects[resource].values():
                if selector_matches(w.selector, _labels(o)):
                    w.queue.put_nowait({"type": "ADDED", "object": o})
        else:
            for rv, etype, obj in self.history[resource]:
                if rv > since and selector_matches(w.selector, _labels(obj)):
                    w.queue.put_nowait({"type": etype, "object": obj})
        self.watchers.append(w)  # registered in the same step as the replay: no gap
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            await resp.prepare(request)
            await self._pump(request, resp, w, float(q.get("timeoutSeconds") or 1800))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._streams.discard(task)
            if w in self.watchers:
                self.watchers.remove(w)
        return resp

    async def _pump(self, request: web.Request, resp: web.StreamResponse, w: Watcher, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                ev = await asyncio.wait_for(w.queue.get(), min(left, self.bookmark_interval))
            except TimeoutError:
                if w.bookmarks and not w.silent and loop.time() < deadline:
                    await resp.write(json.dumps({"type": "BOOKMARK", "object": {
                        "kind": RESOURCES[w.resource][1], "apiVersion": RESOURCES[w.resource][2],
                        "metadata": {"resourceVersion": str(self.rv)}}}).encode() + b"\n")
                continue
            if ev is END:
                break
            if ev is CUT or (w.cut_after is not None and w.sent >= w.cut_after):
                line = json.dumps(ev if isinstance(ev, dict) else {"type": "MODIFIED", "object": {}}).encode()
                await resp.write(line[: max(1, len(line) // 2)])
                assert request.transport is not None
                request.transport.abort()
                return
            if w.silent:
                continue  # swallowed: a client resuming from its version gets it from history
            await resp.write(json.dumps(ev).encode() + b"\n")
            w.sent += 1
        await resp.write_eof()


# ------------------------------------------------------------------ kubeconfig
def write_kubeconfig(path: Path, server: str, token: str = "test-token", context: str = "test",
                     ca_file: Path | None = None, extra_contexts: dict[str, str] | None = None) -> Path:
    """A kubeconfig with token auth pointing at `server` (current-context = `context`).

    `extra_contexts` maps more context names to server URLs (for --context tests).
    """
    servers = {context: server, **(extra_contexts or {})}
    clusters, contexts, users = [], [], []
    for name, url in servers.items():
        cluster: dict[str, Any] = {"server": url}
        if ca_file is not None:
            cluster["certificate-authority"] = str(ca_file)
        clusters.append({"name": name, "cluster": cluster})
        users.append({"name": name, "user": {"token": token}})
        contexts.append({"name": name, "context": {"cluster": name, "user": name}})
    doc = {"apiVersion": "v1", "kind": "Config", "clusters": clusters, "users": users,
           "contexts": contexts, "current-context": context, "preferences": {}}
    path.write_text(yaml.safe_dump(doc))
    return path
