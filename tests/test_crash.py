"""SIGKILL of real node processes at varied moments; digests and apply counts afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    assert_applied_at_most_once,
    assert_same_digest,
    load,
    read_apply_log,
    wait_caught_up,
)
from kevo_repl_tools.launcher import wait_until

pytestmark = pytest.mark.crash

TOTAL = 20_000
#: the crash tests run on every shipped engine (conftest's APPLIERS, and sqlite)
ENGINES = ("lmdb", "leveldb", "sqlite")


def _start_load(target: str, count: int, *, start: int = 0, batch: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kevo_repl", "--log-level", "WARNING", "load", "--target", target,
         "--count", str(count), "--start", str(start), "--batch", str(batch), "--progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("applier", ENGINES)
def test_replica_killed_three_times_resumes_exactly_once(cluster, tmp_path: Path) -> None:
    apply_log = tmp_path / "applied.log"
    primary = cluster.primary()
    replica = cluster.replica(primary, env=cluster.env(apply_log))

    loader = _start_load(primary.address, TOTAL, batch=10)
    kills = []
    try:
        for threshold in (2_000, 8_000, 14_000):
            wait_until(
                lambda t=threshold: replica.status()["last_applied"] >= t,
                60, f"replica to pass {threshold}", interval=0.01,
            )
            kills.append(replica.status()["last_applied"])
            replica.kill()
            # let the primary get ahead, so the restart catches up a backlog while live
            time.sleep(0.2)
            replica.start()
        out, err = loader.communicate(timeout=120)
        assert loader.returncode == 0, err
    finally:
        if loader.poll() is None:
            loader.kill()
    assert json.loads(out.strip().splitlines()[-1])["last_sequence"] == TOTAL
    # each kill hit a replica that was mid-stream, not done
    assert all(0 < k < TOTAL for k in kills), kills

    wait_caught_up(primary, replica)
    digest = assert_same_digest(primary, replica)
    assert digest["sequence"] == TOTAL and digest["keys"] == TOTAL

    st = replica.status()
    # applied_entries is committed with the data: it counts each sequence once
    assert st["applied_entries"] == st["last_applied"] == TOTAL
    ranges = read_apply_log(apply_log, "r1")
    assert_applied_at_most_once(ranges)
    assert ranges[-1][1] == TOTAL


@pytest.mark.parametrize("applier", ENGINES)
def test_primary_killed_during_load_keeps_every_returned_write(cluster, tmp_path: Path) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)

    loader = _start_load(primary.address, TOTAL, batch=25)
    acked = 0
    assert loader.stdout is not None
    try:
        for line in loader.stdout:
            acked = json.loads(line)["last_sequence"]
            if acked >= 5_000:
                break
        primary.kill()
        loader.wait(timeout=60)
        # lines printed before the kill are writes whose call returned
        for line in loader.stdout.read().splitlines():
            acked = max(acked, json.loads(line)["last_sequence"])
    finally:
        if loader.poll() is None:
            loader.kill()
    assert loader.returncode != 0, "the load should have failed when the primary died"

    # a torn record at the WAL's tail, as a crash in the middle of a write leaves it
    segments = sorted((primary.data_dir / "wal").glob("*.wal"))
    with open(segments[-1], "ab") as fh:
        fh.write(b"\x40\x00\x00\x00torn-record")

    primary.start()
    st = primary.status()
    assert st["head_sequence"] >= acked
    assert st["last_applied"] == st["head_sequence"]  # store replayed up to the WAL
    assert "torn tail" in primary.log_file.read_text()
    # every write whose call returned is present
    with primary.client() as c:
        for i in (0, acked // 2, acked - 1):
            assert c.get(f"key{i:013d}".encode()) is not None, i

    head = st["head_sequence"]
    load(primary.address, TOTAL - head, start=head)
    wait_caught_up(primary, replica)
    digest = assert_same_digest(primary, replica)
    assert digest["sequence"] == TOTAL
    assert replica.status()["applied_entries"] == TOTAL
