"""Continuous verification (`[replica] verify_interval_s`) with real node processes: it passes
and advances under continuous writes, and a key changed behind the replica's back is
reported as a divergent range naming its bucket, in status, metrics and the log."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from helpers import load, tamper_with_engine, wait_caught_up
from kevo_repl_tools.launcher import wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_verify_under_load import Writer

APPLIERS = ["lmdb", "leveldb", "sqlite"]
#: a comparison every this many seconds
INTERVAL_S = 0.3


def _config(tmp_path: Path, interval: float = INTERVAL_S) -> Path:
    path = tmp_path / "verify.toml"
    path.write_text(f"[replica]\nverify_interval_s = {interval}\n")
    return path


def _metrics(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if not s.labels}


@pytest.mark.parametrize("applier", APPLIERS)
def test_background_verification_advances_under_writes(
    cluster, applier: str, tmp_path: Path
) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary, config=_config(tmp_path), metrics="127.0.0.1:0")
    load(primary.address, 2_000)
    wait_caught_up(primary, replica)
    seen: list[int] = []
    with Writer(primary).writing() as w:
        start = w.last_sequence

        def verified_anew() -> bool:
            st = replica.status()
            seq = int(st["last_verified_sequence"])
            if seq > start and (not seen or seq > seen[-1]):
                assert st["divergent_ranges"] == [], st
                assert st["divergent_range_count"] == 0
                seen.append(seq)
            return len(seen) >= 3

        wait_until(verified_anew, 60, "three background comparisons during the writes")
        # compared in the middle of the writes: more were written after the last comparison
        wait_until(lambda: w.last_sequence > seen[-1], 30, "writes after the comparisons")
        assert w.running(), "the writer stopped: not under continuous writes"
    st = replica.status()
    assert st["verify_runs"] >= 3 and 0 <= st["last_verified_age_s"] < 30, st
    # comparisons are served at once: none waited out its deadline or found no room
    assert st["verify_failures"] == 0 and st["verify_error"] == "", st
    m = _metrics(replica.metrics_address)
    assert m["kevo_repl_replica_last_verified_sequence"] >= seen[-1]
    assert m["kevo_repl_replica_divergent_range_count"] == 0
    assert m["kevo_repl_replica_verify_runs"] >= 3
    # the holds were all released: the replica catches up and applied everything once
    wait_caught_up(primary, replica)
    st = replica.status()
    assert st["applied_entries"] == st["last_applied"], st
    assert replica.digest() == primary.digest()
    assert primary.status().get("replicas"), "the replica's slot is there"


@pytest.mark.parametrize("applier", APPLIERS)
def test_background_verification_reports_tampering(
    cluster, applier: str, tmp_path: Path
) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary, config=_config(tmp_path), metrics="127.0.0.1:0")
    load(primary.address, 3_000)
    wait_caught_up(primary, replica)
    replica.terminate()
    key = b"key0000000001234"
    tamper_with_engine(replica.data_dir / "store", applier, key, b"tampered")
    replica.start()
    with Writer(primary).writing():
        wait_until(lambda: replica.status()["divergent_ranges"], 60,
                   "the background verification to report the tampered key")
    st = replica.status()
    assert st["divergent_range_count"] == 1, st
    (described,) = st["divergent_ranges"]
    # the bucket narrowed down to at most 16 keys around the tampered one
    assert "bucket 'key000000000123" in described and "key0000000001230" in described, st
    assert st["last_verified_sequence"] > 3_000
    assert _metrics(replica.metrics_address)["kevo_repl_replica_divergent_range_count"] == 1
    log = replica.log_file.read_text()
    assert "WARNING" in log and "DIFFERS from its primary" in log
    assert "key000000000123" in log
    # and it is reported again each time, for as long as the damage is there
    runs = st["verify_runs"]
    wait_until(lambda: replica.status()["verify_runs"] > runs, 30, "another comparison")
    assert replica.status()["divergent_range_count"] == 1


@pytest.mark.parametrize("applier", ["leveldb"])
def test_reported_ranges_are_bounded(cluster, applier: str, tmp_path: Path) -> None:
    """Damage in many places: status lists at most MAX_REPORTED_RANGES of them and counts
    them all."""
    from kevo_repl.node.background_verify import MAX_REPORTED_RANGES

    primary = cluster.primary()
    replica = cluster.replica(primary, config=_config(tmp_path))
    load(primary.address, 3_000)
    wait_caught_up(primary, replica)
    replica.terminate()
    damaged = 40  # one key in each of 40 buckets of 10 keys
    for i in range(damaged):
        tamper_with_engine(replica.data_dir / "store", applier, b"key%013d" % (i * 50), b"x")
    replica.start()
    wait_until(lambda: replica.status()["divergent_ranges"], 60, "the damage to be reported")
    st = replica.status()
    assert len(st["divergent_ranges"]) == MAX_REPORTED_RANGES < damaged, st
    assert st["divergent_range_count"] == damaged, st


@pytest.mark.parametrize("applier", ["lmdb"])
def test_off_by_default(cluster, applier: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 100)
    wait_caught_up(primary, replica)
    st = replica.status()
    assert st["verify_runs"] == 0 and st["last_verified_sequence"] == 0
    assert st["last_verified_age_s"] == -1.0
