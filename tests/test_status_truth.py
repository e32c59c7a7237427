"""Status and metrics tell the truth: real nodes, real crashes (SIGKILL)."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest
from cli_script import run
from helpers import load, wait_caught_up
from kevo_repl_tools.launcher import wait_until

from kevo_repl.cli.status_view import for_role
from kevo_repl.node.metrics import metric_name, slot_metric_name


@pytest.fixture
def applier() -> str:
    """These tests are about the CLI and status, not the store: one applier is enough."""
    return "lmdb"


def _slot(primary, replica_id="r1"):
    [slot] = [s for s in primary.status()["replicas"] if s["replica_id"] == replica_id]
    return slot


def test_replica_of_a_dead_primary_is_not_connected_and_its_lag_grows(cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 100)
    wait_caught_up(primary, replica)
    primary.kill()
    wait_until(lambda: not replica.status()["connected"], 30, "the replica to notice")
    first = replica.status()
    time.sleep(2.5)  # several reconnect attempts fail meanwhile (backoff starts at 0.05 s)
    second = replica.status()
    assert second["reconnects"] > first["reconnects"]
    assert not second["connected"] and second["state"] in ("ERROR", "CONNECTING")
    # the age of the last message actually received, not reset by failed attempts
    assert second["last_message_age_s"] >= first["last_message_age_s"] + 2.0
    assert second["lag_seconds"] >= first["lag_seconds"] + 2.0 > 2.0
    # "connected" is logged once: for the one stream that really started
    assert replica.log_file.read_text().count(" connected to ") == 1
    shown = json.loads(run("status", "--target", replica.address, "--json").stdout)
    assert shown["backoff_history_s"] and all(
        d == round(d, 3) for d in shown["backoff_history_s"]
    )
    assert "wal_segments" not in shown and "replicas" not in shown  # the primary's fields
    table = run("status", "--target", replica.address).stdout.decode()
    assert re.search(r"lag_entries\s+unknown: not connected", table), table
    assert re.search(r"connected\s+false", table), table


def test_resumed_replica_counts_as_acked_after_primary_restart(cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 5000, batch=100)
    wait_caught_up(primary, replica)
    primary.kill()  # SIGKILL: the slot table may lag the acks it had received
    primary.start()
    head = primary.status()["head_sequence"]
    assert head == 5000
    # no write after the restart: the resuming replica's position alone makes it caught up
    wait_until(lambda: _slot(primary)["connected"], 30, "the replica to resume")
    wait_until(lambda: _slot(primary)["acked_sequence"] == head, 5, "the resume to count")
    slot = _slot(primary)
    assert slot["lag_entries"] == 0 and slot["lag_bytes"] == 0


def test_idle_healthy_replica_keeps_last_ack_age_fresh(cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 10)
    wait_caught_up(primary, replica)
    ages = []
    for _ in range(4):  # 4 s idle: heartbeats every second are answered with acks
        time.sleep(1.0)
        ages.append(_slot(primary)["last_ack_age_s"])
    assert all(0 <= a < 2.5 for a in ages), ages


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        return resp.read().decode()


def _numeric(value: object) -> bool:
    return isinstance(value, int | float)


def test_every_numeric_status_field_is_a_metric(cluster) -> None:
    primary = cluster.primary(metrics="127.0.0.1:0")
    replica = cluster.replica(primary, metrics="127.0.0.1:0")
    load(primary.address, 10)
    wait_caught_up(primary, replica)
    for node in (primary, replica):
        st = for_role(node.status())  # the role's own fields, as `status --json` shows them
        text = _scrape(node.metrics_address)
        names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                 if line and not line.startswith("#")}
        fields = [k for k, v in st.items() if _numeric(v)]
        assert len(fields) > 10
        missing = [k for k in fields if metric_name(st["role"], k) not in names]
        assert not missing, f"{st['role']} status fields missing from /metrics: {missing}"
    [slot] = for_role(primary.status())["replicas"]
    text = _scrape(primary.metrics_address)
    for key, value in slot.items():
        if _numeric(value) or key == "slot_state":
            assert f'{slot_metric_name(key)}{{replica_id="r1"' in text, key
    assert 'kevo_repl_primary_slot_state{replica_id="r1",state="active"} 1.0' in text
    assert "kevo_repl_primary_semisync_degraded_total 0.0" in text
    assert "kevo_repl_primary_lost_slots 0.0" in text
