"""Idempotent writes (hardening item 4): a write carrying an idempotency key is applied once,
however often it is retried while the primary remembers the key, also across a SIGKILL.

Real primaries (child processes, or in-process gRPC where the WAL's append is held to keep a
write in flight) on 127.0.0.1, real LMDB stores and WALs; lost replies through the loopback
fault proxy."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from conftest import Cluster
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from helpers import assert_same_digest, cli, wait_caught_up
from kevo_repl_tools.launcher import NodeProcess, wait_until
from proxy import FaultProxy

from kevo_repl.client.client import Client
from kevo_repl.config import Config
from kevo_repl.node.embedded import open_primary
from kevo_repl.node.server import Node
from kevo_repl.primary.idempotency import (
    IdempotencyWindow,
    KeyReused,
    content_digest,
    payloads_digest,
)
from kevo_repl.protocol import blocks
from kevo_repl.protocol.codec import Entry, Op, encode
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.records import (
    Record,
    encode_block_body,
    encode_body,
    entries_body,
    keyed_payloads,
    trim_body,
)
from kevo_repl.storage.wal import WAL


@pytest.fixture
def applier() -> str:
    """One engine is enough here: idempotency lives in the primary, above the store."""
    return "lmdb"


PUT = int(Op.PUT)


def _primary_config(tmp_path: Path, window: int) -> Path:
    path = tmp_path / "primary.toml"
    path.write_text(f"[primary]\nidempotency_window = {window}\n")
    return path


def _applied(node: NodeProcess) -> tuple[int, int]:
    st = node.status()
    return st["last_applied"], st["applied_entries"]


def test_retry_after_a_lost_reply_returns_the_original_sequence(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    proxy = FaultProxy(primary.address)
    target = proxy.start()
    try:
        with Client(target, timeout=2.0) as c:
            assert c.write([(PUT, b"before", b"0")]) == (1, 1)
            proxy.drop_replies()
            with pytest.raises(grpc.RpcError) as info:
                c.write_full([(PUT, b"k", b"v")], idempotency_key=b"order-17")
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # the primary did write it: only the reply was lost
        wait_until(lambda: _applied(primary)[0] == 2, 10.0, "the write to be applied")
        proxy.cut()
        proxy.resume()
        with Client(target, timeout=5.0) as c:
            resp = c.write_full([(PUT, b"k", b"v")], idempotency_key=b"order-17")
        assert (resp.first_sequence, resp.last_sequence, resp.duplicate) == (2, 2, True)
        assert _applied(primary) == (2, 2)  # one apply, not two
        wait_caught_up(primary, replica)
        assert _applied(replica) == (2, 2)
        assert assert_same_digest(primary, replica)["keys"] == 2
        with Client(replica.address) as c:
            assert c.get(b"k") == b"v"
    finally:
        proxy.close()


def test_retry_after_sigkill_and_restart_returns_the_original_sequence(
    cluster: Cluster,
) -> None:
    primary = cluster.primary()
    with primary.client() as c:
        first = c.write_full([(PUT, b"a", b"1"), (PUT, b"b", b"2")], idempotency_key=b"job-1")
        assert (first.first_sequence, first.last_sequence, first.duplicate) == (1, 2, False)
        for i in range(20):  # unkeyed writes after it, within the window
            c.write([(PUT, b"x%d" % i, b"y")])
    primary.kill()  # SIGKILL: the window is rebuilt from the WAL alone
    primary.start()
    with primary.client() as c:
        again = c.write_full([(PUT, b"a", b"1"), (PUT, b"b", b"2")], idempotency_key=b"job-1")
        assert (again.first_sequence, again.last_sequence, again.duplicate) == (1, 2, True)
        # the key is known after the restart: other content under it is refused
        with pytest.raises(grpc.RpcError) as info:
            c.write_full([(PUT, b"a", b"other")], idempotency_key=b"job-1")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert c.get(b"a") == b"1"
    assert _applied(primary) == (22, 22)
    # the CLI, likewise: the second put prints the first one's sequence
    runs = [cli("put", "--target", primary.address, "--request-id", "cli-1", "k", "v")
            for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[1].stderr
    assert json.loads(runs[0].stdout) == {"sequence": 23}
    assert json.loads(runs[1].stdout) == {"sequence": 23, "duplicate": True}
    assert _applied(primary) == (23, 23)


def test_a_key_reused_with_other_content_or_a_bad_key_is_refused(cluster: Cluster) -> None:
    primary = cluster.primary()
    with primary.client() as c:
        c.write_full([(PUT, b"k", b"v1")], idempotency_key=b"r")
        for other in ([(PUT, b"k", b"v2")], [(PUT, b"k2", b"v1")],
                      [(int(Op.DELETE), b"k", b"")], [(PUT, b"k", b"v1"), (PUT, b"k", b"v1")]):
            with pytest.raises(grpc.RpcError) as info:
                c.write_full(other, idempotency_key=b"r")
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "mutations differ" in (info.value.details() or "")
        for bad in (b"", b"x" * 65):
            with pytest.raises(grpc.RpcError) as info:
                c.write_full([(PUT, b"k", b"v3")], idempotency_key=bad)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for op in (1000, 256, 0):  # an op the digest could not take is refused, not crashed on
            with pytest.raises(grpc.RpcError) as info:
                c.write_full([(op, b"k", b"v1")], idempotency_key=b"r")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert c.get(b"k") == b"v1"
        longest = c.write_full([(PUT, b"k", b"v4")], idempotency_key=b"x" * 64)
        assert (longest.first_sequence, longest.duplicate) == (2, False)
    assert _applied(primary) == (2, 2)


def test_concurrent_duplicates_are_applied_once(cluster: Cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    mutations = [(PUT, b"k%d" % i, b"v" * 100) for i in range(50)]
    clients = [primary.client() for _ in range(8)]
    start = threading.Barrier(len(clients) * 4)

    def send(n: int) -> tuple[int, int, bool]:
        c = clients[n % len(clients)]
        start.wait(10)
        if n % 2:  # half over WriteStream, half over Write
            w = c.stream_writer()
            try:
                resp = w.submit(mutations, idempotency_key=b"same").result(30)
            finally:
                w.close()
        else:
            resp = c.write_full(mutations, idempotency_key=b"same")
        assert not resp.error_code, resp.error
        return resp.first_sequence, resp.last_sequence, resp.duplicate

    try:
        with ThreadPoolExecutor(len(clients) * 4) as pool:
            answers = list(pool.map(send, range(len(clients) * 4)))
    finally:
        for c in clients:
            c.close()
    assert {(f, last) for f, last, _ in answers} == {(1, 50)}
    assert sum(not dup for _, _, dup in answers) == 1
    assert _applied(primary) == (50, 50)
    wait_caught_up(primary, replica)
    assert _applied(replica) == (50, 50)
    assert_same_digest(primary, replica)


def test_the_window_is_bounded_and_rebuilt_alike(cluster: Cluster, tmp_path: Path) -> None:
    window = 8
    primary = cluster.primary(config=_primary_config(tmp_path, window))
    with primary.client() as c:
        # 3 * window keyed writes: only the last `window` keys stay
        for i in range(3 * window):
            c.write_full([(PUT, b"k%d" % i, b"v")], idempotency_key=b"id-%d" % i)
    for restarted in (False, True):
        if restarted:
            primary.kill()
            primary.start()
        with primary.client() as c:
            head = _applied(primary)[0]
            # the newest `window` keys are remembered (retries answered, nothing written)...
            for i in range(2 * window, 3 * window):
                resp = c.write_full([(PUT, b"k%d" % i, b"v")], idempotency_key=b"id-%d" % i)
                assert (resp.first_sequence, resp.duplicate) == (i + 1, True)
            assert _applied(primary)[0] == head
    with primary.client() as c:
        # ...the oldest one is forgotten: it is a new write now
        resp = c.write_full([(PUT, b"k0", b"v")], idempotency_key=b"id-0")
        assert (resp.first_sequence, resp.duplicate) == (3 * window + 1, False)
        # and unkeyed writes count too: `window` of them push every key out
        for i in range(window):
            c.write([(PUT, b"plain%d" % i, b"v")])
        resp = c.write_full([(PUT, b"k0", b"v")], idempotency_key=b"id-0")
        assert resp.duplicate is False


def test_retention_keeps_the_wal_the_window_needs(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "primary.toml"
    config.write_text("[primary]\nidempotency_window = 200\n[wal]\nsegment_bytes = 4096\n")
    primary = cluster.primary(config=config)
    replica = cluster.replica(primary)
    with primary.client() as c:
        assert c.write_full([(PUT, b"k", b"v")], idempotency_key=b"keep").first_sequence == 1
        for i in range(100):  # many segments, every one acknowledged by the replica
            c.write([(PUT, b"plain%d" % i, b"v" * 200)])
    wait_caught_up(primary, replica)
    st = primary.status()
    assert st["wal_segments"] > 3
    # the slot alone would let every sealed segment go; the window's key holds the first
    assert st["first_sequence"] == 1
    assert st["oldest_segment_held_by"] == "idempotency window"
    primary.kill()
    primary.start()
    with primary.client() as c:
        resp = c.write_full([(PUT, b"k", b"v")], idempotency_key=b"keep")
        assert (resp.first_sequence, resp.duplicate) == (1, True)
        for i in range(200):  # the key leaves the window: its WAL may go
            c.write([(PUT, b"more%d" % i, b"v" * 200)])
    wait_until(lambda: primary.status()["first_sequence"] > 1, 30.0, "the WAL to be pruned")
    assert primary.status()["oldest_segment_held_by"] != "idempotency window"


def test_write_stream_with_idempotency_keys(cluster: Cluster) -> None:
    primary = cluster.primary()
    with primary.client() as c:
        w = c.stream_writer()
        try:
            futures = [w.submit([(PUT, b"s%d" % i, b"v")], idempotency_key=b"s-%d" % i)
                       for i in range(100)]
            firsts = [f.result(30) for f in futures]
            assert sorted(r.first_sequence for r in firsts) == list(range(1, 101))
            assert not any(r.duplicate for r in firsts)
            # retries on the same stream, mixed with new writes and a reused key
            retries = [w.submit([(PUT, b"s%d" % i, b"v")], idempotency_key=b"s-%d" % i)
                       for i in range(0, 100, 10)]
            fresh = w.submit([(PUT, b"new", b"v")], idempotency_key=b"new-1")
            reused = w.submit([(PUT, b"s5", b"changed")], idempotency_key=b"s-5")
            original = {f"s-{i}": r.first_sequence for i, r in zip(range(100), firsts,
                                                                     strict=True)}
            for i, r in zip(range(0, 100, 10), (f.result(30) for f in retries), strict=True):
                assert (r.first_sequence, r.duplicate) == (original[f"s-{i}"], True)
            new = fresh.result(30)
            assert (new.first_sequence, new.duplicate) == (101, False)
            bad = reused.result(30)
            assert bad.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        finally:
            w.close()
        # a retry over a new stream, after the first one is gone
        w = c.stream_writer()
        try:
            r = w.submit([(PUT, b"s7", b"v")], idempotency_key=b"s-7").result(30)
            assert (r.first_sequence, r.duplicate) == (original["s-7"], True)
            bad_key = w.submit([(PUT, b"t", b"v")], idempotency_key=b"").result(30)
            assert bad_key.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        finally:
            w.close()
    assert _applied(primary) == (101, 101)


# -- in flight: the WAL's append is held, so the original is still being written -----------


def _config(tmp_path: Path) -> Config:
    cfg = Config()
    cfg.node.role = "primary"
    cfg.node.data_dir = str(tmp_path / "primary")
    cfg.node.listen = "127.0.0.1:0"
    return cfg


async def test_a_retry_in_flight_waits_for_the_original_outcome(tmp_path: Path) -> None:
    node = Node(_config(tmp_path))
    await node.start()
    try:
        primary = node.primary
        assert primary is not None
        release = threading.Event()
        real = primary.wal.append

        def held_append(records: list[Record]) -> None:
            assert release.wait(30), "the test never released the append"
            real(records)

        primary.wal.append = held_append  # type: ignore[method-assignment]
        muts = [(PUT, b"k", b"v")]
        original = asyncio.create_task(primary.write_once(muts, b"r"))
        await asyncio.sleep(0.05)
        retry = asyncio.create_task(primary.write_once(muts, b"r"))
        await asyncio.sleep(0.2)
        assert not original.done() and not retry.done()  # the retry waits, it does not answer
        assert primary.head == 0
        release.set()
        assert await asyncio.wait_for(original, 10) == (1, 1, False)
        assert await asyncio.wait_for(retry, 10) == (1, 1, True)
        assert primary.store.position().applied_entries == 1
    finally:
        release.set()
        await node.stop()


async def test_a_retry_in_flight_gets_the_failure_of_its_original(tmp_path: Path) -> None:
    from kevo_repl.primary.primary import PrimaryUnavailable

    node = Node(_config(tmp_path))
    await node.start()
    try:
        primary = node.primary
        assert primary is not None
        release = threading.Event()

        def failing_append(records: list[Record]) -> None:
            release.wait(30)
            raise OSError(5, "Input/output error")

        primary.wal.append = failing_append  # type: ignore[method-assignment]
        muts = [(PUT, b"k", b"v")]
        original = asyncio.create_task(primary.write_once(muts, b"r"))
        await asyncio.sleep(0.05)
        retry = asyncio.create_task(primary.write_once(muts, b"r"))
        await asyncio.sleep(0.05)
        release.set()
        for task in (original, retry):
            with pytest.raises(PrimaryUnavailable):
                await asyncio.wait_for(task, 10)
    finally:
        release.set()
        await node.stop()


# -- the record and the window, as parts ------------------------------------------------------


def test_records_without_a_key_are_unchanged_and_v1_decoding_ignores_the_key() -> None:
    entries = [Entry(1, PUT, b"k", b"v"), Entry(2, int(Op.DELETE), b"d", b"")]
    plain, chain = encode_body(entries, 1)
    keyed, chain_keyed = encode_body(entries, 1, b"req-1")
    assert chain == chain_keyed
    assert keyed.endswith(plain) and len(keyed) == len(plain) + 2 + 1 + 5
    assert keyed_payloads(plain) is None
    assert keyed_payloads(keyed) == (b"req-1", [encode(e.seq, e.op, e.key, e.value)
                                                for e in entries])
    # KevoDB's WALStreamResponse (fields 1-3 only) parses a keyed body exactly as a plain one
    kevodb = _kevodb_response_class()
    a, b = kevodb.FromString(keyed), kevodb.FromString(plain)
    for msg in (a, b):
        msg.DiscardUnknownFields()  # our other additions (the hash chain) are unknown too
    assert a.SerializeToString() == b.SerializeToString()
    assert [e.sequence_number for e in a.entries] == [1, 2]


def test_a_block_record_keeps_its_key_last_and_its_block_tag_first() -> None:
    entries = [Entry(5, PUT, b"k", b"v"), Entry(6, int(Op.DELETE), b"d", b""),
               Entry(7, PUT, b"m", b"w")]
    plain, chain = encode_block_body(entries, 1)
    keyed, chain_keyed = encode_block_body(entries, 1, b"req-2")
    assert chain == chain_keyed
    assert keyed.startswith(plain) and blocks.is_block_body(keyed)
    assert keyed_payloads(plain) is None
    assert keyed_payloads(keyed) == (b"req-2", [encode(e.seq, e.op, e.key, e.value)
                                                for e in entries])
    # what peers are sent carries no key: the converted and the trimmed forms
    assert entries_body(keyed) == entries_body(plain)
    assert trim_body(keyed, 6) == trim_body(plain, 6)
    # the key is not part of a block: the entries a replica takes from it are the same
    to_entries = blocks.to_entries
    assert list(to_entries(_only_block(keyed))) == list(to_entries(_only_block(plain)))


def _only_block(body: bytes) -> rpb.ColumnBlock:
    (block,) = rpb.WALStreamResponse.FromString(body).blocks
    return block


def _kevodb_response_class() -> type:
    """WALStreamResponse and WALEntry as KevoDB declares them: no field of ours."""
    fdp = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="kevodb_v1.proto", package="kevodb_v1",
                                           syntax="proto3")
    entry = f.message_type.add(name="WALEntry")
    for name, number, kind in (("sequence_number", 1, fdp.TYPE_UINT64),
                               ("payload", 2, fdp.TYPE_BYTES),
                               ("fragment_type", 3, fdp.TYPE_INT32),
                               ("checksum", 4, fdp.TYPE_UINT32)):
        entry.field.add(name=name, number=number, label=fdp.LABEL_OPTIONAL, type=kind)
    resp = f.message_type.add(name="WALStreamResponse")
    resp.field.add(name="entries", number=1, label=fdp.LABEL_REPEATED, type=fdp.TYPE_MESSAGE,
                   type_name=".kevodb_v1.WALEntry")
    resp.field.add(name="compressed", number=2, label=fdp.LABEL_OPTIONAL, type=fdp.TYPE_BOOL)
    resp.field.add(name="codec", number=3, label=fdp.LABEL_OPTIONAL, type=fdp.TYPE_INT32)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    cls: type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("kevodb_v1.WALStreamResponse")
    )
    return cls


def test_the_content_digest_is_the_same_from_mutations_and_from_wal_payloads() -> None:
    writes = [
        [(PUT, b"k", b"v")],
        [(int(Op.DELETE), b"k", b"ignored")],  # a Delete's value is never written
        [(int(Op.MERGE), b"k", b"v"), (PUT, b"", b""), (PUT, b"k" * 300, b"v" * 70_000)],
    ]
    digests = set()
    for muts in writes:
        payloads = [encode(7 + i, op, k, b"" if op == Op.DELETE else v)
                    for i, (op, k, v) in enumerate(muts)]
        assert content_digest(muts) == payloads_digest(payloads)
        digests.add(content_digest(muts))
    assert len(digests) == len(writes)
    # boundaries count: the same bytes split otherwise are other content
    assert content_digest([(PUT, b"ab", b"c")]) != content_digest([(PUT, b"a", b"bc")])
    assert content_digest([(PUT, b"k", b"")]) != content_digest([(int(Op.DELETE), b"k", b"")])


def test_the_window_holds_at_most_its_size_under_many_distinct_keys() -> None:
    window = IdempotencyWindow(1000)
    digest = content_digest([(PUT, b"k", b"v")])
    for i in range(50_000):  # an attack: every write with a new key
        window.count_write(i + 1, i + 1, b"%d" % i, digest)
        assert len(window) <= 1000
    assert len(window) == 1000
    assert b"49000" in window and b"48999" not in window
    assert window.oldest_sequence == 49001  # what WAL retention keeps from
    assert window.lookup(b"49999", digest) is not None


def test_the_rebuild_reads_only_the_last_records(tmp_path: Path) -> None:
    with WAL(tmp_path / "wal", segment_bytes=4096) as wal:
        chain = 1
        for seq in range(1, 201):
            body, chain = encode_body([Entry(seq, PUT, b"k", b"v")], chain, b"id-%d" % seq)
            wal.append([Record(seq, 1, body)])
        assert len(wal.segments()) > 3  # the tail spans segments
        assert wal.start_of_last_records(10) == 191
        assert wal.start_of_last_records(1000) == 1
        window = IdempotencyWindow(10)
        start = wal.start_of_last_records(window.size)
        assert start is not None
        window.rebuild(wal.iter_records(start))
    assert len(window) == 10
    assert b"id-191" in window and b"id-190" not in window


def test_the_embedded_primary_takes_an_idempotency_key(tmp_path: Path) -> None:
    with open_primary(tmp_path / "embedded", applier="lmdb") as p:
        assert p.write([(PUT, b"k", b"v")], idempotency_key=b"e-1") == (1, 1)
        assert p.write([(PUT, b"k", b"v")], idempotency_key=b"e-1") == (1, 1)
        assert p.put(b"other", b"v") == 2
        with pytest.raises(KeyReused):
            p.write([(PUT, b"k", b"changed")], idempotency_key=b"e-1")
        assert p.primary.store.position().applied_entries == 2
