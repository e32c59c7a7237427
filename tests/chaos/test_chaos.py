"""The chaos suite's short pass (CI), the proof that its checker catches a real bug, and
the reproducibility of its schedules.

The short pass runs three seeds of 20 s of faults each (about 75 s in all); a longer pass for
release checks is `kevo-repl chaos --seed S --duration 600` (docs/chaos.md).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from kevo_repl_tools.chaos import ChaosOptions, run_chaos
from kevo_repl_tools.chaos_report import format_report
from kevo_repl_tools.chaos_schedule import (
    DEFAULT_KINDS,
    KINDS,
    NODES,
    dump_schedule,
    generate_schedule,
    schedule_from_json,
)

pytestmark = pytest.mark.chaos

#: between them, these seeds' 20-second schedules hold every enabled fault kind and a kill
#: of the primary (checked below)
SEEDS = (101, 202, 303)
DURATION = 20.0


def test_same_seed_same_schedule() -> None:
    a = generate_schedule(42, 600)
    assert a == generate_schedule(42, 600)
    assert a != generate_schedule(43, 600)
    assert schedule_from_json(json.loads(dump_schedule(a))) == a
    assert {f.kind for f in a} == set(DEFAULT_KINDS)
    assert {f.target for f in a} == set(NODES)
    for f in a:
        assert f.target in KINDS[f.kind].targets
        assert f.at > 0 and f.ends <= 600
    # one resource never has two faults at once
    by_resource: dict[str, list[tuple[float, float]]] = {}
    for f in a:
        by_resource.setdefault(f.resource, []).append((f.at, f.ends))
    for spans in by_resource.values():
        spans.sort()
        assert all(b[0] >= a_[1] for a_, b in itertools.pairwise(spans))
    # filters
    only = generate_schedule(42, 120, kinds=("kill",), targets=("r1",))
    assert only and {(f.kind, f.target) for f in only} == {("kill", "r1")}
    with pytest.raises(ValueError, match="unknown fault kinds"):
        generate_schedule(1, 10, kinds=("meteor",))
    # the short pass's seeds cover every kind, and the primary is killed at least once
    short = [f for s in SEEDS for f in generate_schedule(s, DURATION)]
    assert {f.kind for f in short} == set(DEFAULT_KINDS)
    assert any(f.kind == "kill" and f.target == "primary" for f in short)


def test_cli_prints_the_same_schedule_for_a_seed() -> None:
    def schedule() -> str:
        res = subprocess.run(
            [sys.executable, "-m", "kevo_repl", "chaos", "--seed", "7", "--duration", "60",
             "--schedule-only"], capture_output=True, text=True, timeout=60,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout

    first = schedule()
    assert first == schedule()
    assert first.count("\n") == len(generate_schedule(7, 60)) + 1


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_short_chaos_pass(tmp_path: Path, seed: int) -> None:
    rep = run_chaos(ChaosOptions(seed=seed, duration=DURATION, dir=tmp_path))
    text = format_report(rep, timeline=True)
    print(text)
    assert rep.ok, text
    # the run really ran: writes, the schedule executed, both replicas converged
    assert rep.writes_returned > 10 and rep.entries_returned > 1000, text
    assert sum(rep.faults_per_kind.values()) == len(rep.schedule) > 0, text
    assert all(s is not None for s in rep.convergence_s.values()), text
    assert set(rep.convergence_s) == {"r1", "r2"}
    assert rep.stores["primary"]["missing"] == 0
    assert rep.semisync.get("acked", 0) > 0, text  # some writes were semi-synchronous
    # the run directory holds the schedule the seed gives
    [run_dir] = tmp_path.iterdir()
    saved = schedule_from_json(json.loads((run_dir / "schedule.json").read_text()))
    assert saved == generate_schedule(seed, DURATION)
    assert json.loads((run_dir / "report.json").read_text())["ok"] is True


def test_wal_bitflips_are_refused_never_lose_data(tmp_path: Path) -> None:
    """`wal_bitflip` (not a default kind): a bit flipped in the stopped primary's active WAL
    segment must make its start refuse, naming file, offset and last good sequence, with the
    segment unchanged; once the bit is flipped back nothing returned is missing."""
    rep = run_chaos(ChaosOptions(seed=7, duration=12.0, dir=tmp_path,
                                 kinds=("wal_bitflip", "kill"), targets=("primary",)))
    text = format_report(rep, timeline=True)
    assert rep.ok, text
    assert rep.faults_per_kind["wal_bitflip"] >= 3, text
    refused = [e for e in rep.timeline if "the primary refused to start" in e.text]
    assert len(refused) == rep.faults_per_kind["wal_bitflip"], text
    assert rep.writes_returned > 10 and rep.stores["primary"]["missing"] == 0, text
    assert all(s is not None for s in rep.convergence_s.values()), text


def test_short_chaos_pass_through_the_cli(tmp_path: Path) -> None:
    seed = SEEDS[2]
    res = subprocess.run(
        [sys.executable, "-m", "kevo_repl", "--log-level", "WARNING", "chaos", "--seed",
         str(seed), "--duration", str(DURATION), "--dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=240,
    )
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert res.returncode == 0 and report["ok"], (res.stdout, res.stderr[-3000:])
    assert report["seed"] == seed and report["violations"] == []
    assert report["rerun"] == f"kevo-repl chaos --seed {seed} --duration {DURATION:g}"
    assert set(report["peak_rss_mb"]) == {"primary", "r1", "r2"}


def test_checker_catches_an_applier_that_commits_the_position_before_the_data(
    tmp_path: Path,
) -> None:
    """broken-lmdb commits r1's position in one transaction and its data in the next: the
    SIGKILLs of the schedule land between the two, entries are lost, and the run fails.

    The window between the two commits is widened to 0.3 s so that a streaming r1 spends most
    of its time inside it: with the default 50 ms a loaded machine often kills r1 while it
    waits to reconnect, outside every window, and the broken store survives by luck."""
    rep = run_chaos(ChaosOptions(
        seed=5, duration=12.0, dir=tmp_path, kinds=("kill",), targets=("r1",),
        replica_appliers=("broken-lmdb", "faulty-leveldb"), broken_window_s=0.3,
    ))
    text = format_report(rep)
    print(text)
    assert not rep.ok, text
    assert rep.faults_per_kind == {"kill": len(rep.schedule)} and len(rep.schedule) >= 3
    caught = [v for v in rep.violations if "r1" in v.message]
    assert caught, text
    assert {v.check for v in caught} <= {"convergence", "durability"}
    # the report says how to reproduce it, and shows the schedule and timeline
    assert "kevo-repl chaos --seed 5 --duration 12 --kinds kill --targets r1" in text
    assert "schedule (seed 5)" in text and "VIOLATIONS:" in text
    # the correct replica next to it is fine
    assert rep.convergence_s["r2"] is not None
    assert not any("r2" in v.message for v in rep.violations), text


def test_attacks_on_the_primary_stay_bounded(tmp_path: Path) -> None:
    """`slot_flood`, `stalled_snapshot`, `unread_writestream`, `rogue_replica` (not default
    kinds): the flood is refused past max_slots, a stalled snapshot does not block a new one,
    an unread WriteStream is read only so far, takeovers and lying acks are refused; no
    violation, RSS under the bound."""
    kinds = ("slot_flood", "stalled_snapshot", "unread_writestream", "rogue_replica")
    rep = run_chaos(ChaosOptions(seed=1, duration=30.0, dir=tmp_path, kinds=kinds,
                                 targets=("primary",)))
    text = format_report(rep, timeline=True)
    assert rep.ok, text
    assert all(rep.faults_per_kind[k] >= 1 for k in kinds), text
    healed = [e.text for e in rep.timeline if e.action == "end"]
    assert any("RESOURCE_EXHAUSTED" in t for t in healed if "slot_flood" in t), text
    assert any("a new one was served" in t for t in healed if "stalled_snapshot" in t), text
    assert any("lying acks refused" in t for t in healed if "rogue_replica" in t), text
    assert all(s is not None for s in rep.convergence_s.values()), text
