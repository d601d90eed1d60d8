"""List, then watch, the API resources DNS answers from, and keep the ClusterStore current.

Why our own loop and not the client's `Watch` or `SharedInformer`: a DNS server must
survive every way a watch dies (kopf's `watching.py` explains the same choice). Three
layers per resource, each one small:

- `_watch_forever`  the forever loop: catches failures, backs off with jitter (honours
  Retry-After on 429), logs an outage once and the recovery once. Trivial on purpose.
- `_list_and_watch` list (paginated) -> replace that kind in the store in one swap ->
  mark synced -> watch from the list's resourceVersion; a stream that ends or drops is
  resumed from the newest resourceVersion seen (no re-list); 410 Gone re-lists.
- `_watch_stream`   one HTTP watch request (`allowWatchBookmarks`, `timeoutSeconds`)
  with an inactivity timeout, so a stream that goes silent is treated as dead
  (coredns#3587: a lost watch left new Services unresolvable for two months).

Everything runs on the event loop that answers queries, but never blocks it for long:
list pages are decoded in a worker thread, and each watch event is one small upsert.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from clusterdns.kube.client import ApiConnection
from clusterdns.kube.objects import KubeObject, Namespace, ObjectError, parse_object
from clusterdns.kube.store import ClusterStore

log = logging.getLogger("clusterdns")

#: a watch line longer than this is a broken stream, not an object (256 MiB)
MAX_LINE = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Resource:
    """One API collection we list and watch, across all namespaces."""

    name: str  # plural, used in logs and in /ready's list of what is missing
    kind: str
    api_version: str
    path: str
    selectable: bool  # the `labels` option applies (CoreDNS: Services and their endpoints)


SERVICES = Resource("services", "Service", "v1", "/api/v1/services", True)
ENDPOINTSLICES = Resource(
    "endpointslices", "EndpointSlice", "discovery.k8s.io/v1", "/apis/discovery.k8s.io/v1/endpointslices", True
)
NAMESPACES = Resource("namespaces", "Namespace", "v1", "/api/v1/namespaces", False)
PODS = Resource("pods", "Pod", "v1", "/api/v1/pods", False)


@dataclass(frozen=True)
class WatchSettings:
    """Options of the Kubernetes source; defaults follow CoreDNS, client-go and kopf."""

    namespaces: frozenset[str] = frozenset()
    """Only these namespaces exist (CoreDNS `namespaces`); empty means all."""
    labels: str | None = None
    """Label selector for Services and EndpointSlices (CoreDNS `labels`), sent to the API."""
    pods: bool = False
    """Watch Pods too: only `pods verified` needs them (costly in memory and API load)."""
    page_size: int = 500
    """Items per list page (`limit`); client-go's reflector uses 500."""
    watch_timeout: float = 300.0
    """Server-side `timeoutSeconds`, randomised up to 2x like client-go so that many
    replicas do not reconnect in step. The stream then resumes from the newest version."""
    inactivity_timeout: float = 70.0
    """No byte for this long = dead stream. The API server sends a BOOKMARK about every
    60 s (kopf's default, same reasoning)."""
    backoff_initial: float = 0.5
    """First retry delay after an error; doubles per consecutive failure, with jitter."""
    backoff_max: float = 30.0
    """Cap of the retry delay (Retry-After is honoured up to `retry_after_max`)."""
    retry_after_max: float = 300.0
    connect_timeout: float = 10.0
    request_timeout: float = 60.0
    """Whole-request timeout of one list page."""


@dataclass(frozen=True, slots=True)
class EventTiming:
    """One applied watch event: when its bytes arrived and when the store had it."""

    resource: str
    type: str
    ref: str
    received: float  # time.monotonic() when the line was read
    applied: float  # time.monotonic() after the store's listeners ran

    @property
    def latency(self) -> float:
        return self.applied - self.received


@dataclass
class ResourceState:
    """Progress of one resource's loop; counters make tests and debugging concrete."""

    resource: Resource
    version: str | None = None  # newest resourceVersion seen; None: must (re-)list
    synced: bool = False
    failures: int = 0  # consecutive, for the backoff
    lists: int = 0
    watches: int = 0
    events: int = 0
    skipped: int = 0  # malformed objects
    last_seen: float = 0.0  # time.time() of the last list, event or bookmark (a metric: data freshness)


class ApiError(Exception):
    """The API answered with an error status (HTTP or a watch ERROR event)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")


class Gone(ApiError):
    """410: the resourceVersion we hold was compacted away; only a re-list helps."""


class Throttled(ApiError):
    """429: the API server asks us to wait `retry_after` seconds."""

    def __init__(self, status: int, message: str, retry_after: float) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after


class StreamSilent(Exception):
    """No event and no bookmark within the inactivity timeout."""


def _retry_after(value: str | None) -> float:
    if not value:
        return 1.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return 1.0


async def _raise_for_status(resp: aiohttp.ClientResponse) -> None:
    if resp.status == 200:
        return
    text = (await resp.text(errors="replace"))[:300]
    try:
        message = json.loads(text).get("message", text)
    except (ValueError, AttributeError):
        message = text.strip()
    if resp.status == 410:
        raise Gone(410, message)
    if resp.status == 429:
        raise Throttled(429, message, _retry_after(resp.headers.get("Retry-After")))
    raise ApiError(resp.status, message)


class KubeSource:
    """Feeds a ClusterStore from the Kubernetes API; `run()` runs until cancelled."""

    def __init__(self, store: ClusterStore, conn: ApiConnection, settings: WatchSettings | None = None) -> None:
        self.store = store
        self.conn = conn
        self.settings = settings or WatchSettings()
        resources = [SERVICES, ENDPOINTSLICES, NAMESPACES] + ([PODS] if self.settings.pods else [])
        self.states = {r.name: ResourceState(r) for r in resources}
        self.synced = asyncio.Event()
        """Set once every resource has been listed into the store (readiness)."""
        self.observers: list[Callable[[EventTiming], None]] = []
        """Called after each applied watch event (event -> store latency)."""
        self._failing: dict[str, str] = {}
        self._outage_since: float | None = None
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ public
    def missing(self) -> list[str]:
        """Names of the resources not synced yet (what /ready reports)."""
        return [name for name, st in self.states.items() if not st.synced]

    @property
    def outage(self) -> bool:
        return bool(self._failing)

    async def run(self) -> None:
        log.info(
            "watching the Kubernetes API at %s (%s): %s", self.conn.base_url, self.conn.source, ", ".join(self.states)
        )
        async with self.conn.session(self.settings.connect_timeout) as session:
            self._session = session
            try:
                async with asyncio.TaskGroup() as tg:
                    for st in self.states.values():
                        tg.create_task(self._watch_forever(st), name=f"watch-{st.resource.name}")
            finally:
                self._session = None

    async def wait_synced(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the first sync (CoreDNS `startup_timeout`).

        Returns False, after one warning, when the API has not been read by then: the
        server starts anyway and answers SERVFAIL for names it cannot know yet.
        """
        try:
            async with asyncio.timeout(timeout):
                await self.synced.wait()
            return True
        except TimeoutError:
            log.warning(
                "not synced with the Kubernetes API after %g s (missing: %s); serving anyway, "
                "cluster names answer SERVFAIL until the first sync",
                timeout,
                ", ".join(self.missing()),
            )
            return False

    # ------------------------------------------------------------------ layer 1
    async def _watch_forever(self, st: ResourceState) -> None:
        while True:
            try:
                await self._list_and_watch(st)
            except Throttled as e:
                self._failed(st, e)
                delay = min(max(e.retry_after, self._backoff(st)), self.settings.retry_after_max)
            except (ApiError, StreamSilent, aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                self._failed(st, e)
                delay = self._backoff(st)
            except Exception as e:  # a bug must not stop the watch: DNS keeps the last state
                log.exception("%s watch failed unexpectedly", st.resource.name)
                self._failed(st, e)
                delay = self._backoff(st)
            log.debug("%s: retrying in %.2f s", st.resource.name, delay)
            await asyncio.sleep(delay)

    def _backoff(self, st: ResourceState) -> float:
        """Exponential backoff with 'equal jitter': never 0, never in step with peers."""
        s = self.settings
        base = min(s.backoff_max, s.backoff_initial * 2 ** min(st.failures - 1, 30))
        return base / 2 + random.uniform(0, base / 2)

    def _failed(self, st: ResourceState, err: BaseException) -> None:
        st.failures += 1
        reason = f"{st.resource.name}: {type(err).__name__}: {err}"
        if not self._failing:
            self._outage_since = time.monotonic()
            then = (
                "answering from the last synced state until it is back"
                if self.store.synced
                else "cluster names answer SERVFAIL until the first sync"
            )
            log.warning("Kubernetes API unavailable (%s); %s", reason, then)
        else:
            log.debug("Kubernetes API still unavailable (%s)", reason)
        self._failing[st.resource.name] = reason

    def _succeeded(self, st: ResourceState) -> None:
        st.failures = 0
        if self._failing.pop(st.resource.name, None) is not None and not self._failing:
            took = time.monotonic() - (self._outage_since or time.monotonic())
            self._outage_since = None
            log.warning("Kubernetes API available again after %.1f s", took)

    # ------------------------------------------------------------------ layer 2
    async def _list_and_watch(self, st: ResourceState) -> None:
        while True:
            if st.version is None:
                await self._list(st)
            started = time.monotonic()
            try:
                lines = await self._watch_stream(st)
            except Gone as e:
                log.info("%s: resourceVersion %s expired (%s); re-listing", st.resource.name, st.version, e)
                st.version = None
                continue
            if lines == 0 and time.monotonic() - started < 1.0:
                # a stream that closes at once with nothing in it: don't spin on it
                await asyncio.sleep(self._backoff(st) if st.failures else self.settings.backoff_initial)

    def _params(self, res: Resource) -> dict[str, str]:
        params: dict[str, str] = {}
        if res.selectable and self.settings.labels:
            params["labelSelector"] = self.settings.labels
        return params

    async def _list(self, st: ResourceState) -> None:
        """Read every page, then swap that kind in the store at once (objects deleted
        while we were away disappear; a query sees the old state or the new one)."""
        res = st.resource
        assert self._session is not None
        started = time.monotonic()
        objs: list[KubeObject] = []
        cont: str | None = None
        version = ""
        pages = 0
        while True:
            params = self._params(res) | {"limit": str(self.settings.page_size)}
            if cont:
                params["continue"] = cont
            timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout)
            async with self._session.get(
                self.conn.url(res.path),
                params=params,
                headers=await self.conn.headers(),
                timeout=timeout,
                server_hostname=self.conn.server_hostname,
            ) as resp:
                try:
                    await _raise_for_status(resp)
                except Gone:
                    if cont is None:
                        raise
                    # the continue token expired (compaction during a long list): restart
                    log.info("%s: list continue token expired; listing again", res.name)
                    objs, cont, pages = [], None, 0
                    continue
                body = await resp.read()
            page_objs, meta = await asyncio.to_thread(self._decode_page, res, body)
            objs.extend(page_objs)
            pages += 1
            version = meta.get("resourceVersion") or version
            cont = meta.get("continue") or None
            if not cont:
                break
        if not version:
            raise ApiError(200, f"{res.name} list has no metadata.resourceVersion")
        self.store.replace(res.kind, objs)
        st.version = version
        st.lists += 1
        st.last_seen = time.time()
        self._succeeded(st)
        log.info(
            "listed %d %s in %d page(s), %.0f ms (resourceVersion %s)",
            len(objs),
            res.name,
            pages,
            (time.monotonic() - started) * 1000,
            version,
        )
        if not st.synced:
            st.synced = True
            self._check_synced()

    def _decode_page(self, res: Resource, body: bytes) -> tuple[list[KubeObject], dict[str, Any]]:
        """Runs in a worker thread: JSON and slim objects for one list page."""
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError(f"{res.name} list: not a JSON object")
        meta = doc.get("metadata") or {}
        out: list[KubeObject] = []
        for item in doc.get("items") or ():
            obj = self._decode(res, item)
            if obj is not None:
                out.append(obj)
        return out, meta

    def _decode(self, res: Resource, raw: Any) -> KubeObject | None:
        """One object -> slim object; None when malformed (logged) or filtered out."""
        st = self.states[res.name]
        if isinstance(raw, dict):
            # list items carry no kind/apiVersion: the List does
            raw.setdefault("kind", res.kind)
            raw.setdefault("apiVersion", res.api_version)
        try:
            obj = parse_object(raw, pod_names=self.store.endpoint_pod_names)
        except ObjectError as e:
            st.skipped += 1
            log.warning("skipping malformed %s %s: field %s: %s", e.kind, e.ref, e.field, e.problem)
            return None
        if obj is None or not self._wanted(obj):
            return None
        return obj

    def _wanted(self, obj: KubeObject) -> bool:
        allowed = self.settings.namespaces
        if not allowed:
            return True
        ns = obj.name if isinstance(obj, Namespace) else obj.namespace
        return ns in allowed

    # ------------------------------------------------------------------ layer 3
    async def _watch_stream(self, st: ResourceState) -> int:
        """One watch request from `st.version`; returns the number of lines read.

        Returns normally when the server ends the stream (timeoutSeconds) or drops it;
        raises Gone on 410, StreamSilent on inactivity, ApiError on other errors.
        """
        res = st.resource
        s = self.settings
        assert self._session is not None and st.version is not None
        params = self._params(res) | {
            "watch": "1",
            "resourceVersion": st.version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(int(s.watch_timeout * random.uniform(1.0, 2.0))),
        }
        st.watches += 1
        lines = 0
        loop = asyncio.get_running_loop()
        deadline = asyncio.timeout(s.inactivity_timeout + s.connect_timeout)
        try:
            async with (
                deadline,
                self._session.get(
                    self.conn.url(res.path),
                    params=params,
                    headers=await self.conn.headers(),
                    server_hostname=self.conn.server_hostname,
                ) as resp,
            ):
                await _raise_for_status(resp)
                deadline.reschedule(loop.time() + s.inactivity_timeout)
                buf = bytearray()
                try:
                    async for chunk in resp.content.iter_any():
                        received = time.monotonic()
                        deadline.reschedule(loop.time() + s.inactivity_timeout)
                        buf += chunk
                        while (end := buf.find(b"\n")) >= 0:
                            line = bytes(buf[:end])
                            del buf[: end + 1]
                            if line.strip():
                                if lines == 0:
                                    self._succeeded(st)
                                lines += 1
                                self._event(st, line, received)
                        if len(buf) > MAX_LINE:
                            raise ValueError(f"{res.name} watch: line longer than {MAX_LINE} bytes")
                except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
                    # cut mid-stream (API server restart, LB idle timeout): resume below
                    log.info("%s watch stream dropped after %d events (%s); resuming", res.name, lines, e)
                    return lines
        except TimeoutError:
            if not deadline.expired():
                raise  # aiohttp's own connect timeout
            raise StreamSilent(f"no event or bookmark for {s.inactivity_timeout:g} s") from None
        if buf.strip():
            log.info("%s watch stream ended mid-event; resuming from %s", res.name, st.version)
        if lines == 0:
            self._succeeded(st)  # a clean, empty stream end is still a working API
        return lines

    def _event(self, st: ResourceState, line: bytes, received: float) -> None:
        res = st.resource
        try:
            event = json.loads(line)
            etype = event["type"]
            raw = event["object"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{res.name} watch: undecodable event: {e}") from None
        if etype == "ERROR":
            code = raw.get("code") if isinstance(raw, dict) else None
            message = raw.get("message", "") if isinstance(raw, dict) else str(raw)
            if code == 410:
                raise Gone(410, message)
            if code == 429:
                raise Throttled(429, message, 1.0)
            raise ApiError(code if isinstance(code, int) else 500, message)
        meta = raw.get("metadata") if isinstance(raw, dict) else None
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        st.last_seen = time.time()
        if etype == "BOOKMARK":
            if version:
                st.version = version
            return
        st.events += 1
        ref = "?"
        if etype in ("ADDED", "MODIFIED"):
            obj = self._decode(res, raw)
            if obj is not None:
                ref = obj.name if isinstance(obj, Namespace) else f"{obj.namespace}/{obj.name}"
                self.store.upsert(obj)
        elif etype == "DELETED":
            key = self._delete_key(res, meta)
            if key is not None:
                ref = f"{key[0]}/{key[1]}" if key[0] else key[1]
                if self._wanted_ns(res, key):
                    self.store.delete(res.kind, *key)
        else:
            log.warning("%s watch: unknown event type %r skipped", res.name, etype)
        if version:
            st.version = version
        if ref != "?" and self.observers:
            timing = EventTiming(res.name, etype, ref, received, time.monotonic())
            for observer in self.observers:
                observer(timing)

    def _delete_key(self, res: Resource, meta: Any) -> tuple[str, str] | None:
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            self.states[res.name].skipped += 1
            log.warning("skipping malformed %s deletion: field metadata.name: missing", res.kind)
            return None
        if res.kind == "Namespace":
            return "", name.lower()
        ns = meta.get("namespace")
        return (ns.lower() if isinstance(ns, str) and ns else "default"), name.lower()

    def _wanted_ns(self, res: Resource, key: tuple[str, str]) -> bool:
        allowed = self.settings.namespaces
        return not allowed or (key[1] if res.kind == "Namespace" else key[0]) in allowed

    def _check_synced(self) -> None:
        if not self.missing() and not self.synced.is_set():
            self.store.mark_synced()
            self.synced.set()
            log.info("synced with the Kubernetes API (%s)", ", ".join(self.states))
