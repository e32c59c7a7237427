"""The memory guard ([node] max_rss_mb): the last line against gRPC's GOAWAY memory growth."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from kevo_repl_tools.launcher import NodeProcess
from test_metrics import scrape

from kevo_repl.config import Config
from kevo_repl.errors import ConfigError
from kevo_repl.node.memguard import EXIT_MEMORY_GUARD, TRIPS_FILE, MemoryGuard, rss_bytes


def test_guard_trips_over_its_bound_and_counts_across_restarts(tmp_path: Path) -> None:
    tripped: list[int] = []
    guard = MemoryGuard(1, tmp_path, on_trip=lambda: tripped.append(1))
    assert rss_bytes() > 2**20  # this process is over 1 MB, so the guard must trip
    assert guard.check() is True and tripped == [1]
    assert guard.trips == 1 and (tmp_path / TRIPS_FILE).read_text().strip() == "1"
    again = MemoryGuard(1, tmp_path, on_trip=lambda: tripped.append(2))
    assert again.trips == 1  # read back: a restarted node still reports the trip
    assert again.check() is True and again.trips == 2 and tripped == [1, 2]
    st = again.status()
    assert st["memory_guard_trips"] == 2 and st["max_rss_bytes"] == 2**20
    assert st["rss_bytes"] > 0


def test_guard_under_its_bound_or_off_does_nothing(tmp_path: Path) -> None:
    tripped: list[int] = []
    roomy = MemoryGuard(1024 * 1024, tmp_path, on_trip=lambda: tripped.append(1))
    assert roomy.check() is False
    off = MemoryGuard(0, tmp_path, on_trip=lambda: tripped.append(1))
    off.start()  # no thread for a guard that is off
    assert off.check() is False
    assert "memory-guard" not in {t.name for t in threading.enumerate()}
    assert tripped == [] and not (tmp_path / TRIPS_FILE).exists()


def test_negative_bound_is_refused() -> None:
    cfg = Config()
    cfg.node.max_rss_mb = -1
    with pytest.raises(ConfigError, match=r"\[node\] max_rss_mb"):
        cfg.validate()


@pytest.mark.parametrize("role", ["primary", "replica"])
def test_node_over_its_bound_exits_with_the_guard_code(tmp_path: Path, role: str) -> None:
    data = tmp_path / role
    conf = tmp_path / "node.toml"
    conf.write_text("[node]\nmax_rss_mb = 1\n")  # any Python process is over 1 MB
    log = tmp_path / "node.log"
    cmd = [sys.executable, "-m", "kevo_repl", "--log-file", str(log), role,
           "--data-dir", str(data), "--listen", "127.0.0.1:0", "--config", str(conf)]
    if role == "replica":
        cmd += ["--primary", "127.0.0.1:9", "--replica-id", "r1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == EXIT_MEMORY_GUARD, res.stderr[-2000:]
    lines = [ln for ln in log.read_text().splitlines() if "memory guard" in ln]
    assert len(lines) == 1 and "max_rss_mb = 1 MB" in lines[0] and "GOAWAY" in lines[0]
    assert (data / TRIPS_FILE).read_text().strip() == "1"

    # restarted without a bound, the node reports the trip and its RSS in status and metrics
    conf.write_text("[node]\nmax_rss_mb = 0\n")
    node = NodeProcess(role, data, config=conf, metrics="127.0.0.1:0",
                       primary="127.0.0.1:9" if role == "replica" else None,
                       replica_id="r1" if role == "replica" else None)
    try:
        node.start()
        st = node.status()
        assert st["memory_guard_trips"] == 1 and st["max_rss_bytes"] == 0
        assert 2**20 < st["rss_bytes"] < 2**31
        m = scrape(node.metrics_address)
        assert m[("kevo_repl_node_memory_guard_trips_total", ())] == 1
        assert m[("kevo_repl_node_max_rss_bytes", ())] == 0
        assert m[("kevo_repl_node_rss_bytes", ())] > 2**20
    finally:
        node.kill()
