"""Interoperability with KevoDB held to its real behaviour (issue 15): our replica against a
scripted KevoDB primary, and a scripted KevoDB replica against our primary process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from helpers import cli, load
from kevo_repl_tools.launcher import wait_until
from kevodb_peers import SVC, KevoDBPrimary, kevodb_replica_batch

from kevo_repl.config import Config
from kevo_repl.plugin.manager import build_registry, get_plugin_manager
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.transport import channel_options
from kevo_repl.replica.replica import Replica
from kevo_repl.storage.store import digest

ADVERTISED = "127.0.0.1:50099"


def _replica(tmp_path: Path, primary: str, codec: str, **replica_opts: float) -> Replica:
    cfg = Config()
    cfg.node.role = "replica"
    cfg.node.data_dir = str(tmp_path / "replica")
    cfg.node.advertise = ADVERTISED
    cfg.replica.primary = primary
    cfg.replica.backoff_initial_s = 0.02
    cfg.compressor.name = codec
    cfg.stream.stall_after_s = 0.3
    cfg.stream.heartbeat_s = 0.1
    for key, value in replica_opts.items():
        setattr(cfg.replica, key, value)
    pm = get_plugin_manager()
    return Replica(cfg, build_registry(pm), pm)


async def _until(done: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def _stop(replica: Replica, task: asyncio.Task[None]) -> None:
    await replica.stop()
    await asyncio.wait_for(task, 10)
    replica.close()


@pytest.mark.parametrize("codec", ["none", "snappy", "zstd"])
async def test_catch_up_and_live_writes_from_a_kevodb_primary(tmp_path: Path, codec: str) -> None:
    """Zero nacks, equal digests, each entry applied once, no false stall, status says what
    a KevoDB primary leaves off."""
    primary = KevoDBPrimary()
    await primary.start()
    await primary.write(3_000, batch=100)  # to catch up on
    replica = _replica(tmp_path, primary.address, codec)
    task = asyncio.create_task(replica.run())
    try:
        await _until(lambda: replica.position.sequence == 3_000, 30, "catch-up")
        primary.writing = True  # from here a nack would deadlock the real server
        await primary.write(2_000, batch=20, pause_s=0.01)
        await _until(lambda: replica.position.sequence == 5_000, 30, "live writes")
        primary.writing = False
        assert primary.nacks == [], (primary.nacks, primary.acks[:20])
        assert digest(replica.store).digest == primary.digest()
        assert replica.position.applied_entries == 5_000  # each entry exactly once
        # every request carried what the KevoDB primary requires
        assert primary.refused == []
        assert {r.listener_address for r in primary.requests} == {ADVERTISED}
        # after the first response it is asked for codec none
        assert not primary.requests[-1].compression_supported
        assert primary.resends > 0  # its re-send timer repaired the skipped entries
        # idle, silent (no heartbeats), caught up: not stalled
        await asyncio.sleep(0.6)
        st = replica.status()
        assert st["stalled"] is False, st
        assert st["primary_protocol"] == 1
        assert st["divergence_detection"] is False
        assert {"heartbeats", "hash chain", "history id", "checksums"} <= set(
            st["primary_lacks"])
        if codec == "zstd":  # its first response came flagged zstd, raw
            assert st["mislabelled_payloads"] > 0
        else:
            assert st["mislabelled_payloads"] == 0
    finally:
        await _stop(replica, task)
        await primary.stop()


async def test_replica_follows_a_restarted_kevodb_primary(tmp_path: Path) -> None:
    primary = KevoDBPrimary()
    await primary.start()
    await primary.write(1_000)
    replica = _replica(tmp_path, primary.address, "none")
    task = asyncio.create_task(replica.run())
    try:
        await _until(lambda: replica.position.sequence == 1_000, 30, "catch-up")
        port, log, nacks = primary.port, primary.log, primary.nacks
        await primary.stop()
        await asyncio.sleep(0.3)  # the replica notices and backs off
        primary = KevoDBPrimary(port, log)  # same address, same log
        await primary.start()
        primary.writing = True
        await primary.write(1_000, batch=20, pause_s=0.01)
        await _until(lambda: replica.position.sequence == 2_000, 30, "the restarted primary")
        primary.writing = False
        assert nacks == [] and primary.nacks == []
        assert digest(replica.store).digest == primary.digest()
        assert replica.position.applied_entries == 2_000
        assert replica.stats.reconnects >= 1
    finally:
        await _stop(replica, task)
        await primary.stop()


async def test_gap_a_v1_primary_never_fills_is_nacked_after_the_wait_and_rate_limited(
    tmp_path: Path,
) -> None:
    """A KevoDB primary whose re-send timer does not repair a gap: the replica nacks, but only
    after [replica] v1_resend_wait_s, and not again within it."""
    primary = KevoDBPrimary(resend_interval_s=3_600.0)  # its timer never fires here
    await primary.start()
    await primary.write(500)
    wait_s = 0.5
    replica = _replica(tmp_path, primary.address, "none", v1_resend_wait_s=wait_s)
    task = asyncio.create_task(replica.run())
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await _until(lambda: bool(primary.nacks), 10, "a nack")
        waited = loop.time() - started
        assert waited >= wait_s, f"nacked after {waited:.3f}s, before the re-send window"
        assert primary.nacks == [1]  # it skipped sequence 1 when the stream started
        await _until(lambda: replica.position.sequence == 500, 10, "the re-send")
        await asyncio.sleep(2 * wait_s)
        assert primary.nacks == [1]  # one nack, no storm
        assert digest(replica.store).digest == primary.digest()
    finally:
        await _stop(replica, task)
        await primary.stop()


async def test_scripted_kevodb_primary_refuses_a_stream_without_listener_address() -> None:
    primary = KevoDBPrimary()
    await primary.start()
    try:
        async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
            stream = ch.unary_stream(f"/{SVC}/StreamWAL",
                                     request_serializer=rpb.WALStreamRequest.SerializeToString,
                                     response_deserializer=rpb.WALStreamResponse.FromString)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stream(rpb.WALStreamRequest(start_sequence=1, protocol_version=2,
                                                           replica_id="r1")):
                    pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "listener_address is required" in (err.value.details() or "")
    finally:
        await primary.stop()


async def test_scripted_kevodb_primary_deadlocks_on_a_nack_during_writes(tmp_path: Path) -> None:
    """The harness itself: a nack while writes flow is caught (the real server froze)."""
    primary = KevoDBPrimary()
    await primary.start()
    try:
        await primary.write(10)
        async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
            stream = ch.unary_stream(f"/{SVC}/StreamWAL",
                                     request_serializer=rpb.WALStreamRequest.SerializeToString,
                                     response_deserializer=rpb.WALStreamResponse.FromString)
            nack = ch.unary_unary(f"/{SVC}/NegativeAcknowledge",
                                  request_serializer=rpb.Nack.SerializeToString,
                                  response_deserializer=rpb.NackResponse.FromString)
            call = stream(rpb.WALStreamRequest(start_sequence=1, listener_address=ADVERTISED))
            sid = dict(await call.initial_metadata())["session-id"]
            first = await call.read()
            # it skipped sequence 1 (acked starts at start_sequence); no chain, no checksum
            assert [e.sequence_number for e in first.entries] == list(range(2, 11))
            assert not first.HasField("chain") and not first.history_id
            assert all(e.checksum == 0 for e in first.entries)
            primary.writing = True
            await nack(rpb.Nack(missing_from_sequence=1), metadata=(("session-id", sid),))
            call.cancel()
        assert primary.nacks_during_writes == [1]
        with pytest.raises(AssertionError, match="deadlocked"):
            await primary.write(1)
    finally:
        await primary.stop()


@pytest.mark.parametrize("applier", ["lmdb"])
def test_kevodb_replica_has_a_stable_slot_on_our_primary(cluster, tmp_path: Path) -> None:
    """No replica id, no acks, a reconnect per batch: one slot keyed by its listener address,
    shown in status and `slots list` as never acking, through 10 reconnects."""
    conf = tmp_path / "p.toml"
    conf.write_text("[stream]\nmax_batch_bytes = 20000\n")
    primary = cluster.primary(config=conf)
    load(primary.address, 2_000, batch=100)
    received = 0
    slot_ids: list[list[str]] = []
    for _ in range(10):
        run = asyncio.run(kevodb_replica_batch(primary.address, received + 1, ADVERTISED))
        seqs = [e.seq for e in run.entries]
        assert seqs == list(range(received + 1, received + 1 + len(seqs)))
        received = seqs[-1]
        st = primary.status()
        slot_ids.append([r["replica_id"] for r in st["replicas"]])
    assert slot_ids == [[ADVERTISED]] * 10, slot_ids
    assert received < 2_000  # each stream took one batch
    st = primary.status()
    [slot] = st["replicas"]
    assert slot["never_acks"] is True
    # lag from what was sent; the slot holds WAL from what its requests imply it has
    assert slot["sent_sequence"] >= received
    assert slot["lag_entries"] == 2_000 - slot["sent_sequence"]
    res = cli("slots", "list", "--target", primary.address)
    assert res.returncode == 0, res.stderr
    [line] = [ln for ln in res.stdout.splitlines() if ln.startswith(ADVERTISED)]
    assert "never acks" in line
    res = cli("slots", "list", "--target", primary.address, "--json")
    assert json.loads(res.stdout)[0]["replica_id"] == ADVERTISED


@pytest.mark.parametrize("applier", ["lmdb"])
def test_kevodb_replica_slot_holds_wal_within_the_caps(cluster, tmp_path: Path) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text("[wal]\nsegment_bytes = 65536\n[retention]\nmax_retained_bytes = 1048576\n"
                    "[stream]\nmax_batch_bytes = 20000\n")
    primary = cluster.primary(config=conf)
    load(primary.address, 500, batch=100)
    run = asyncio.run(kevodb_replica_batch(primary.address, 1, ADVERTISED))
    # its next request names where it stands: that is what retention keeps for it
    position = run.entries[-1].seq
    asyncio.run(kevodb_replica_batch(primary.address, position + 1, ADVERTISED))
    load(primary.address, 3_000, start=500, batch=100)  # several segments, under the cap
    st = primary.status()
    assert st["wal_segments"] > 2
    assert st["first_sequence"] <= position + 1, st
    assert st["oldest_segment_held_by"] == f"slot {ADVERTISED}"
    # past the cap it is marked lost and the WAL stays under the cap
    load(primary.address, 15_000, start=3_500, batch=500)

    def capped() -> bool:
        s = primary.status()
        return bool(s["lost_slots"] == 1 and s["wal_bytes"] <= 1048576)

    wait_until(capped, 30, "the cap to mark the slot lost")
    assert primary.status()["replicas"][0]["slot_state"] == "lost"


# -- parts ------------------------------------------------------------------------------------


async def test_nameless_slots_are_bounded(tmp_path: Path) -> None:
    """Anyone can invent listener addresses: the slots they get are capped, and so is the key."""
    from kevo_repl.node.server import Node
    from kevo_repl.primary import kevodb_peers

    cfg = Config()
    cfg.node.data_dir = str(tmp_path / "p")
    cfg.node.listen = "127.0.0.1:0"
    node = Node(cfg)
    await node.start()
    try:
        p = node.primary
        assert p is not None
        for i in range(kevodb_peers.MAX_NAMELESS_SLOTS + 50):
            kevodb_peers.stream_opened(p, rpb.WALStreamRequest(
                start_sequence=1, protocol_version=1, listener_address=f"10.0.0.{i}:1"))
        kevodb_peers.stream_opened(p, rpb.WALStreamRequest(
            start_sequence=1, listener_address="x" * (kevodb_peers.MAX_ADDRESS_BYTES + 1)))
        assert len(p.slots.slots) == kevodb_peers.MAX_NAMELESS_SLOTS
        # named replicas are not held back by them
        kevodb_peers.stream_opened(p, rpb.WALStreamRequest(start_sequence=1, replica_id="r1"))
        assert "r1" in p.slots.slots and not p.slots.slots["r1"].never_acks
        # the same address again reuses its slot
        kevodb_peers.stream_opened(p, rpb.WALStreamRequest(
            start_sequence=1, listener_address="10.0.0.0:1"))
        assert len(p.slots.slots) == kevodb_peers.MAX_NAMELESS_SLOTS + 1
    finally:
        await node.stop()


def test_mislabelled_payloads_are_accepted_only_when_plain_and_whole() -> None:
    from kevo_repl.protocol.codec import Op, checksum, encode
    from kevo_repl.protocol.transport import MAX_MESSAGE_BYTES
    from kevo_repl.protocol.wire import Unpacker, UnpackError

    def flagged(*entries: rpb.WALEntry) -> rpb.WALStreamResponse:
        return rpb.WALStreamResponse(entries=list(entries), compressed=True, codec=rpb.ZSTD)

    payload = encode(7, Op.PUT, b"k", b"v")
    unpacker = Unpacker(build_registry().compressors_by_id(), MAX_MESSAGE_BYTES)
    raw = rpb.WALEntry(sequence_number=7, payload=payload)
    with pytest.raises(UnpackError):  # only for a KevoDB primary
        unpacker.unpack(flagged(raw))
    unpacker.accept_mislabelled = True
    out = unpacker.unpack(flagged(raw))
    assert out is not None and [e.payload for e in out.entries] == [payload]
    assert unpacker.mislabelled == 1
    # damaged input is still refused: another sequence, a bad checksum, a cut payload
    for bad in (rpb.WALEntry(sequence_number=8, payload=payload),
                rpb.WALEntry(sequence_number=7, payload=payload, checksum=checksum(payload) ^ 1),
                rpb.WALEntry(sequence_number=7, payload=payload[:-1])):
        unpacker.reset()
        with pytest.raises(UnpackError):
            unpacker.unpack(flagged(bad))
    assert unpacker.mislabelled == 1


async def test_nack_pacer_waits_and_rate_limits() -> None:
    from kevo_repl.replica.primary_profile import NackPacer

    pacer = NackPacer(0.2)
    received = 0
    sent: list[tuple[int, float]] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def nack(seq: int, reason: str) -> None:
        sent.append((seq, loop.time() - t0))

    # filled in time: no nack
    pacer.problem(5, "gap", lambda: received, nack)
    await asyncio.sleep(0.05)
    received = 5
    await asyncio.sleep(0.3)
    assert sent == []
    # not filled: one nack, only after the wait, however often the gap shows
    started = loop.time() - t0
    async with asyncio.timeout(5):
        while not sent:
            pacer.problem(6, "gap", lambda: received, nack)
            await asyncio.sleep(0.01)
    assert [s for s, _ in sent] == [6] and sent[0][1] - started >= 0.2
    # still missing: asked again, but not sooner than the wait after the last nack
    async with asyncio.timeout(5):
        while len(sent) < 2:
            pacer.problem(6, "gap", lambda: received, nack)
            await asyncio.sleep(0.01)
    assert sent[1][1] - sent[0][1] >= 0.2
    pacer.cancel()
