"""A primary process and a replica process on loopback: writes, deletes, digests."""

from __future__ import annotations

import json

from helpers import assert_same_digest, cli, load, wait_caught_up


def test_load_and_deletes_replicate(cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)

    summary = load(primary.address, 20_000, batch=1000)
    assert summary["last_sequence"] == 20_000

    # deletes and single puts through the CLI
    for i in range(0, 20_000, 997):
        key = f"key{i:013d}"
        res = cli("delete", "--target", primary.address, key)
        assert res.returncode == 0, res.stderr
    res = cli("put", "--target", primary.address, "hello", "world")
    assert res.returncode == 0, res.stderr
    head = json.loads(res.stdout)["sequence"]

    wait_caught_up(primary, replica)
    digest = assert_same_digest(primary, replica)
    assert digest["sequence"] == head
    assert digest["keys"] == 20_000 - len(range(0, 20_000, 997)) + 1

    res = cli("get", "--target", replica.address, "hello")
    assert res.returncode == 0 and res.stdout.strip() == "world"
    res = cli("get", "--target", replica.address, "key0000000000000")
    assert res.returncode == 1 and "not found" in res.stderr

    st = replica.status()
    assert st["role"] == "replica"
    assert st["last_applied"] == head
    assert st["applied_entries"] == head  # every sequence applied exactly once
    pst = primary.status()
    assert pst["head_sequence"] == head
    [slot] = pst["replicas"]
    assert slot["replica_id"] == "r1" and slot["connected"]


def test_replica_refuses_writes_naming_primary(cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    res = cli("put", "--target", replica.address, "k", "v")
    assert res.returncode != 0
    assert "FAILED_PRECONDITION" in res.stderr and primary.address in res.stderr


def test_status_and_digest_json(cluster) -> None:
    primary = cluster.primary()
    load(primary.address, 10)
    res = cli("status", "--target", primary.address, "--json")
    st = json.loads(res.stdout)
    assert st["role"] == "primary" and st["head_sequence"] == 10
    res = cli("digest", "--target", primary.address, "--json")
    d = json.loads(res.stdout)
    assert d["sequence"] == 10 and d["keys"] == 10 and len(d["digest"]) == 64


def test_second_node_on_same_data_dir_is_refused(cluster) -> None:
    primary = cluster.primary()
    res = cli("primary", "--data-dir", str(primary.data_dir), "--listen", "127.0.0.1:0",
              timeout=30)
    assert res.returncode == 2
    assert "in use by another kevo-repl process" in res.stderr
