"""Finding the primary through etcd: `etcd://HOST:PORT/CLUSTER` names a cluster run by
`kevo-repl ha`, whose primary holds the key /kevo-repl/CLUSTER/leader (kevo_repl.ha)."""

from __future__ import annotations

import asyncio
import json
import re

import aetcd

from kevo_repl.errors import KevoReplError

SCHEME = "etcd://"
_TARGET = re.compile(r"etcd://([^/:]+):(\d{1,5})/([A-Za-z0-9._-]{1,128})")


def leader_key(cluster: str) -> bytes:
    return f"/kevo-repl/{cluster}/leader".encode()


def parse_target(target: str) -> tuple[str, int, str] | None:
    """(etcd host, port, cluster) of an etcd:// target; None for a plain HOST:PORT."""
    if not target.startswith(SCHEME):
        return None
    m = _TARGET.fullmatch(target)
    if m is None:
        raise KevoReplError(f"{target!r} is not etcd://HOST:PORT/CLUSTER")
    return m[1], int(m[2]), m[3]


async def discover_async(target: str, timeout: float = 5.0) -> tuple[str, int]:
    """The current primary's HOST:PORT and epoch, waiting up to `timeout` for one."""
    parsed = parse_target(target)
    if parsed is None:
        return target, 0
    host, port, cluster = parsed
    client = aetcd.Client(host=host, port=port, timeout=max(1, int(timeout)))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            try:
                got = await client.get(leader_key(cluster))
            except aetcd.ClientError as exc:
                got, problem = None, f"etcd {host}:{port} failed: {exc}"
            else:
                problem = f"cluster {cluster!r} has no primary now (an election may be running)"
            if got is not None:
                leader = json.loads(got.value)
                return str(leader["address"]), int(leader["epoch"])
            if loop.time() >= deadline:
                raise KevoReplError(problem)
            await asyncio.sleep(0.1)
    finally:
        await client.close()


def discover(target: str, timeout: float = 5.0) -> tuple[str, int]:
    """`discover_async` for code that runs no event loop (the CLI, Client.discover)."""
    return asyncio.run(discover_async(target, timeout))
