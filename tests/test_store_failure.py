"""A write durable in the WAL is committed, whatever the primary's store does next; a store
that cannot apply stops new writes with the real cause and resumes by itself (hardening item
4). A real primary (in-process gRPC on 127.0.0.1:0, real LMDB store and WAL); the store's
failure is injected into its apply."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import grpc
import pytest

from kevo_repl.client.client import Client
from kevo_repl.config import Config
from kevo_repl.node.server import Node
from kevo_repl.primary import primary as primary_mod
from kevo_repl.primary import store_failure


def _config(tmp_path: Path) -> Config:
    cfg = Config()
    cfg.node.role = "primary"
    cfg.node.data_dir = str(tmp_path / "primary")
    cfg.node.listen = "127.0.0.1:0"
    return cfg


def _break_store(node: Node, exc: OSError, times: int) -> list[int]:
    """The store's apply raises `exc` for the next `times` calls; returns the count left."""
    assert node.primary is not None
    store = node.primary.store
    real = store.apply
    left = [times]

    def apply(*args: object, **kwargs: object) -> object:
        if left[0] > 0:
            left[0] -= 1
            raise exc
        return real(*args, **kwargs)  # type: ignore[arg-type]

    store.apply = apply  # type: ignore[method-assignment]
    return left


@pytest.mark.parametrize("hidden", [False, True])
async def test_durable_write_is_committed_and_writes_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hidden: bool
) -> None:
    monkeypatch.setattr(primary_mod, "STORE_RETRY_S", 0.2)
    if hidden:  # the store says EIO; the free-space check finds the real cause
        monkeypatch.setattr(store_failure, "free_bytes", lambda path: 4096)
        exc = OSError(errno.EIO, "Input/output error")
    else:
        exc = OSError(errno.ENOSPC, "No space left on device")
    cfg = _config(tmp_path)
    node = Node(cfg)
    await node.start()
    try:
        client = await asyncio.to_thread(Client, node.address)
        assert await asyncio.to_thread(client.put, b"a", b"1") == 1
        left = _break_store(node, exc, times=15)
        # the WAL has it: committed with its sequence, although the store failed
        assert await asyncio.to_thread(client.put, b"b", b"2") == 2
        st = node.service.status()
        assert st["state"] == "ERROR" and "No space left on device" in st["last_error"]
        with pytest.raises(grpc.RpcError) as info:
            await asyncio.to_thread(client.put, b"c", b"3")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "No space left on device" in info.value.details()
        assert "nothing of this write was applied" in info.value.details()
        # the store applies again once it can, and writes are taken again, without a restart
        async with asyncio.timeout(30):
            while node.service.status()["state"] != "SERVING":
                await asyncio.sleep(0.05)
        assert left[0] == 0
        assert await asyncio.to_thread(client.get, b"b") == b"2"
        assert await asyncio.to_thread(client.put, b"c", b"3") == 3
    finally:
        await node.stop()
    node = Node(cfg)  # and after a restart, each write is there once
    await node.start()
    try:
        assert node.primary is not None and node.primary.head == 3
        assert node.primary.store.position().applied_entries == 3
    finally:
        await node.stop()
