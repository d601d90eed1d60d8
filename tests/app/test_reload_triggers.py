"""What triggers a reload: a ConfigMap-style symlink swap, an in-place edit, SIGHUP; and
what does not: an idle poll, a `touch`, a swap to identical bytes. Reloads never overlap."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from clusterdns.app.reload import FileWatch, Reloader
from clusterdns.settings import config as C


def configmap_dir(root: Path, text: str, version: int) -> Path:
    """Lay out a ConfigMap volume as the kubelet does and return the file users open."""
    data = root / f"..2026_11_21_10_00_0{version}.000"
    data.mkdir()
    (data / "clusterdns.yaml").write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, root / "..data")  # the atomic swap
    link = root / "clusterdns.yaml"
    if not link.is_symlink():
        link.symlink_to("..data/clusterdns.yaml")
    return link


def test_symlink_swap_is_seen_once(tmp_path: Path) -> None:
    path = configmap_dir(tmp_path, "ttl: 5\n", 1)
    watch = FileWatch(path)
    assert not watch.changed()
    configmap_dir(tmp_path, "ttl: 30\n", 2)
    assert watch.changed()
    assert not watch.changed()
    assert C.load(path).ttl == 30


def test_swap_to_identical_bytes_and_touch_do_not_count(tmp_path: Path) -> None:
    path = configmap_dir(tmp_path, "ttl: 5\n", 1)
    watch = FileWatch(path)
    configmap_dir(tmp_path, "ttl: 5\n", 2)
    assert not watch.changed()
    os.utime(path, (1, 1))
    assert not watch.changed()


def test_in_place_edit_counts(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("ttl: 5\n")
    watch = FileWatch(path)
    path.write_text("ttl: 50\n")
    os.utime(path, ns=(1, 10**9 * 12345))  # mtime granularity must not hide the edit
    assert watch.changed()


def test_missing_file_mid_swap_is_not_a_change(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("ttl: 5\n")
    watch = FileWatch(path)
    path.unlink()
    assert not watch.changed()
    path.write_text("ttl: 6\n")
    assert watch.changed()


async def test_reloader_runs_on_sighup_and_on_change_one_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("ttl: 5\n")
    running, seen, overlaps = 0, [], 0

    async def reload(why: str) -> None:
        nonlocal running, overlaps
        running += 1
        overlaps += running > 1
        seen.append(why)
        await asyncio.sleep(0.05)
        running -= 1

    r = Reloader(reload, path, watch=True, interval=0.02)
    r.start()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGHUP)  # during the first run: queued, not concurrent
        path.write_text("ttl: 7\n")
        os.utime(path, ns=(1, 10**9 * 777))
        for _ in range(200):
            if "config file changed" in seen:
                break
            await asyncio.sleep(0.01)
    finally:
        await r.stop()
    assert seen[0] == "SIGHUP" and "config file changed" in seen
    assert overlaps == 0


async def test_reloader_survives_a_failing_callback(tmp_path: Path) -> None:
    calls = 0

    async def reload(why: str) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    r = Reloader(reload, tmp_path / "none.yaml")
    r.start()
    try:
        for _ in range(2):
            r.request("test")
            await asyncio.sleep(0.02)
    finally:
        await r.stop()
    assert calls == 2


def test_split_reload_keeps_sockets_and_source() -> None:
    old = C.ServeConfig(listen=["127.0.0.1:53"], ttl=5)
    new = C.ServeConfig(listen=["127.0.0.1:54"], ttl=30, upstreams=["10.0.0.1"])
    assert C.split_reload(old, new) == (["ttl", "upstreams"], ["listen"])
    kept = C.with_restart_keys(old, new)
    assert kept.listen == ["127.0.0.1:53"] and kept.ttl == 30
