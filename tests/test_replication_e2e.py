"""A primary process and a replica process on loopback: writes, deletes, digests."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
from helpers import assert_same_digest, cli, load, read_apply_log, wait_caught_up
from kevo_repl_tools.launcher import wait_until

from kevo_repl.protocol.codec import Op


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


@pytest.mark.parametrize(
    ("applier", "replica_applier"),
    [("lmdb", "leveldb"), ("leveldb", "lmdb"), ("lmdb", "sqlite"), ("sqlite", "lmdb"),
     ("leveldb", "sqlite"), ("sqlite", "leveldb")],
)
def test_mixed_backends_converge_to_equal_digests(
    cluster, applier: str, replica_applier: str
) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary, applier=replica_applier)
    load(primary.address, 5_000, batch=500)
    longest = b"L" * 511  # the longest key both stores take
    with primary.client() as c:
        c.write([
            (Op.PUT, b"\x00", b"zero"),
            (Op.PUT, b"\xff\xfe", b"high bytes sort last"),
            (Op.PUT, b"a\x00b", b""),
            (Op.MERGE, b"key0000000000007", b"merged"),
            (Op.DELETE, b"key0000000000008", b""),
            (Op.PUT, longest, b"long"),
        ])
        head = c.put(b"last", b"write")
        assert c.get(longest) == b"long"

    wait_caught_up(primary, replica)
    digest = assert_same_digest(primary, replica)
    assert digest["sequence"] == head
    assert digest["keys"] == 5_000 + 4 + 1 - 1
    assert primary.status()["applier"] == applier
    st = replica.status()
    assert st["applier"] == replica_applier
    assert st["applied_entries"] == head
    with replica.client() as c:
        assert c.get(longest) == b"long"
        assert c.get(b"key0000000000007") == b"merged"
        assert c.get(b"key0000000000008") is None


def test_data_dir_of_another_applier_is_refused(cluster, applier: str) -> None:
    other = "leveldb" if applier == "lmdb" else "lmdb"
    primary = cluster.primary()
    load(primary.address, 100)
    before = primary.digest()
    assert primary.terminate() == 0

    res = cli("primary", "--data-dir", str(primary.data_dir), "--listen", "127.0.0.1:0",
              "--applier", other, timeout=30)
    assert res.returncode == 2
    assert str(primary.data_dir) in res.stderr
    assert f"{applier!r} applier" in res.stderr and f"{other!r} applier" in res.stderr

    # the refusal changed nothing: with its own applier the node has every entry
    primary.start()
    assert primary.digest() == before


def test_event_hooks_reach_plugins_in_node_processes(cluster, tmp_path: Path) -> None:
    """kevo_repl_batch_applied fires on the primary and the replica for every batch, and
    kevo_repl_state_changed reports the replica's states (tests/plugins/apply_log_plugin)."""
    log_path = tmp_path / "events.log"
    primary = cluster.primary(env=cluster.env(log_path))
    replica = cluster.replica(primary, env=cluster.env(log_path))
    load(primary.address, 3_000, batch=300)
    wait_caught_up(primary, replica)

    def logged_through(node: str) -> int:
        ranges = read_apply_log(log_path, node)
        return ranges[-1][1] if ranges else 0

    for node in ("primary", "r1"):
        # the hook runs right after the position advances; give the last line its moment
        wait_until(lambda n=node: logged_through(n) == 3_000, 30, f"{node}'s last batch event")
        ranges = read_apply_log(log_path, node)
        assert ranges[0][0] == 1
        # contiguous: every sequence in exactly one logged batch
        assert all(b[0] == a[1] + 1 for a, b in pairwise(ranges))
    states = [line.split()[3:] for line in log_path.read_text().splitlines()
              if line.startswith("# state r1 ")]
    assert states[0][0] == "CONNECTING"  # where every replica starts
    reached = {new for _old, new in states}
    assert {"STREAMING_ENTRIES", "APPLYING_ENTRIES", "ACKNOWLEDGING"} <= reached
