"""Semi-synchronous writes with real node processes: a write that waited for two durable acks
survives both replicas being killed at once; timeouts raise or degrade as asked."""

from __future__ import annotations

import grpc
import pytest

from kevo_repl.client.client import SemiSync
from kevo_repl.protocol.codec import Op


def test_durable_on_both_replicas_even_if_both_die_right_after(cluster) -> None:
    primary = cluster.primary()
    r1 = cluster.replica(primary, name="r1", replica_id="r1")
    r2 = cluster.replica(primary, name="r2", replica_id="r2")
    with primary.client() as c:
        for i in range(20):
            resp = c.write_full([(Op.PUT, f"sync-{i}".encode(), b"v" * 50)],
                                SemiSync(wait_for=2, durable=True, timeout_s=20))
            assert sorted(resp.acked_by) == ["r1", "r2"] and not resp.degraded
    last = resp.last_sequence
    # the primary goes away, then both replicas die at once: nothing can re-send anything
    primary.kill()
    r1.kill()
    r2.kill()
    for r in (r1, r2):
        r.start()
        st = r.status()
        assert st["last_applied"] >= last, st
        with r.client() as rc:
            assert all(rc.get(f"sync-{i}".encode()) == b"v" * 50 for i in range(20))


def test_timeout_raises_naming_who_acked(cluster) -> None:
    primary = cluster.primary()
    cluster.replica(primary, name="r1", replica_id="r1")
    with primary.client() as c:
        with pytest.raises(grpc.RpcError) as err:
            c.write_full([(Op.PUT, b"k", b"v")], SemiSync(wait_for=2, timeout_s=1.0))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        details = err.value.details()
        assert "durable on the primary" in details and "only 1 of 2" in details
        assert "r1" in details
        assert c.get(b"k") == b"v"  # the write itself happened


def test_timeout_degrades_when_asked(cluster) -> None:
    primary = cluster.primary()
    cluster.replica(primary, name="r1", replica_id="r1")
    with primary.client() as c:
        resp = c.write_full([(Op.PUT, b"k", b"v")],
                            SemiSync(wait_for=2, timeout_s=0.5, degrade=True))
        assert resp.degraded and list(resp.acked_by) == ["r1"]
        assert c.status()["semisync_degraded"] == 1
    assert "semi-sync degraded" in primary.log_file.read_text()


def test_received_level_and_async_default(cluster) -> None:
    primary = cluster.primary()
    cluster.replica(primary, name="r1", replica_id="r1")
    with primary.client() as c:
        resp = c.write_full([(Op.PUT, b"a", b"1")], SemiSync(wait_for=1, durable=False,
                                                              timeout_s=20))
        assert list(resp.acked_by) == ["r1"] and not resp.degraded
        resp = c.write_full([(Op.PUT, b"b", b"2")])  # asynchronous: no waiting, no acks named
        assert list(resp.acked_by) == [] and resp.last_sequence == 2


def test_stream_writer_many_concurrent_writers(cluster) -> None:
    import threading

    primary = cluster.primary()
    replica = cluster.replica(primary)
    with primary.client() as c:
        sw = c.stream_writer()
        seqs: list[tuple[int, int]] = []
        lock = threading.Lock()

        def writer(i: int) -> None:
            for j in range(50):
                got = sw.write([(Op.PUT, f"w{i}-{j}".encode(), b"x")])
                with lock:
                    seqs.append(got)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        sw.close()
        # every write got its own sequence
        assert sorted(s for s, _ in seqs) == list(range(1, 801))
        fut = c.stream_writer()
        with pytest.raises(Exception, match="INVALID_ARGUMENT"):
            fut.write([(Op.PUT, b"", b"empty key")])
        fut.close()
    from helpers import assert_same_digest, wait_caught_up

    wait_caught_up(primary, replica)
    assert assert_same_digest(primary, replica)["keys"] == 800


def test_cli_semisync_flags(cluster) -> None:
    import json

    from helpers import cli

    primary = cluster.primary()
    cluster.replica(primary, name="r1", replica_id="r1")
    res = cli("put", "--target", primary.address, "--wait-for", "1", "--wait-timeout", "20",
              "k", "v")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["acked_by"] == ["r1"] and out["degraded"] is False
    res = cli("put", "--target", primary.address, "--wait-for", "2", "--wait-timeout", "0.5",
              "--on-timeout", "degrade", "k2", "v")
    assert json.loads(res.stdout)["degraded"] is True
    res = cli("put", "--target", primary.address, "--wait-for", "2", "--wait-timeout", "0.5",
              "k3", "v")
    assert res.returncode == 3 and "DEADLINE_EXCEEDED" in res.stderr
