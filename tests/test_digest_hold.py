"""The primary's digest hold (Digest hold_replica, ReleaseDigestHold) with real processes:
what it sends a held replica stops at P, the replica's digest at P is served and equals the
primary's, holds are bounded in number and time, and a SIGKILL of either side while a hold
is in place loses nothing and applies nothing twice."""

from __future__ import annotations

import time

import grpc
import pytest
from helpers import load, wait_caught_up
from kevo_repl_tools.launcher import NodeProcess, wait_until

from kevo_repl.primary.stream_holds import MAX_HOLDS

#: how long a held replica is watched to stay at P
WATCH_S = 1.0


def _exactly_once(replica: NodeProcess) -> None:
    st = replica.status()
    assert st["applied_entries"] == st["last_applied"], st


def _stays_at(replica: NodeProcess, sequence: int, seconds: float) -> None:
    """The replica reaches `sequence` and applies nothing past it for `seconds`."""
    wait_until(lambda: replica.status()["last_applied"] >= sequence, 30, "the replica at P")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert replica.status()["last_applied"] == sequence
        time.sleep(0.05)


@pytest.mark.parametrize("applier", ["lmdb"])
def test_hold_stops_the_stream_at_p_until_released(cluster, applier: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 1_000)
    wait_caught_up(primary, replica)
    with primary.client(10.0) as p:
        held = p.digest_buckets(b"", hold_replica="r1", hold_s=30.0)
        assert held.sequence == 1_000
        load(primary.address, 500, start=1_000)
        assert primary.status()["head_sequence"] == 1_500
        _stays_at(replica, 1_000, WATCH_S)
        with replica.client(10.0) as r:
            mine = r.digest_buckets(b"", at_sequence=held.sequence)
        assert mine.sequence == held.sequence and mine.digest == held.digest
        assert p.release_digest_hold("r1", held.sequence) is True
        assert p.release_digest_hold("r1", held.sequence) is False  # already gone
    wait_caught_up(primary, replica)
    _exactly_once(replica)
    assert replica.digest() == primary.digest()


@pytest.mark.parametrize("applier", ["lmdb"])
def test_hold_expires_by_itself(cluster, applier: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 1_000)
    wait_caught_up(primary, replica)
    with primary.client(10.0) as p:
        started = time.monotonic()
        p.digest_buckets(b"", hold_replica="r1", hold_s=2.0)
        load(primary.address, 500, start=1_000)
        _stays_at(replica, 1_000, 0.5)
        wait_caught_up(primary, replica, timeout=30)
        assert time.monotonic() - started >= 2.0 - 0.1  # not before the hold ended
        assert p.release_digest_hold("r1", 1_000) is False
    _exactly_once(replica)


@pytest.mark.parametrize("applier", ["lmdb"])
def test_holds_are_bounded(cluster, applier: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 100)
    wait_caught_up(primary, replica)
    with primary.client(10.0) as p:
        ids = [f"x{i}" for i in range(MAX_HOLDS)]
        for rid in ids:
            assert p.digest_buckets(b"", hold_replica=rid, hold_s=30.0).sequence == 100
        with pytest.raises(grpc.RpcError) as full:
            p.digest_buckets(b"", hold_replica="one-more", hold_s=30.0)
        assert full.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"at most {MAX_HOLDS}" in (full.value.details() or "")
        with pytest.raises(grpc.RpcError) as twice:
            p.digest_buckets(b"", hold_replica=ids[0], hold_s=30.0)
        assert twice.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        for rid in ids:
            assert p.release_digest_hold(rid, 100)
        # room again: a hold for the real replica is served, and released
        assert p.digest_buckets(b"", hold_replica="r1", hold_s=30.0).sequence == 100
        assert p.release_digest_hold("r1", 100)
    # the replica refuses to hold (it has no stream to hold) and to release
    with replica.client(10.0) as r:
        with pytest.raises(grpc.RpcError) as on_replica:
            r.digest_buckets(b"", hold_replica="r1")
        assert on_replica.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as release_on_replica:
            r.release_digest_hold("r1", 100)
        assert release_on_replica.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    load(primary.address, 100, start=100)
    wait_caught_up(primary, replica)
    _exactly_once(replica)


@pytest.mark.parametrize("applier", ["lmdb", "sqlite"])
def test_sigkill_of_the_primary_while_holding(cluster, applier: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 2_000)
    wait_caught_up(primary, replica)
    with primary.client(10.0) as p:
        p.digest_buckets(b"", hold_replica="r1", hold_s=60.0)
    load(primary.address, 1_000, start=2_000)
    _stays_at(replica, 2_000, 0.3)
    primary.kill()  # SIGKILL: the hold was in memory only
    primary.start()
    wait_caught_up(primary, replica, timeout=60)
    assert replica.status()["last_applied"] == 3_000
    _exactly_once(replica)
    assert replica.digest() == primary.digest()


@pytest.mark.parametrize("applier", ["lmdb", "leveldb"])
def test_sigkill_of_the_replica_while_held(cluster, applier: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 2_000)
    wait_caught_up(primary, replica)
    with primary.client(10.0) as p:
        held = p.digest_buckets(b"", hold_replica="r1", hold_s=60.0)
        load(primary.address, 1_000, start=2_000)
        _stays_at(replica, 2_000, 0.3)
        replica.kill()
        replica.start()
        # its new session is held too: it resumes at P + 1 and waits there
        _stays_at(replica, 2_000, WATCH_S)
        assert p.release_digest_hold("r1", held.sequence)
    wait_caught_up(primary, replica)
    assert replica.status()["last_applied"] == 3_000
    _exactly_once(replica)
    assert replica.digest() == primary.digest()
