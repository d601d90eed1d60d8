"""When to re-read the config file: SIGHUP, and (with `watch_config`) a change of the file.

A ConfigMap mounted as a volume is a symlink chain the kubelet updates atomically:
`clusterdns.yaml -> ..data/clusterdns.yaml`, `..data -> ..2026_11_21_10_00_00.123`; an
update writes a new timestamped directory and swaps `..data`. inotify on the file sees
nothing useful then (the watched inode never changes), so `FileWatch` polls: the
resolved target path, its inode, size and mtime; when any of them moves, the bytes are
read and compared with the last ones, so a `touch` or a swap to identical content does
not reload. Polling every 2 s costs one `stat` and the kubelet itself takes up to a
minute to propagate a ConfigMap change, so nothing is gained by reacting faster.

`Reloader` serialises reloads (a SIGHUP during a reload runs once more afterwards,
never concurrently) and never lets an exception escape: a failed reload is logged by
the callback and the old config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("clusterdns")

#: seconds between polls of the config file; kubelet's ConfigMap sync is ~60 s anyway
POLL_INTERVAL = 2.0


class FileWatch:
    """Tells whether a (possibly symlinked) file's content changed since the last look."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp = self._stat()
        self._digest = self._read_digest()

    def _stat(self) -> tuple[str, int, int, int] | None:
        try:
            target = os.path.realpath(self.path)
            st = os.stat(target)
        except OSError:
            return None  # mid-swap or removed: look again next time
        return target, st.st_ino, st.st_size, st.st_mtime_ns

    def _read_digest(self) -> bytes | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).digest()
        except OSError:
            return None

    def changed(self) -> bool:
        """True once per real content change (stat first, so an idle poll reads nothing)."""
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        digest = self._read_digest()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        return True


class Reloader:
    """Runs `reload()` on SIGHUP and on file changes, one at a time."""

    def __init__(
        self,
        reload: Callable[[str], Awaitable[object]],
        path: str | Path | None,
        watch: bool = False,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.reload = reload
        self.path = path
        self.watch = watch and path is not None
        self.interval = interval
        self._wanted: asyncio.Event = asyncio.Event()
        self._why = ""
        self._tasks: list[asyncio.Task[None]] = []
        self.runs = 0

    def request(self, why: str) -> None:
        """Ask for a reload (signal handlers call this; it only sets a flag)."""
        self._why = why
        self._wanted.set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        # always ours: SIGHUP's default action would kill the server
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.request, "SIGHUP")
        self._tasks.append(loop.create_task(self._run(), name="config-reload"))
        if self.watch:
            self._tasks.append(loop.create_task(self._poll(), name="config-watch"))

    async def _poll(self) -> None:
        assert self.path is not None  # started only when `watch` is set, which needs a path
        watch = FileWatch(self.path)
        while True:
            await asyncio.sleep(self.interval)
            if watch.changed():
                self.request("config file changed")

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            self.runs += 1
            if self.path is None:
                log.info("%s: no config file to re-read (start with --config FILE)", self._why)
                continue
            try:
                await self.reload(self._why)
            except Exception:  # the callback reports its own failures; this is a bug guard
                log.exception("reload failed unexpectedly; keeping the running config")

    async def stop(self) -> None:
        """Stop reloading. The SIGHUP handler stays (a no-op now): its default action
        would kill a server that is draining."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
