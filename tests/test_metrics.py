"""The Prometheus endpoint of real node processes, scraped and parsed."""

from __future__ import annotations

import urllib.request

from helpers import load, wait_caught_up
from prometheus_client.parser import text_string_to_metric_families

from kevo_repl.replica.state import State


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_endpoint_on_primary_and_replica(cluster) -> None:
    primary = cluster.primary(metrics="127.0.0.1:0")
    replica = cluster.replica(primary, metrics="127.0.0.1:0")
    assert primary.metrics_address and replica.metrics_address
    load(primary.address, 500)
    wait_caught_up(primary, replica)

    p = scrape(primary.metrics_address)
    assert p[("kevo_repl_head_sequence", ())] == 500
    assert p[("kevo_repl_applied_entries_total", ())] == 500
    assert p[("kevo_repl_primary_slot_connected", (("replica_id", "r1"),))] == 1
    lag = p[("kevo_repl_primary_slot_lag_entries", (("replica_id", "r1"),))]
    assert 0 <= lag <= 500

    r = scrape(replica.metrics_address)
    assert r[("kevo_repl_last_applied_sequence", ())] == 500
    assert r[("kevo_repl_replica_lag_entries", ())] == 0
    assert r[("kevo_repl_replica_connected", ())] == 1
    assert r[("kevo_repl_replica_reconnects_total", ())] == 0
    assert r[("kevo_repl_replica_mislabelled_payloads_total", ())] == 0
    states = {labels[0][1]: v for (name, labels), v in r.items()
              if name == "kevo_repl_replica_state"}
    assert sum(states.values()) == 1 and len(states) == len(State)
    assert states["WAITING_FOR_DATA"] == 1 or states["ACKNOWLEDGING"] == 1
