"""`bench write --client-processes N`: the stream cell's writers split over N client processes.

One Python process drives about 15k single-entry writes/s through `AsyncStreamWriter` on the
2-vCPU machine of bench/RESULTS.md, whatever the number of writers: measured with 1,024 writers
in one process against 4 processes. To measure the primary rather than the client, the writers
of a cell can be spread over several processes, each with its own connection and WriteStream.
Every process opens its stream first; all start writing together and each writes for the same
number of seconds, so the cell's rate is the sum of theirs.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import time
from typing import Any

from kevo_repl.client.client import AsyncStreamWriter
from kevo_repl.errors import KevoReplError
from kevo_repl.protocol.codec import Op

#: how long a client process may take to start and open its stream
_READY_TIMEOUT_S = 120.0


async def _write_for(
    address: str, first_writer: int, writers: int, batch: int, seconds: float,
    ready: Any, go: Any,
) -> tuple[int, float]:
    async with AsyncStreamWriter(address) as sw:
        muts: list[list[tuple[int, bytes, bytes]]] = [
            [(Op.PUT, f"c{w:07d}-{i:07d}".encode()[-16:], b"v" * 100) for i in range(batch)]
            for w in range(first_writer, first_writer + writers)
        ]
        await sw.write(muts[0])  # warm the stream up
        ready.put(first_writer)
        await asyncio.to_thread(go.wait, _READY_TIMEOUT_S)
        writes = 0
        end = time.perf_counter() + seconds

        async def writer(m: list[tuple[int, bytes, bytes]]) -> None:
            nonlocal writes
            while time.perf_counter() < end:
                await sw.write(m)
                writes += 1

        started = time.perf_counter()
        await asyncio.gather(*(writer(m) for m in muts))
        return writes, time.perf_counter() - started


def _client(
    address: str, first_writer: int, writers: int, batch: int, seconds: float,
    ready: Any, go: Any, results: Any,
) -> None:
    """A client process: report (writes, seconds spent) or the error that stopped it."""
    try:
        results.put(asyncio.run(
            _write_for(address, first_writer, writers, batch, seconds, ready, go)
        ))
    except Exception as exc:  # reported to the parent, which fails the cell
        results.put(f"{type(exc).__name__}: {exc}")


def stream_cell_processes(
    address: str, writers: int, batch: int, seconds: float, processes: int
) -> dict[str, Any]:
    """The stream cell with its `writers` spread over `processes` client processes."""
    processes = max(1, min(processes, writers))
    # spawn, not fork: this process has used gRPC already, and gRPC does not survive a fork
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    shares = [writers // processes + (1 if p < writers % processes else 0)
              for p in range(processes)]
    firsts = [sum(shares[:p]) for p in range(processes)]
    procs = [
        ctx.Process(target=_client, daemon=True,
                    args=(address, first, share, batch, seconds, ready, go, results))
        for first, share in zip(firsts, shares, strict=True)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            try:
                ready.get(timeout=_READY_TIMEOUT_S)
            except queue.Empty:
                raise KevoReplError("a bench client process did not start in time") from None
        go.set()
        outcomes = [results.get(timeout=seconds + _READY_TIMEOUT_S) for _ in procs]
    finally:
        for proc in procs:
            proc.join(10.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
    failed = [o for o in outcomes if isinstance(o, str)]
    if failed:
        raise KevoReplError(f"a bench client process failed: {failed[0]}")
    writes = sum(o[0] for o in outcomes)
    spent = max(o[1] for o in outcomes)
    return {
        "api": "stream",
        "writers": writers,
        "batch": batch,
        "writes": writes,
        "writes_per_s": round(writes / spent, 1),
        "entries_per_s": round(writes * batch / spent, 1),
        "client_processes": processes,
    }
