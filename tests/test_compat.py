"""KevoDB compatibility and the wire features end to end: a client that behaves as KevoDB's Go
replica against our primary process; our replica against responses shaped as KevoDB's primary
sends them; every codec through a live pair; a 64 MiB value; lost fragments."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

import grpc
import pytest
from helpers import assert_same_digest, load, wait_caught_up
from test_replica_faults import ScriptedPrimary, _replica, _resp, _run_until, entry

from kevo_repl.plugin.manager import build_registry
from kevo_repl.protocol.codec import Op, decode
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.transport import channel_options

SVC = "/kevo.replication.WALReplicationService/"
COMPRESSORS = build_registry().compressors_by_id()


@pytest.mark.parametrize("codec", [rpb.ZSTD, rpb.SNAPPY, rpb.NONE], ids=["zstd", "snappy", "none"])
def test_kevodb_style_replica_streams_from_our_primary(cluster, codec: int) -> None:
    primary = cluster.primary()
    load(primary.address, 3_000, batch=500)

    async def kevodb_replica() -> tuple[list[int], bool]:
        async with grpc.aio.insecure_channel(primary.address, options=channel_options()) as ch:
            stream = ch.unary_stream(SVC + "StreamWAL",
                                     request_serializer=rpb.WALStreamRequest.SerializeToString,
                                     response_deserializer=rpb.WALStreamResponse.FromString)
            ack = ch.unary_unary(SVC + "Acknowledge",
                                 request_serializer=rpb.Ack.SerializeToString,
                                 response_deserializer=rpb.AckResponse.FromString)
            # exactly KevoDB's request: version 1, no kevo-repl fields
            call = stream(rpb.WALStreamRequest(
                start_sequence=1, protocol_version=1, compression_supported=codec != rpb.NONE,
                preferred_codec=codec, listener_address="127.0.0.1:50099"))
            sid = dict(await call.initial_metadata())["session-id"]
            seqs: list[int] = []
            compressed_seen = False
            async with asyncio.timeout(30):
                async for resp in call:
                    assert not resp.compressed_entries  # v1 peers never get block mode
                    compressed_seen |= resp.compressed
                    for e in resp.entries:
                        payload = e.payload
                        if resp.compressed:
                            assert resp.codec == codec
                            payload = COMPRESSORS[codec].decompress(payload, 1 << 20)
                        assert e.checksum == zlib.crc32(payload)
                        got = decode(payload, e.sequence_number)
                        assert got.op == Op.PUT
                        seqs.append(e.sequence_number)
                    if seqs and seqs[-1] == 3_000:
                        break
            reply = await ack(rpb.Ack(acknowledged_up_to=3_000),
                              metadata=(("session-id", sid),))
            assert reply.success
            call.cancel()
            return seqs, compressed_seen

    seqs, compressed_seen = asyncio.run(kevodb_replica())
    assert seqs == list(range(1, 3_001))
    assert compressed_seen == (codec != rpb.NONE)


@pytest.mark.parametrize("codec", ["zstd", "snappy", "none"])
def test_every_codec_through_a_live_pair(cluster, tmp_path: Path, codec: str) -> None:
    conf = tmp_path / "r.toml"
    conf.write_text(f'[compressor]\nname = "{codec}"\n')
    primary = cluster.primary()
    replica = cluster.replica(primary, config=conf)
    load(primary.address, 5_000, batch=500)
    wait_caught_up(primary, replica)
    assert_same_digest(primary, replica)
    mode = {"none": "uncompressed", "zstd": "codec 1, whole-response blocks",
            "snappy": "codec 2, whole-response blocks"}[codec]
    assert mode in primary.log_file.read_text()


def test_64_mib_value_replicates(cluster) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    big = bytes(range(256)) * (64 * 1024 * 1024 // 256)
    with primary.client(timeout=120) as c:
        c.write([(Op.PUT, b"small-before", b"1")])
        c.write([(Op.PUT, b"huge", big), (Op.PUT, b"small-in-batch", b"2")])
        c.write([(Op.PUT, b"small-after", b"3")])
    wait_caught_up(primary, replica, timeout=120)
    with replica.client(timeout=120) as c:
        assert c.get(b"huge") == big
        assert c.get(b"small-in-batch") == b"2"
    assert_same_digest(primary, replica)
    # four entries in three write batches, the middle one split over many responses
    assert replica.status()["applied_entries"] == 4


def test_entry_over_the_configured_maximum_is_refused_at_write(cluster, tmp_path: Path) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text("[stream]\nmax_entry_bytes = 100000\n")
    primary = cluster.primary(config=conf)
    with primary.client() as c, pytest.raises(grpc.RpcError) as err:
        c.write([(Op.PUT, b"k", b"x" * 200_000)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_entry_bytes" in err.value.details()


def _fragments(seq: int, payload_entry: rpb.WALEntry, size: int) -> list[rpb.WALEntry]:
    p = payload_entry.payload
    parts = [p[i:i + size] for i in range(0, len(p), size)]
    kinds = [rpb.FIRST] + [rpb.MIDDLE] * (len(parts) - 2) + [rpb.LAST]
    return [
        rpb.WALEntry(sequence_number=seq, payload=part, fragment_type=k,
                     checksum=payload_entry.checksum)
        for part, k in zip(parts, kinds, strict=True)
    ]


async def test_lost_fragment_is_rerequested(tmp_path: Path) -> None:
    def big_entry(seq: int) -> rpb.WALEntry:
        from kevo_repl.protocol.codec import checksum, encode

        payload = encode(seq, Op.PUT, f"k{seq}".encode(), b"z" * 5000)
        return rpb.WALEntry(sequence_number=seq, payload=payload, checksum=checksum(payload))

    def script(start: int, round_no: int) -> list[rpb.WALStreamResponse]:
        out = [_resp(*[entry(s) for s in range(start, 3)])] if start < 3 else []
        frags = _fragments(3, big_entry(3), 1000)
        if round_no == 0:
            del frags[2]  # a MIDDLE lost on the way
        out += [rpb.WALStreamResponse(entries=[f], partial_batch=f.fragment_type != rpb.LAST)
                for f in frags]
        out.append(_resp(entry(4)))
        return out

    primary = ScriptedPrimary(script)
    await primary.server.start()
    replica = _replica(tmp_path, primary.port)
    try:
        await _run_until(replica, lambda: replica.position.sequence >= 4)
        assert primary.nacks == [3]
        assert replica.store.get(b"k3") == b"z" * 5000
        assert replica.position.applied_entries == 4
    finally:
        replica.close()
        await primary.server.stop(None)


async def test_kevodb_primary_behaviours_window_resent_and_empty_heartbeats(
    tmp_path: Path,
) -> None:
    """KevoDB's primary sends checksum 0, re-sends its window until acked, and sends empty
    responses while idle; our replica applies each entry once."""

    def script(start: int, round_no: int) -> list[rpb.WALStreamResponse]:
        window = [entry(s, crc=False) for s in range(1, 11)]
        return [_resp(*window), rpb.WALStreamResponse(), _resp(*window),
                rpb.WALStreamResponse(), _resp(*window, *[entry(s, crc=False)
                                                          for s in range(11, 16)])]

    primary = ScriptedPrimary(script)
    await primary.server.start()
    replica = _replica(tmp_path, primary.port)
    try:
        await _run_until(replica, lambda: replica.position.sequence >= 15)
        assert replica.position.applied_entries == 15
        assert replica.stats.duplicates_skipped >= 20
        assert primary.nacks == []
    finally:
        replica.close()
        await primary.server.stop(None)


def test_bits_flipped_in_flight_are_caught_and_repaired(cluster, tmp_path: Path) -> None:
    from kevo_repl_tools.faultproxy import FaultProxy
    from kevo_repl_tools.launcher import wait_until

    primary = cluster.primary()
    proxy = FaultProxy(primary.address, seed=3)
    proxy.start()
    try:
        replica = cluster.replica(primary)
        replica.primary = proxy.address
        replica.kill()
        replica.start()
        # flip one byte inside the values of the next few responses, not in the framing
        proxy.corrupt(5, marker=b"VALUE")
        with primary.client() as c:
            for b in range(40):
                c.write([(Op.PUT, f"k{b:04d}-{i:03d}".encode(), f"VALUE-{b}-{i}".encode() * 20)
                         for i in range(200)])
        wait_until(lambda: proxy.corrupted >= 1, 30, "the proxy to corrupt something")
        wait_caught_up(primary, replica, timeout=60)
        assert_same_digest(primary, replica)
        st = replica.status()
        assert st["corrupt_entries"] >= 1, st  # seen, counted, never applied
        assert st["applied_entries"] == st["last_applied"] == 8_000
    finally:
        proxy.close()
