"""`kevo-repl bench`: catch-up, live lag and write throughput of real node processes.

Every scenario starts its own primary (and replica) as child processes on loopback, in a
fresh work directory, and always stops them again. Each returns one flat-ish dict; the CLI
prints it as a table or, with ``--json``, as one JSON object. This module (with the CLI) is
the only library code allowed to print.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from kevo_repl.client.client import AsyncStreamWriter, Client
from kevo_repl.errors import KevoReplError
from kevo_repl.plugin.manager import build_registry
from kevo_repl.protocol.codec import Op
from kevo_repl.protocol.methods import NODE_WRITE
from kevo_repl.protocol.proto import node_pb2 as npb
from kevo_repl.protocol.transport import channel_options
from kevo_repl_tools import bench_redis
from kevo_repl_tools.bench_clients import stream_cell_processes
from kevo_repl_tools.bench_embedded import embedded_cells
from kevo_repl_tools.bench_probe import ENV_PROBE_FILE
from kevo_repl_tools.bench_raw import (
    applier_rate,
    bare_store_rate,
    has_bare_store,
    key_of,
    value_of,
)
from kevo_repl_tools.launcher import NodeProcess

log = logging.getLogger(__name__)

SCENARIOS = ("catchup", "lag", "write")
KEY_SIZE = 16
VALUE_SIZE = 100
_STATUS_POLL_S = 0.005


@dataclass
class BenchOptions:
    applier: str = "lmdb"
    codec: str = "none"
    count: int = 500_000
    rate: int = 20_000
    seconds: float = 10.0
    dir: str | None = None
    #: write scenario: concurrent writers and entries per write of each cell
    writers: Sequence[int] = (1, 8, 64)
    batches: Sequence[int] = (1, 1000)
    #: write scenario: also run every cell with one SIGSTOPped replica
    stalled: bool = True
    #: catch-up: raw baseline batch size (entries per synced batch)
    raw_batch: int = 1000
    #: catch-up: concurrent clients preloading the primary
    preload_clients: int = 4
    #: lag: entries per write (a write every batch/rate seconds)
    lag_batch: int = 100
    vs_redis: bool = False
    #: write scenario: also the embedded API (open_primary in the bench's own process)
    embedded: bool = True
    #: write scenario: client processes sharing the stream cell's writers (bench_clients.py)
    client_processes: int = 1
    #: write --vs-redis: requests redis-benchmark sends per persistence setting
    redis_requests: int = 200_000
    #: upper bound on any single wait (node start, catch-up, drain)
    timeout: float = 600.0
    log_level: str = "WARNING"
    extra_env: dict[str, str] = field(default_factory=dict)


# -- helpers ------------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MiB; 0.0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(q / 100.0 * len(sorted_values))))
    return sorted_values[rank - 1]


def _check_backends(opts: BenchOptions) -> None:
    registry = build_registry()
    registry.get("applier", opts.applier)  # raises a ConfigError listing what exists
    registry.get("compressor", opts.codec)


@contextmanager
def _workdir(opts: BenchOptions, scenario: str) -> Iterator[Path]:
    if opts.dir:
        root = Path(opts.dir) / scenario
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        yield root
        return
    root = Path(tempfile.mkdtemp(prefix=f"kevo-bench-{scenario}-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _config_file(root: Path, opts: BenchOptions) -> Path:
    path = root / "bench.toml"
    path.write_text(f'[compressor]\nname = "{opts.codec}"\n')
    return path


class _Cluster:
    """The node processes of one scenario; all are stopped (and resumed first, if stopped)."""

    def __init__(self, root: Path, opts: BenchOptions) -> None:
        self.root = root
        self.opts = opts
        self.config = _config_file(root, opts)
        self.nodes: list[NodeProcess] = []

    def _env(self, probe: Path | None) -> dict[str, str]:
        env = dict(self.opts.extra_env)
        if probe is not None:
            mods = [m for m in os.environ.get("KEVO_REPL_PLUGINS", "").split(",") if m]
            env["KEVO_REPL_PLUGINS"] = ",".join([*mods, "kevo_repl_tools.bench_probe"])
            env[ENV_PROBE_FILE] = str(probe)
        return env

    def primary(self, probe: Path | None = None) -> NodeProcess:
        node = NodeProcess(
            "primary", self.root / "primary", applier=self.opts.applier, config=self.config,
            env=self._env(probe), log_level=self.opts.log_level,
        )
        self.nodes.append(node)
        node.start(timeout=min(60.0, self.opts.timeout))
        return node

    def replica(
        self, primary: NodeProcess, probe: Path | None = None, replica_id: str = "bench"
    ) -> NodeProcess:
        node = NodeProcess(
            "replica", self.root / f"replica-{replica_id}", primary=primary.address,
            replica_id=replica_id, applier=self.opts.applier, config=self.config,
            env=self._env(probe), log_level=self.opts.log_level,
        )
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for node in reversed(self.nodes):
            if node.running:
                try:
                    os.kill(node.pid, signal.SIGCONT)
                except OSError:
                    pass
            node.terminate(timeout=15.0)


@contextmanager
def _cluster(root: Path, opts: BenchOptions) -> Iterator[_Cluster]:
    c = _Cluster(root, opts)
    try:
        yield c
    finally:
        c.close()


def _wait_status(
    node: NodeProcess, done: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> dict[str, Any]:
    """Poll a node's status every few milliseconds until `done` holds (bounded)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    with Client(node.address, timeout=10.0) as c:
        while True:
            try:
                st = c.status()
                if st.get("last_error") and st.get("state") == "ERROR" and "stopped" in str(
                    st.get("last_error")
                ):
                    raise KevoReplError(f"{what}: node failed: {st['last_error']}")
                if done(st):
                    return st
                last_error = None
            except grpc.RpcError as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise KevoReplError(
                    f"timed out after {timeout:.0f}s waiting for {what} "
                    f"(last error: {last_error})\n{node.log_tail()}"
                )
            if not node.running:
                raise KevoReplError(f"{what}: the node exited\n{node.log_tail()}")
            time.sleep(_STATUS_POLL_S)


def _write_request(first: int, n: int) -> bytes:
    req = npb.WriteRequest(
        mutations=[
            npb.Mutation(op=npb.Op.Value("PUT"), key=key_of(i), value=value_of(i))
            for i in range(first, first + n)
        ]
    )
    return bytes(req.SerializeToString())


def _preload(address: str, count: int, clients: int, batch: int = 1000) -> None:
    """Write entries 0..count-1 in `batch`-entry writes from several client threads."""
    starts = list(range(0, count, batch))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        channel = grpc.insecure_channel(address, options=channel_options())
        write = channel.unary_unary(
            NODE_WRITE, request_serializer=_identity, response_deserializer=_identity
        )
        try:
            while True:
                with lock:
                    if not starts or errors:
                        return
                    first = starts.pop(0)
                write(_write_request(first, min(batch, count - first)), timeout=120.0)
        except BaseException as exc:
            with lock:
                errors.append(exc)
        finally:
            channel.close()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise KevoReplError(f"preloading the primary failed: {errors[0]}")


def _identity(data: bytes) -> bytes:
    return data


# -- catch-up -----------------------------------------------------------------------------------


def run_catchup(opts: BenchOptions) -> dict[str, Any]:
    _check_backends(opts)
    if opts.count < 1:
        raise KevoReplError("--count must be at least 1")
    with _workdir(opts, "catchup") as root, _cluster(root, opts) as cluster:
        primary = cluster.primary()
        started = time.perf_counter()
        _preload(primary.address, opts.count, opts.preload_clients)
        preload_s = time.perf_counter() - started
        head = primary.status()["head_sequence"]
        if head != opts.count:
            raise KevoReplError(f"the primary holds {head} entries, not {opts.count}")
        # the probe logs every durable batch: its first line is the first apply
        probe = root / "replica.probe"
        replica = cluster.replica(primary, probe=probe)
        spawned_ns = time.time_ns()
        started = time.perf_counter()
        replica.start(timeout=min(60.0, opts.timeout))
        listening = time.perf_counter()
        _wait_status(
            replica, lambda st: st["last_applied"] >= head, opts.timeout, "the replica to catch up"
        )
        seconds = time.perf_counter() - started
        replica_rss = peak_rss_mb(replica.pid)
        primary_rss = peak_rss_mb(primary.pid)
        st = replica.status()
        cluster.close()
        applied = _read_probe(probe)
        first_apply_s = (applied[0][1] - spawned_ns) / 1e9 if applied else 0.0
        own = applier_rate(opts.applier, opts.count, opts.raw_batch, root / "applier")
        raw = (
            bare_store_rate(opts.applier, opts.count, opts.raw_batch, root / "raw")
            if has_bare_store(opts.applier)
            else None
        )
    eps = opts.count / seconds
    own_eps = own["applier_entries_per_s"]
    result: dict[str, Any] = {
        "scenario": "catchup",
        "applier": opts.applier,
        "codec": opts.codec,
        "count": opts.count,
        "seconds": round(seconds, 4),
        "start_to_listening_s": round(listening - started, 4),
        "start_to_first_apply_s": round(first_apply_s, 4),
        "entries_per_s": round(eps, 1),
    }
    if raw is not None:
        # the bare store's own API in synced batches: the physical limit
        result["raw_seconds"] = round(raw["raw_seconds"], 4)
        result["raw_entries_per_s"] = round(raw["raw_entries_per_s"], 1)
        result["ratio"] = round(eps / raw["raw_entries_per_s"], 4)
        result["applier_vs_raw"] = round(own_eps / raw["raw_entries_per_s"], 4)
    result.update({
        "applier_seconds": round(own["applier_seconds"], 4),
        "applier_entries_per_s": round(own_eps, 1),
        "applier_ratio": round(eps / own_eps, 4) if own_eps else 0.0,
        "applied_entries": st["applied_entries"],
        "preload_s": round(preload_s, 3),
        "replica_rss_mb": replica_rss,
        "primary_rss_mb": primary_rss,
    })
    return result


# -- lag ----------------------------------------------------------------------------------------


def _read_probe(path: Path) -> list[tuple[int, int]]:
    """(last_seq, time_ns) of every line in a probe file, in file order."""
    out: list[tuple[int, int]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((int(parts[1]), int(parts[2])))
    return out


def batch_lags_ms(
    primary: Sequence[tuple[int, int]], replica: Sequence[tuple[int, int]]
) -> list[float]:
    """For each primary batch, the time until the replica first held its last sequence."""
    rep_seqs = [s for s, _ in replica]
    lags: list[float] = []
    for last, t_primary in primary:
        i = bisect.bisect_left(rep_seqs, last)
        if i == len(rep_seqs):
            continue
        lags.append(max(0.0, (replica[i][1] - t_primary) / 1e6))
    return lags


def _paced_writes(address: str, rate: int, seconds: float, batch: int) -> tuple[int, float]:
    """Write `batch`-entry writes so that `rate` entries/s go in for `seconds`; returns the
    entries written and the seconds it took. A late write is sent at once (no catch-up burst
    beyond one interval)."""
    interval = batch / rate
    channel = grpc.insecure_channel(address, options=channel_options())
    write = channel.unary_unary(
        NODE_WRITE, request_serializer=_identity, response_deserializer=_identity
    )
    written = 0
    try:
        started = time.perf_counter()
        due = started
        end = started + seconds
        i = 0
        while due < end:
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            write(_write_request(i, batch), timeout=30.0)
            i += batch
            written += batch
            due = max(due + interval, time.perf_counter() - interval)
        return written, time.perf_counter() - started
    finally:
        channel.close()


def run_lag(opts: BenchOptions) -> dict[str, Any]:
    _check_backends(opts)
    if opts.rate < 1 or opts.seconds <= 0:
        raise KevoReplError("--rate and --seconds must be positive")
    batch = max(1, min(opts.lag_batch, opts.rate))
    with _workdir(opts, "lag") as root, _cluster(root, opts) as cluster:
        p_probe, r_probe = root / "primary.probe", root / "replica.probe"
        primary = cluster.primary(probe=p_probe)
        replica = cluster.replica(primary, probe=r_probe)
        replica.start(timeout=min(60.0, opts.timeout))
        _wait_status(
            replica, lambda st: st["state"] in ("WAITING_FOR_DATA", "STREAMING_ENTRIES"),
            min(60.0, opts.timeout), "the replica to connect",
        )
        written, spent = _paced_writes(primary.address, opts.rate, opts.seconds, batch)
        head = primary.status()["head_sequence"]
        _wait_status(
            replica, lambda st: st["last_applied"] >= head, opts.timeout, "the replica to drain"
        )
        replica_rss = peak_rss_mb(replica.pid)
        primary_rss = peak_rss_mb(primary.pid)
        cluster.close()  # flushes and closes the probe files
        p_lines = [x for x in _read_probe(p_probe)]
        r_lines = _read_probe(r_probe)
    lags = sorted(batch_lags_ms(p_lines, r_lines))
    if not lags:
        raise KevoReplError("no batch was seen on both the primary and the replica")
    return {
        "scenario": "lag",
        "applier": opts.applier,
        "codec": opts.codec,
        "rate": opts.rate,
        "seconds": opts.seconds,
        "write_batch": batch,
        "entries": written,
        "achieved_rate": round(written / spent, 1),
        "primary_batches": len(p_lines),
        "replica_batches": len(r_lines),
        "lag_p50_ms": round(_percentile(lags, 50), 3),
        "lag_p99_ms": round(_percentile(lags, 99), 3),
        "lag_max_ms": round(lags[-1], 3),
        "replica_rss_mb": replica_rss,
        "primary_rss_mb": primary_rss,
    }


# -- write --------------------------------------------------------------------------------------


async def _stream_cell(address: str, writers: int, batch: int, seconds: float) -> dict[str, Any]:
    """The same load through one WriteStream shared by all writers (AsyncStreamWriter)."""
    writes = 0
    async with AsyncStreamWriter(address) as sw:
        muts: list[list[tuple[int, bytes, bytes]]] = [
            [(Op.PUT, f"s{w:07d}-{i:07d}".encode()[-16:], b"v" * 100) for i in range(batch)]
            for w in range(writers)
        ]
        await sw.write(muts[0])  # warm the stream up
        end = time.perf_counter() + seconds

        async def writer(m: list[tuple[int, bytes, bytes]]) -> None:
            nonlocal writes
            while time.perf_counter() < end:
                await sw.write(m)
                writes += 1

        started = time.perf_counter()
        await asyncio.gather(*(writer(m) for m in muts))
        spent = time.perf_counter() - started
    return _cell("stream", writers, batch, writes, spent)


def _cell(api: str, writers: int, batch: int, writes: int, spent: float) -> dict[str, Any]:
    return {
        "api": api,
        "writers": writers,
        "batch": batch,
        "writes": writes,
        "writes_per_s": round(writes / spent, 1),
        "entries_per_s": round(writes * batch / spent, 1),
    }


async def _write_cell(address: str, writers: int, batch: int, seconds: float) -> dict[str, Any]:
    """`writers` concurrent writers, each sending `batch`-entry writes back to back."""
    # every writer owns its keys; its request is built once and re-sent as bytes
    requests = [_write_request(w * 1_000_000, batch) for w in range(writers)]
    writes = 0
    async with grpc.aio.insecure_channel(address, options=channel_options()) as channel:
        write = channel.unary_unary(
            NODE_WRITE, request_serializer=_identity, response_deserializer=_identity
        )
        await write(requests[0], timeout=30.0)  # warm the connection up
        end = time.perf_counter() + seconds

        async def writer(req: bytes) -> None:
            nonlocal writes
            while time.perf_counter() < end:
                await write(req, timeout=30.0)
                writes += 1

        started = time.perf_counter()
        await asyncio.gather(*(writer(r) for r in requests))
        spent = time.perf_counter() - started
    return _cell("unary", writers, batch, writes, spent)


def run_write(opts: BenchOptions) -> dict[str, Any]:
    _check_backends(opts)
    if opts.seconds <= 0 or not opts.writers or not opts.batches:
        raise KevoReplError("--seconds must be positive; --writers and --batches not empty")
    cells: list[dict[str, Any]] = []
    replica_rss = 0.0
    with _workdir(opts, "write") as root, _cluster(root, opts) as cluster:
        primary = cluster.primary()
        modes = [False, True] if opts.stalled else [False]
        for stalled in modes:
            replica: NodeProcess | None = None
            if stalled:
                replica = cluster.replica(primary)
                replica.start(timeout=min(60.0, opts.timeout))
                head = primary.status()["head_sequence"]
                # let it catch up first, so that it is stalled mid-stream, not mid-catch-up
                _wait_status(
                    replica, lambda st, h=head: st["last_applied"] >= h,  # type: ignore[misc]  # mypy cannot type a default-bound lambda
                    opts.timeout, "the replica to catch up before it is stalled",
                )
                os.kill(replica.pid, signal.SIGSTOP)
            try:
                for writers in opts.writers:
                    for batch in opts.batches:
                        for run_cell in (_write_cell, _stream_cell):
                            if run_cell is _stream_cell and opts.client_processes > 1:
                                cell = stream_cell_processes(primary.address, writers, batch,
                                                             opts.seconds, opts.client_processes)
                            else:
                                cell = asyncio.run(
                                    run_cell(primary.address, writers, batch, opts.seconds)
                                )
                            cell["stalled_replica"] = stalled
                            cells.append(cell)
            finally:
                if replica is not None:
                    os.kill(replica.pid, signal.SIGCONT)
                    replica_rss = peak_rss_mb(replica.pid)
        primary_rss = peak_rss_mb(primary.pid)
        if opts.embedded:
            cells += embedded_cells(root, opts.applier, opts.writers, opts.batches, opts.seconds)
    result: dict[str, Any] = {
        "scenario": "write",
        "applier": opts.applier,
        "codec": opts.codec,
        "seconds_per_cell": opts.seconds,
        "cells": cells,
        "replica_rss_mb": replica_rss,
        "primary_rss_mb": primary_rss,
    }
    for cell in cells:
        if cell["writers"] == max(opts.writers) and cell["batch"] == 1 and not cell[
            "stalled_replica"
        ]:
            suffix = "" if cell["api"] == "unary" else f"_{cell['api']}"
            key = f"writes_per_s_{cell['writers']}_writers_single{suffix}"
            result[key] = cell["writes_per_s"]
    return result


# -- driver -------------------------------------------------------------------------------------

_RUNNERS: dict[str, Callable[[BenchOptions], dict[str, Any]]] = {
    "catchup": run_catchup,
    "lag": run_lag,
    "write": run_write,
}


def run(scenario: str, opts: BenchOptions, runs: int = 1) -> dict[str, Any]:
    """Run a scenario `runs` times; with more than one run, numbers are the medians and the
    single runs are under "runs"."""
    if scenario not in _RUNNERS:
        raise KevoReplError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    # each run measures its Redis anchors right after our own numbers, so that every ratio
    # is taken within one run on the same (possibly noisy) machine
    results = [_with_redis(scenario, opts, _RUNNERS[scenario](opts)) for _ in range(max(1, runs))]
    return results[0] if len(results) == 1 else _median_of(results)


def _with_redis(scenario: str, opts: BenchOptions, result: dict[str, Any]) -> dict[str, Any]:
    if not opts.vs_redis:
        return result
    if scenario == "lag":
        result["redis"] = "skipped: the lag scenario has no Redis anchor"
        return result
    tools = ("redis-server",) if scenario == "catchup" else ("redis-server", "redis-benchmark")
    why = bench_redis.missing(tools)
    if why is not None:
        result["redis"] = why
        return result
    with _workdir(opts, "redis") as root:
        for persistence in bench_redis.PERSISTENCE:
            prefix = f"redis_{persistence}"
            if scenario == "catchup":
                r = bench_redis.catchup(root, opts.count, persistence, opts.timeout)
                result[f"{prefix}_entries_per_s"] = r["entries_per_s"]
                result[f"{prefix}_replica_rss_mb"] = r["replica_rss_mb"]
                result[f"vs_{prefix}"] = round(result["entries_per_s"] / r["entries_per_s"], 4)
            else:
                r = bench_redis.write(root, persistence, max(opts.writers), VALUE_SIZE,
                                      opts.redis_requests, opts.timeout)
                result[f"{prefix}_clients"] = r["clients"]
                result[f"{prefix}_writes_per_s"] = r["writes_per_s"]
                for key in [k for k in result if k.startswith("writes_per_s_")]:
                    ratio = result[key] / r["writes_per_s"]
                    result[f"vs_{prefix}_{key.removeprefix('writes_per_s_')}"] = round(ratio, 4)
    return result


def _median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in results[0].items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            if key == "cells":
                out[key] = [
                    _median_of([r["cells"][i] for r in results])
                    for i in range(len(results[0]["cells"]))
                ]
            else:
                out[key] = value
            continue
        if key in ("count", "rate", "writers", "batch") or key.endswith("_clients"):
            out[key] = value
            continue
        out[key] = round(statistics.median(r[key] for r in results), 4)
    if "cells" not in results[0]:
        out["runs"] = results
    else:
        out["runs"] = len(results)
    return out


# -- output -------------------------------------------------------------------------------------


def format_table(result: dict[str, Any]) -> str:
    lines: list[str] = []
    scalars = [(k, v) for k, v in result.items() if k not in ("cells", "runs")]
    width = max(len(k) for k, _ in scalars)
    lines += [f"{k:<{width}}  {v}" for k, v in scalars]
    cells = result.get("cells")
    if cells:
        lines.append("")
        lines.append(
            f"{'api':>8} {'writers':>7} {'batch':>6} {'stalled':>8} {'writes/s':>12} "
            f"{'entries/s':>12}"
        )
        for c in cells:
            lines.append(
                f"{c.get('api', 'unary'):>8} {c['writers']:>7} {c['batch']:>6} "
                f"{'yes' if c['stalled_replica'] else 'no':>8} "
                f"{c['writes_per_s']:>12,.0f} {c['entries_per_s']:>12,.0f}"
            )
    return "\n".join(lines)

