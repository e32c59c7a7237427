"""`kevo-repl bench` runs end to end with tiny parameters: the output, not the speed."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import cli
from kevo_repl_tools import bench_redis
from kevo_repl_tools.bench import (
    BenchOptions,
    _median_of,
    _percentile,
    _with_redis,
    batch_lags_ms,
    format_table,
)
from kevo_repl_tools.bench_plot import plot
from kevo_repl_tools.bench_redis import parse_benchmark_csv

from kevo_repl.errors import KevoReplError

pytestmark = pytest.mark.crash  # starts real node processes


def bench(*args: str) -> dict[str, Any]:
    res = cli("bench", *args, "--json", timeout=240.0)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stdout
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return result


def positive(result: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = result[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert value > 0 and math.isfinite(value), (key, value)


def test_catchup(tmp_path: Path) -> None:
    r = bench("catchup", "--count", "2000", "--dir", str(tmp_path))
    assert r["scenario"] == "catchup"
    assert r["applier"] == "lmdb" and r["codec"] == "none"
    assert r["count"] == 2000
    assert r["applied_entries"] == 2000
    positive(r, "seconds", "entries_per_s", "raw_entries_per_s", "ratio",
             "applier_entries_per_s", "applier_ratio", "applier_vs_raw",
             "start_to_listening_s", "start_to_first_apply_s",
             "replica_rss_mb", "primary_rss_mb")
    assert r["entries_per_s"] == pytest.approx(2000 / r["seconds"], rel=1e-3)
    # ratios are rounded to 4 decimals: a tiny one (a loaded machine) is off by up to 5e-5
    assert r["ratio"] == pytest.approx(r["entries_per_s"] / r["raw_entries_per_s"],
                                       rel=1e-2, abs=5e-5)
    assert r["applier_ratio"] == pytest.approx(
        r["entries_per_s"] / r["applier_entries_per_s"], rel=1e-2, abs=5e-5)
    # the first apply comes after the replica listens and before it has caught up
    assert r["start_to_listening_s"] <= r["start_to_first_apply_s"] <= r["seconds"]


def test_catchup_vs_redis(tmp_path: Path) -> None:
    r = bench("catchup", "--count", "2000", "--vs-redis", "--dir", str(tmp_path))
    if shutil.which("redis-server") is None:
        assert r["redis"].startswith("skipped: redis-server not on PATH")
        assert not any(k.startswith("redis_") for k in r)
        return
    for persistence in ("none", "aof_always"):
        positive(r, f"redis_{persistence}_entries_per_s", f"vs_redis_{persistence}")
        assert r[f"vs_redis_{persistence}"] == pytest.approx(
            r["entries_per_s"] / r[f"redis_{persistence}_entries_per_s"], rel=1e-2)


def test_write_vs_redis_and_embedded(tmp_path: Path) -> None:
    r = bench("write", "--seconds", "0.3", "--writers", "4", "--batches", "1", "--no-stalled",
              "--vs-redis", "--redis-requests", "2000", "--dir", str(tmp_path))
    apis = {c["api"] for c in r["cells"]}
    assert apis == {"unary", "stream", "embedded"}
    positive(r, "writes_per_s_4_writers_single_embedded")
    if shutil.which("redis-server") is None or shutil.which("redis-benchmark") is None:
        assert r["redis"].startswith("skipped:")
        return
    for persistence in ("none", "aof_always"):
        assert r[f"redis_{persistence}_clients"] == 4
        positive(r, f"redis_{persistence}_writes_per_s",
                 f"vs_redis_{persistence}_4_writers_single_embedded")


def test_redis_benchmark_csv() -> None:
    out = '"test","rps","avg_latency_ms"\n"SET","81234.50","0.700"\n'
    assert parse_benchmark_csv(out) == 81234.5
    with pytest.raises(KevoReplError):
        parse_benchmark_csv('"GET","1.0"\n')


def test_catchup_sqlite_against_bare_sqlite3(tmp_path: Path) -> None:
    r = bench("catchup", "--applier", "sqlite", "--count", "2000", "--dir", str(tmp_path))
    assert r["applier"] == "sqlite" and r["applied_entries"] == 2000
    positive(r, "seconds", "entries_per_s", "raw_seconds", "raw_entries_per_s", "ratio")
    # our applier's own rate beside the bare sqlite3 baseline
    positive(r, "applier_entries_per_s", "applier_vs_raw")


def test_lag(tmp_path: Path) -> None:
    r = bench("lag", "--seconds", "2", "--rate", "2000", "--dir", str(tmp_path))
    assert r["scenario"] == "lag"
    positive(r, "entries", "achieved_rate", "primary_batches", "replica_batches",
             "replica_rss_mb", "primary_rss_mb")
    assert r["entries"] % r["write_batch"] == 0
    for key in ("lag_p50_ms", "lag_p99_ms", "lag_max_ms"):
        assert r[key] >= 0 and math.isfinite(r[key])
    assert r["lag_p50_ms"] <= r["lag_p99_ms"] <= r["lag_max_ms"]


def test_write(tmp_path: Path) -> None:
    r = bench("write", "--seconds", "0.3", "--writers", "1,4", "--batches", "1,50",
              "--dir", str(tmp_path))
    assert r["scenario"] == "write"
    cells = r["cells"]
    got = {(c["api"], c["writers"], c["batch"], c["stalled_replica"]) for c in cells}
    want = {(a, w, b, s) for a in ("unary", "stream") for w in (1, 4) for b in (1, 50)
            for s in (False, True)}
    want |= {("embedded", w, b, False) for w in (1, 4) for b in (1, 50)}
    assert got == want
    for c in cells:
        positive(c, "writes", "writes_per_s", "entries_per_s")
        assert c["entries_per_s"] == pytest.approx(c["writes_per_s"] * c["batch"], rel=1e-3)
    positive(r, "replica_rss_mb", "primary_rss_mb", "writes_per_s_4_writers_single")


def test_write_stream_from_several_client_processes(tmp_path: Path) -> None:
    r = bench("write", "--seconds", "0.3", "--writers", "5", "--batches", "1", "--no-stalled",
              "--no-embedded", "--client-processes", "2", "--dir", str(tmp_path))
    [stream] = [c for c in r["cells"] if c["api"] == "stream"]
    assert stream["client_processes"] == 2 and stream["writers"] == 5
    positive(stream, "writes", "writes_per_s")


def test_unknown_applier_is_a_clear_error(tmp_path: Path) -> None:
    res = cli("bench", "catchup", "--count", "10", "--applier", "nope", "--dir", str(tmp_path))
    assert res.returncode == 2
    assert "nope" in res.stderr and "lmdb" in res.stderr


def test_lag_join_and_percentiles() -> None:
    primary = [(10, 1_000_000), (20, 2_000_000), (30, 3_000_000)]
    replica = [(15, 2_500_000), (30, 4_000_000)]  # 10 is durable at 2.5 ms, 20 and 30 at 4 ms
    assert batch_lags_ms(primary, replica) == [1.5, 2.0, 1.0]
    assert _percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert _percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert _percentile([], 99) == 0.0


def test_median_and_table() -> None:
    runs = [{"scenario": "x", "count": 5, "ratio": r, "seconds": s}
            for r, s in ((0.5, 3.0), (0.7, 1.0), (0.6, 2.0))]
    m = _median_of(runs)
    assert m["ratio"] == 0.6 and m["seconds"] == 2.0 and m["count"] == 5
    assert m["runs"] == runs
    table = format_table(m)
    assert "ratio" in table and "0.6" in table


def test_redis_columns_skipped_with_a_note_without_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_redis.shutil, "which", lambda _name: None)
    opts = BenchOptions(vs_redis=True)
    for scenario, absent in (("catchup", "redis-server"),
                             ("write", "redis-server and redis-benchmark")):
        r = _with_redis(scenario, opts, {"entries_per_s": 1.0, "writes_per_s_64_writers_single": 1})
        assert r["redis"] == f"skipped: {absent} not on PATH (install Redis to compare)"
        assert not any(k.startswith(("redis_", "vs_redis")) for k in r)


def test_plot_draws_every_scenario(tmp_path: Path) -> None:
    catchup = {"scenario": "catchup", "count": 10, "applier": "lmdb", "entries_per_s": 5.0,
               "applier_entries_per_s": 6.0, "raw_entries_per_s": 7.0,
               "redis_aof_always_entries_per_s": 4.0}
    lag = {"scenario": "lag", "rate": 20_000, "write_batch": 100, "lag_p50_ms": 1.0,
           "lag_p99_ms": 3.0, "lag_max_ms": 4.0}
    write = {"scenario": "write", "applier": "lmdb", "redis_none_writes_per_s": 9.0,
             "cells": [{"api": a, "writers": 64, "batch": 1, "stalled_replica": False,
                        "writes_per_s": 3.0} for a in ("unary", "stream", "embedded")]}
    out = tmp_path / "bench.png"
    plot([catchup, lag, write], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000  # three drawn panels, not an empty canvas
