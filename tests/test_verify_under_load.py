"""`kevo-repl verify` under continuous writes: the primary takes its digest at its WAL head P
and holds what it sends the replica at P (Digest hold_replica); the replica reaches P, cannot
pass it, and holds its apply there while it reads its own digest (Digest at_sequence)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import pytest
from helpers import cli, load, tamper_with_engine, wait_caught_up
from kevo_repl_tools.launcher import NodeProcess, wait_until

from kevo_repl.protocol.codec import Op
from kevo_repl.protocol.proto import node_pb2 as npb

_calls = ThreadPoolExecutor(2)

#: every writer stops after this many batches or seconds, whichever comes first
MAX_WRITER_BATCHES = 20_000
MAX_WRITER_S = 90.0
WRITER_BATCH = 25
#: concurrent writing threads: the primary commits their batches together, so the replica
#: receives responses of several write batches and joins them: its batches cross P
WRITER_THREADS = 4
#: pause between a thread's batches: a steady stream that outlasts several verify runs
WRITER_PAUSE_S = 0.01


class Writer:
    """Writes batches of WRITER_BATCH puts to the primary without pause, from
    WRITER_THREADS threads."""

    def __init__(self, target: NodeProcess, prefix: bytes = b"w") -> None:
        self.client = target.client(30.0)
        self.prefix = prefix
        self.batches = 0
        self.last_sequence = 0
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True)
                         for t in range(WRITER_THREADS)]

    def _run(self, thread: int) -> None:
        deadline = time.monotonic() + MAX_WRITER_S
        n = 0
        try:
            while (not self._stop.is_set() and self.batches < MAX_WRITER_BATCHES
                   and time.monotonic() < deadline):
                base = n * WRITER_BATCH
                key = self.prefix + b"%d-" % thread
                muts = [(Op.PUT, key + b"%09d" % (base + i), b"v%d" % (base + i))
                        for i in range(WRITER_BATCH)]
                last = self.client.write(muts)[1]
                n += 1
                time.sleep(WRITER_PAUSE_S)
                with self._lock:
                    self.batches += 1
                    self.last_sequence = max(self.last_sequence, last)
        except BaseException as exc:  # reported when writing() ends
            self.error = exc

    def running(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    @contextmanager
    def writing(self) -> Iterator[Writer]:
        for t in self._threads:
            t.start()
        wait_until(lambda: self.batches >= 20, 30, "the writers to get going")
        try:
            yield self
        finally:
            self._stop.set()
            for t in self._threads:
                t.join(30)
            self.client.close()
        assert self.error is None, self.error


def _verify_json(primary: NodeProcess, replica: NodeProcess) -> tuple[int, dict[str, object]]:
    res = cli("verify", "--primary", primary.address, "--replica", replica.address, "--json",
              "--timeout", "30", timeout=60)
    assert res.stdout, res.stderr
    return res.returncode, json.loads(res.stdout)


def _exactly_once(replica: NodeProcess) -> None:
    st = replica.status()
    assert st["applied_entries"] == st["last_applied"], st


#: every engine: the primary's hold makes the replica's position P certain whatever its speed
ALL_APPLIERS = ["lmdb", "leveldb", "sqlite"]


@pytest.mark.parametrize("applier", ALL_APPLIERS)
def test_verify_while_writing(cluster, applier: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 2_000)
    wait_caught_up(primary, replica)
    with Writer(primary).writing() as w:
        for _ in range(3):
            before = w.batches
            code, out = _verify_json(primary, replica)
            assert code == 0, out
            assert out["equal"] and out["ranges"] == []
            assert out["primary_digest"] == out["replica_digest"]
            # deterministic: the replica was held at P, so the first digest asked was served
            assert out["retries"] == 0, out
            # compared in the middle of the writes: the primary was written before and after
            assert out["sequence"] > 2_000
            wait_until(lambda b=before: w.batches > b + 5, 30, "more writes after verify")
            assert w.running(), "the writer stopped: not a verify under continuous writes"
            assert w.last_sequence > out["sequence"]
    wait_caught_up(primary, replica)
    _exactly_once(replica)
    assert replica.digest() == primary.digest()


@pytest.mark.parametrize("applier", ALL_APPLIERS)
def test_verify_finds_tampering_while_writing(cluster, applier: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 3_000)
    wait_caught_up(primary, replica)
    replica.terminate()
    tamper_with_engine(replica.data_dir / "store", applier, b"key0000000001234", b"tampered")
    replica.start()
    wait_caught_up(primary, replica)
    with Writer(primary).writing() as w:
        code, out = _verify_json(primary, replica)
        assert w.running()
    assert code == 1, out
    assert not out["equal"] and out["sequence"] > 3_000
    assert out["retries"] == 0, out
    ranges = out["ranges"]
    assert isinstance(ranges, list) and len(ranges) == 1, ranges
    (changed,) = ranges
    assert changed["first_key"] <= "key0000000001234" <= changed["last_key"]
    assert changed["primary_keys"] == changed["replica_keys"] <= 16


def _digest_call(node: NodeProcess, at: int, timeout: float) -> Future[npb.DigestResponse]:
    """Digest(at_sequence=at) on `node`, in a thread."""

    def call() -> npb.DigestResponse:
        with node.client(timeout) as c:
            return c.digest_buckets(b"", at_sequence=at)

    return _calls.submit(call)


@pytest.mark.parametrize("applier", ["lmdb"])
def test_digest_at_refusals(cluster, applier: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 1_000)
    wait_caught_up(primary, replica)
    with replica.client(10.0) as c:
        d = c.digest_buckets(b"", at_sequence=1_000)
        assert d.sequence == 1_000 and d.digest == primary.digest()["digest"]
        with pytest.raises(grpc.RpcError) as past:
            c.digest_buckets(b"", at_sequence=999)
        assert past.value.code() is grpc.StatusCode.OUT_OF_RANGE
    with primary.client(10.0) as c, pytest.raises(grpc.RpcError) as on_primary:
        c.digest_buckets(b"", at_sequence=1_000)
    assert on_primary.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    # a sequence nobody writes: waits for the deadline, and meanwhile is the only barrier
    waiting = _digest_call(replica, 5_000, 3.0)
    time.sleep(0.5)
    with replica.client(10.0) as c, pytest.raises(grpc.RpcError) as busy:
        c.digest_buckets(b"", at_sequence=4_000)
    assert busy.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as late:
        waiting.result(10)
    assert late.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "not yet 5000" in (late.value.details() or "")
    # the barrier is gone with the call: writes still replicate and the next one is served
    load(primary.address, 500, start=1_000)
    wait_caught_up(primary, replica)
    with replica.client(10.0) as c:
        assert c.digest_buckets(b"", at_sequence=1_500).sequence == 1_500
    _exactly_once(replica)


def test_sigkill_while_holding_the_barrier(cluster, applier: str) -> None:
    """Kill the replica while its apply is held at the barrier (the digest still running):
    it restarts from its durable position, loses nothing and applies nothing twice."""
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 60_000, batch=5_000)  # a store whose digest takes a while
    wait_caught_up(primary, replica)
    killed_while_held = False
    with Writer(primary).writing() as w:
        for _attempt in range(5):
            at = w.last_sequence + 80 * WRITER_BATCH  # a write batch's end, soon
            call = _digest_call(replica, at, 30.0)
            wait_until(lambda a=at, c=call: replica.status()["last_applied"] >= a or c.done(),
                       30, "the replica to reach the barrier", interval=0.002)
            if not call.done() and replica.status()["last_applied"] == at:
                replica.kill()
                try:
                    call.result(10)
                except grpc.RpcError as exc:  # the digest never answered: killed while held
                    killed_while_held = exc.code() is grpc.StatusCode.UNAVAILABLE
                if killed_while_held:
                    break
                replica.start()
            else:
                with contextlib.suppress(grpc.RpcError):
                    call.result(30)  # not caught at the barrier; try again
        assert killed_while_held, "never caught the replica holding the barrier"
        replica.start()
        assert replica.status()["last_applied"] >= at
    wait_caught_up(primary, replica)
    _exactly_once(replica)
    assert replica.digest() == primary.digest()
    code, out = _verify_json(primary, replica)
    assert code == 0 and out["equal"], out
