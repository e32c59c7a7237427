"""Read-your-writes on replicas: Get(min_sequence) waits, bounded by the call's deadline, and
an operator's tour: check lag, stop a replica, write, restart it, read the write from it."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import grpc
import pytest
from cli_script import run
from helpers import load, wait_caught_up

from kevo_repl.client.client import Client
from kevo_repl.replica.read_gate import ReadGate, TooManyWaitingReads


def test_get_waits_for_min_sequence_then_answers(cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    with primary.client() as p, Client(replica.address, timeout=20) as r:
        seq = p.put(b"mine", b"v1")
        assert r.get(b"mine", min_sequence=seq) == b"v1"
        # a sequence not written yet: the read waits, and answers once it is applied
        writer = threading.Timer(0.5, p.put, (b"mine", b"v2"))
        started = time.monotonic()
        writer.start()
        try:
            assert r.get(b"mine", min_sequence=seq + 1) == b"v2"
        finally:
            writer.join()
        assert time.monotonic() - started >= 0.4


def test_get_past_what_can_be_applied_fails_within_the_deadline(cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    seq = primary.client().put(b"k", b"v")
    with Client(replica.address, timeout=1.0) as r:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            r.get(b"k", min_sequence=seq + 1000)
        took = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not yet" in info.value.details() and primary.address in info.value.details()
    assert 0.5 <= took < 1.5
    res = run("wait", "--target", replica.address, "--sequence", str(seq + 1000),
              "--timeout", "1")
    assert res.returncode == 3 and b"FAILED_PRECONDITION" in res.stderr
    assert b"Traceback" not in res.stderr


def test_waiting_reads_are_bounded() -> None:
    async def scenario() -> None:
        applied = 0
        gate = ReadGate(lambda: applied, limit=3)
        waiters = [asyncio.create_task(gate.wait(5, 5.0)) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert gate.waiting == 3
        with pytest.raises(TooManyWaitingReads):
            await gate.wait(5, 5.0)
        assert await gate.wait(0, 0.0)  # already applied: never counted, never refused
        applied = 5
        gate.advanced()
        assert await asyncio.wait_for(asyncio.gather(*waiters), 1.0) == [True] * 3
        assert gate.waiting == 0
        assert not await gate.wait(6, 0.1)  # times out: False, and the slot is freed
        assert gate.waiting == 0

    asyncio.run(scenario())


@pytest.mark.parametrize("applier", ["lmdb"])
def test_operator_tour_stop_replica_write_restart_read_my_write(cluster, tmp_path) -> None:
    primary = cluster.primary(metrics="127.0.0.1:0")
    replica = cluster.replica(primary)
    p, r = primary.address, replica.address
    load(p, 2000)
    wait_caught_up(primary, replica)
    # check lag
    table = run("status", "--target", r).stdout.decode()
    assert re.search(r"lag_entries\s+0\n", table) and re.search(r"connected\s+true", table)
    primary_table = run("status", "--target", p).stdout.decode()
    assert re.search(r"max_retained_bytes\s+64\.0 GiB\n", primary_table), primary_table
    assert "bootstrap_" not in table and "lag_seconds" not in primary_table
    primary_json = json.loads(run("status", "--target", p, "--json").stdout)
    assert not {"replica_id", "lag_seconds", "connected", "bootstrap_keys"} & set(primary_json)
    slots = json.loads(run("slots", "list", "--target", p, "--json").stdout)
    assert slots[0]["lag_entries"] == 0 and "lost_age_s" not in slots[0]
    # stop the replica (crash), write, restart
    replica.kill()
    res = run("put", "--target", p, "my-key", "my-write")
    assert res.returncode == 0, res.stderr
    seq = json.loads(res.stdout)["sequence"]
    assert seq == 2001
    replica.start()
    # read my write from the replica: --min-sequence waits until it has caught up
    res = run("get", "--target", r, "--min-sequence", str(seq), "my-key", "--timeout", "30")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"my-write\n"
    res = run("wait", "--target", r, "--sequence", str(seq))
    assert json.loads(res.stdout)["applied"] >= seq
    verify = run("verify", "--primary", p, "--replica", r)
    assert verify.returncode == 0 and b"equal at sequence 2001" in verify.stdout
    swapped = run("verify", "--primary", r, "--replica", p)
    assert swapped.returncode == 2 and b"is a replica" in swapped.stderr
    twice = run("verify", "--primary", p, "--replica", p)
    assert twice.returncode == 2 and b"the same node as --primary" in twice.stderr
