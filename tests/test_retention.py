"""WAL retention on a real primary: durable slots, pruning for the slots, the caps, lost and
dropped slots, and what `status` and `kevo-repl slots` show."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
from helpers import assert_same_digest, cli, load, wait_caught_up
from kevo_repl_tools.launcher import wait_until

from kevo_repl.config import Config
from kevo_repl.config import load as load_config
from kevo_repl.errors import ConfigError
from kevo_repl.node.server import Node
from kevo_repl.primary.slots import Slot, SlotTable
from kevo_repl.protocol.codec import Op

CAP = 1024 * 1024  # max_retained_bytes of the capped tests
CAPPED = f"[wal]\nsegment_bytes = 131072\n[retention]\nmax_retained_bytes = {CAP}\n"


def _toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _slot(primary, replica_id: str = "r1") -> dict:
    return next(s for s in primary.status()["replicas"] if s["replica_id"] == replica_id)


def wal_dir_bytes(data_dir: Path) -> int:
    """Bytes of every file in the primary's WAL directory, as on disk now."""
    total = 0
    for path in (data_dir / "wal").iterdir():
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # pruned while we looked
            pass
    return total


# ---------------------------------------------------------------------------------------------
# configuration and the slot file
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "match"), [
    ("[retention]\nmax_retained_bytes = 1000\n", "at least twice"),
    ("[retention]\nmax_retained_age_s = -1\n", "must be 0 or positive"),
    ("[retention]\ndrop_inactive_after_s = -5\n", "must be 0 or positive"),
    ("[retention]\ncheck_interval_s = 0\n", "must be positive"),
    ("[snapshot]\nmax_chunk_bytes = 10\n", "max_chunk_bytes must be from"),
    ("[snapshot]\nmax_held = 0\n", "max_held"),
    ("[replica]\nsnapshot_chunk_bytes = 999999999\n", "snapshot_chunk_bytes must be from"),
    ("[retention]\nmax_retained = 1\n", "unknown key 'max_retained'"),
    ("[replica]\nbootstrap = 1\n", "must be bool"),
])
def test_bad_retention_config_is_a_clear_error(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_toml(tmp_path / "c.toml", text)).validate()


def test_slot_table_round_trips_and_reads_the_old_format(tmp_path: Path) -> None:
    path = tmp_path / "slots.json"
    path.write_text(json.dumps([{"replica_id": "old", "acked": 41, "last_ack_at": 5.0}]))
    table = SlotTable(path)
    assert table.slots["old"] == Slot("old", 41, 5.0)  # written before slots could be lost
    table.ack("old", 40)  # never backwards
    table.ack("new", 7)
    table.slots["old"].lost = True
    table.mark_dirty()
    table.flush()
    again = SlotTable(path)
    assert again.slots["old"].acked == 41 and again.slots["old"].lost
    assert again.slots["new"].acked == 7 and not again.slots["new"].lost
    assert again.drop("new") is not None and again.drop("nope") is None
    again.flush()
    assert set(SlotTable(path).slots) == {"old"}


# ---------------------------------------------------------------------------------------------
# the rules, on an in-process primary with a real WAL and store
# ---------------------------------------------------------------------------------------------


def _config(tmp_path: Path, **retention: float) -> Config:
    cfg = Config()
    cfg.node.role = "primary"
    cfg.node.data_dir = str(tmp_path / "primary")
    cfg.node.listen = "127.0.0.1:0"
    cfg.wal.segment_bytes = 8192
    cfg.retention.max_retained_bytes = 1 << 30
    for key, value in retention.items():
        setattr(cfg.retention, key, value)
    return cfg


async def _write(node: Node, count: int) -> None:
    assert node.primary is not None
    head = node.primary.head
    for first in range(head, head + count, 50):
        await node.primary.write(
            [(Op.PUT, b"k%d" % i, b"v" * 40) for i in range(first, min(head + count, first + 50))]
        )


async def test_retention_rules_in_process(tmp_path: Path) -> None:
    node = Node(_config(tmp_path))
    await node.start()
    try:
        p = node.primary
        assert p is not None
        ret, wal = p.retention, p.wal
        # no slot at all: everything is kept (for replicas to come), up to the caps
        await _write(node, 2000)
        assert len(wal.segments()) > 5
        assert ret.plan().cut == 0 and ret.enforce() == 0 and wal.first_sequence == 1
        assert ret.status()["oldest_segment_held_by"] == "no slots"

        # a slot holds exactly what it needs: acked + 1 onwards
        p.slots.ack("a", 700)
        p.slots.ack("b", 1500)
        ret.enforce()
        assert ret.status()["oldest_segment_held_by"] == "slot a"
        first = wal.first_sequence
        assert 1 < first <= 701
        assert next(s for s in wal.segments() if s.first_seq <= 701 <= s.last_seq)
        status = node.service.status()
        a = next(s for s in status["replicas"] if s.replica_id == "a")
        assert a.slot_state == "inactive" and a.holds_oldest_segment
        assert a.lag_bytes == wal.bytes_from(701) > 0 and a.lag_entries == p.head - 700

        # a snapshot held for a bootstrapping replica pins retention like a slot
        held = await asyncio.to_thread(ret.snapshots._open, "boot")
        ret.snapshots.held[held.snapshot_id] = held
        assert held.position.sequence == 2000
        await _write(node, 1000)
        p.slots.ack("a", 2900)
        p.slots.ack("b", 2950)
        ret.enforce()
        assert 1501 < wal.first_sequence <= 2001
        ret.snapshots.release_for("boot", 2000)
        assert not ret.snapshots.held
        ret.enforce()
        assert 2001 < wal.first_sequence <= 2901

        # the age cap deletes old segments even if a slot needs them: the slot is lost
        await _write(node, 1000)
        ret.cfg.max_retained_age_s = 3600.0
        assert ret.plan(now=time.time()).cut <= 2901  # nothing is that old
        cut = ret.plan(now=time.time() + 7200).cut
        assert cut == wal.segments()[-1].first_seq  # all but the segment being written
        with ret._lock:
            ret._prune(ret.plan(now=time.time() + 7200))
        assert len(wal.segments()) == 1
        for slot in p.slots.slots.values():
            assert slot.lost == (slot.acked + 1 < cut)
        assert p.slots.slots["a"].lost and p.slots.slots["b"].lost
        # never pruned above what the primary's store has synced
        assert p.store.position().sequence + 1 >= wal.first_sequence
        assert ret.status()["lost_slots"] == sum(s.lost for s in p.slots.slots.values())

        # an ack at a retained position makes the slot hold retention again
        p.slots.ack("a", p.head)
        assert not p.slots.slots["a"].lost
        b_lost = p.slots.slots["b"].lost
    finally:
        await node.stop()
    # lost and acked survive a restart of the primary
    table = SlotTable(tmp_path / "primary" / "slots.json")
    assert not table.slots["a"].lost and table.slots["b"].lost == b_lost
    assert table.slots["a"].acked == 4000 and table.slots["b"].acked == 2950


async def test_byte_cap_is_enforced_before_every_append(tmp_path: Path) -> None:
    node = Node(_config(tmp_path, max_retained_bytes=65536))
    await node.start()
    try:
        p = node.primary
        assert p is not None
        p.slots.ack("dead", 0)  # a replica that never acknowledges anything
        peak = 0
        for _ in range(40):
            await _write(node, 100)
            peak = max(peak, wal_dir_bytes(tmp_path / "primary"))
        assert peak <= 65536
        assert p.wal.first_sequence > 1 and p.slots.slots["dead"].lost
    finally:
        await node.stop()


# ---------------------------------------------------------------------------------------------
# real processes
# ---------------------------------------------------------------------------------------------


@pytest.mark.crash
def test_slots_survive_primary_restart(cluster, tmp_path: Path) -> None:
    small = _toml(tmp_path / "p.toml", "[wal]\nsegment_bytes = 65536\n")
    primary = cluster.primary(config=small)
    replica = cluster.replica(primary)
    load(primary.address, 5_000)
    wait_caught_up(primary, replica)
    slots_file = primary.data_dir / "slots.json"

    def on_disk() -> int:
        return {s["replica_id"]: s["acked"] for s in json.loads(slots_file.read_text())}["r1"]

    wait_until(lambda: on_disk() == 5_000, 30, "the slot on disk")
    replica.terminate()
    primary.kill()  # SIGKILL: only what is on disk survives
    primary.start()
    slot = _slot(primary)
    assert slot["acked_sequence"] == 5_000 and slot["slot_state"] == "inactive"

    # the slot holds the WAL r1 needs while it is away; it catches up from the WAL
    load(primary.address, 20_000, start=5_000)
    st = primary.status()
    assert st["first_sequence"] <= 5_001 and st["wal_segments"] > 10
    assert _slot(primary)["holds_oldest_segment"]
    assert st["oldest_segment_held_by"] == "slot r1"
    replica.start()
    wait_caught_up(primary, replica)
    assert replica.status()["bootstraps"] == 0
    assert_same_digest(primary, replica)
    # once r1 has acknowledged everything the WAL it held goes
    wait_until(lambda: primary.status()["first_sequence"] > 5_001, 30, "pruning")
    wait_until(lambda: _slot(primary)["lag_bytes"] == 0, 30, "r1's ack")
    assert _slot(primary)["slot_state"] == "active"


def test_dead_replica_keeps_disk_under_the_cap(cluster, tmp_path: Path) -> None:
    primary = cluster.primary(config=_toml(tmp_path / "p.toml", CAPPED))
    replica = cluster.replica(primary)
    load(primary.address, 2_000)
    wait_caught_up(primary, replica)
    replica.kill()

    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(wal_dir_bytes(primary.data_dir))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        load(primary.address, 100_000, start=2_000)  # about 15 MiB of WAL: 15x the cap
    finally:
        done.set()
        sampler.join(timeout=30)
    samples.append(wal_dir_bytes(primary.data_dir))
    assert len(samples) > 10
    assert max(samples) <= CAP, f"WAL directory reached {max(samples)} bytes, cap {CAP}"

    st = primary.status()
    assert st["wal_bytes"] <= CAP and st["max_retained_bytes"] == CAP
    assert st["lost_slots"] == 1 and st["oldest_segment_held_by"] == "no slots"
    slot = _slot(primary)
    assert slot["slot_state"] == "lost" and slot["lost_age_s"] >= 0
    assert slot["acked_sequence"] == 2_000
    assert "is lost" in primary.log_file.read_text()

    # the replica comes back, bootstraps, and its slot holds retention again
    replica.start()
    wait_caught_up(primary, replica, timeout=120)
    assert replica.status()["bootstraps"] == 1
    assert_same_digest(primary, replica)
    wait_until(lambda: _slot(primary)["slot_state"] == "active", 30, "the slot to recover")
    assert primary.status()["lost_slots"] == 0


def test_slots_cli_list_and_drop(cluster, tmp_path: Path) -> None:
    primary = cluster.primary(config=_toml(tmp_path / "p.toml", "[wal]\nsegment_bytes = 65536\n"))
    replica = cluster.replica(primary)
    load(primary.address, 1_000)
    wait_caught_up(primary, replica)

    res = cli("slots", "list", "--target", primary.address, "--json")
    assert res.returncode == 0, res.stderr
    [slot] = json.loads(res.stdout)
    assert slot["replica_id"] == "r1" and slot["slot_state"] == "active"
    res = cli("slots", "list", "--target", primary.address)
    assert "r1" in res.stdout and "active" in res.stdout

    res = cli("slots", "drop", "--target", primary.address, "r1")
    assert res.returncode == 3 and "FAILED_PRECONDITION" in res.stderr  # it is streaming
    res = cli("slots", "drop", "--target", replica.address, "r1")
    assert res.returncode == 3 and "FAILED_PRECONDITION" in res.stderr  # not a primary
    res = cli("slots", "list", "--target", replica.address)
    assert res.returncode == 2 and "replica" in res.stderr

    replica.kill()
    wait_until(lambda: _slot(primary)["slot_state"] == "inactive", 30, "r1 to disconnect")
    res = cli("slots", "drop", "--target", primary.address, "r1")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"dropped": "r1", "acked_sequence": 1_000}
    assert primary.status()["replicas"] == []
    assert "no slots" in cli("slots", "list", "--target", primary.address).stdout
    res = cli("slots", "drop", "--target", primary.address, "r1")
    assert res.returncode == 3 and "NOT_FOUND" in res.stderr

    # a replica whose slot was dropped comes back with a new one, current from its next ack
    replica.start()
    load(primary.address, 10, start=1_000)
    wait_caught_up(primary, replica)
    wait_until(lambda: _slot(primary)["acked_sequence"] == 1_010, 30, "the new slot")


def test_inactive_slot_is_dropped_after_the_configured_time(cluster, tmp_path: Path) -> None:
    conf = "[retention]\ndrop_inactive_after_s = 0.5\ncheck_interval_s = 0.1\n"
    primary = cluster.primary(config=_toml(tmp_path / "p.toml", conf))
    r1 = cluster.replica(primary, name="r1", replica_id="r1")
    r2 = cluster.replica(primary, name="r2", replica_id="r2")
    load(primary.address, 500)
    wait_caught_up(primary, r1, r2)
    r2.kill()
    wait_until(
        lambda: [s["replica_id"] for s in primary.status()["replicas"]] == ["r1"],
        30, "r2's slot to be dropped",
    )
    assert "dropped slot 'r2'" in primary.log_file.read_text()
    assert _slot(primary)["slot_state"] == "active"  # a streaming replica is never dropped
