"""The primary's write-ahead log: round trips, recovery, pruning, group commit, real crashes."""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from kevo_repl.errors import WALError
from kevo_repl.protocol.codec import Op, checksum, decode, encode
from kevo_repl.protocol.proto.replication_pb2 import WALEntry, WALStreamResponse
from kevo_repl.storage.wal import WAL, Record, SequenceNotRetained

REPO = Path(__file__).resolve().parents[1]
SEGMENT_HEADER = 16
RECORD_HEADER = 20


# -- helpers --------------------------------------------------------------------------------


def key_for(seq: int) -> bytes:
    return b"key-%d" % seq


def value_for(seq: int) -> bytes:
    # Varied sizes so that records, and therefore segment boundaries, fall unevenly.
    return b"v%d." % seq * (1 + seq % 23)


def make_record(first_seq: int, count: int, pad: int = 0) -> Record:
    entries = []
    for seq in range(first_seq, first_seq + count):
        payload = encode(seq, Op.PUT, key_for(seq), value_for(seq) + b"p" * pad)
        entries.append(WALEntry(sequence_number=seq, payload=payload, checksum=checksum(payload)))
    return Record(first_seq, count, WALStreamResponse(entries=entries).SerializeToString())


def fill(wal: WAL, n_records: int, seed: int = 1) -> list[Record]:
    """Append `n_records` records in calls of 1 to 4 records; return them in order."""
    rng = random.Random(seed)
    out: list[Record] = []
    while len(out) < n_records:
        call: list[Record] = []
        seq = wal.last_sequence + 1
        for _ in range(min(rng.randint(1, 4), n_records - len(out))):
            rec = make_record(seq, rng.randint(1, 5))
            call.append(rec)
            seq = rec.last_seq + 1
        wal.append(call)
        out += call
    return out


def check_records(records: Sequence[Record], from_seq: int, pad: int = 0) -> int:
    """Assert the records hold valid entries from `from_seq` on, contiguous; return the next
    sequence."""
    seq = from_seq
    for rec in records:
        assert rec.first_seq == seq
        entries = WALStreamResponse.FromString(rec.body).entries
        assert [e.sequence_number for e in entries] == list(range(rec.first_seq, rec.last_seq + 1))
        for e in entries:
            assert e.checksum == checksum(e.payload)
            entry = decode(e.payload, e.sequence_number)
            assert (entry.op, entry.key) == (Op.PUT, key_for(e.sequence_number))
            assert entry.value == value_for(e.sequence_number) + b"p" * pad
        seq = rec.last_seq + 1
    return seq


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def frame(first_seq: int, count: int, body: bytes) -> bytes:
    """A record framed as the module docstring of kevo_repl.storage.wal describes."""
    fields = struct.pack("<IQI", len(body), first_seq, count)
    return struct.pack("<I", zlib.crc32(body, zlib.crc32(fields))) + fields + body


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# -- basics ---------------------------------------------------------------------------------


def test_new_wal(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "wal"
    with WAL(directory) as wal:
        assert (wal.first_sequence, wal.last_sequence) == (1, 0)
        assert len(wal.history_id) == 32
        int(wal.history_id, 16)
        assert (directory / "HISTORY").read_text().strip() == wal.history_id
        assert wal.read(1, 1000) == []
        assert list(wal.iter_records(1)) == []
        assert wal.size_bytes == sum(p.stat().st_size for p in segments(directory))
    assert WAL(tmp_path / "other").history_id != wal.history_id


def test_round_trip_across_segments(tmp_path: Path) -> None:
    wal = WAL(tmp_path, segment_bytes=4096)
    written = fill(wal, 300)
    last = written[-1].last_seq
    assert wal.last_sequence == last
    assert wal.first_sequence == 1
    files = segments(tmp_path)
    assert len(files) > 5
    assert wal.size_bytes == sum(p.stat().st_size for p in files)

    containing = {seq: rec for rec in written for seq in range(rec.first_seq, rec.last_seq + 1)}
    starts = {rec.first_seq: n for n, rec in enumerate(written)}
    # Every segment is named by the first sequence of its first record.
    for path in files:
        assert int(path.stem) in starts

    for seq in range(1, last + 1):
        (rec,) = wal.read(seq, 0)
        assert (rec.first_seq, rec.last_seq) == (seq, containing[seq].last_seq)
        check_records([rec], seq)
        if seq == containing[seq].first_seq:
            assert rec == containing[seq]

    for max_bytes in (1, 200, 1000, 5000, 20000):
        for seq in range(1, last + 1, 7):
            got = wal.read(seq, max_bytes)
            assert check_records(got, seq) == got[-1].last_seq + 1
            total = sum(len(r.body) for r in got)
            assert total <= max_bytes or len(got) == 1
            following = got[-1].last_seq + 1
            if following <= last:
                # It stopped only because the next record would not fit.
                assert total + len(written[starts[following]].body) > max_bytes
            for rec in got[1:]:
                assert rec == written[starts[rec.first_seq]]

    everything = wal.read(1, 10**9)
    assert everything == written
    # Concatenated bodies are themselves one valid message, as the server sends them.
    joined = WALStreamResponse.FromString(b"".join(r.body for r in everything))
    assert [e.sequence_number for e in joined.entries] == list(range(1, last + 1))

    assert wal.read(last + 1, 1000) == []
    with pytest.raises(WALError):
        wal.read(0, 1000)
    with pytest.raises(WALError):
        wal.read(-5, 1000)
    wal.close()


def test_single_record_larger_than_max_bytes(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.append([make_record(1, 3, pad=5000), make_record(4, 1)])
        (big,) = wal.read(1, 100)
        assert big.count == 3 and len(big.body) > 15000
        (trimmed,) = wal.read(2, 100)
        assert (trimmed.first_seq, trimmed.count) == (2, 2)
        check_records([trimmed], 2, pad=5000)
        assert [r.first_seq for r in wal.read(1, 10**6)] == [1, 4]


def test_record_never_spans_segments(tmp_path: Path) -> None:
    with WAL(tmp_path, segment_bytes=1000) as wal:
        wal.append([make_record(1, 1), make_record(2, 2, pad=3000), make_record(4, 1)])
        wal.append([make_record(5, 1)])
        # 1 and the big 2..3 share the first segment (it was below the limit before 2..3),
        # then 4 opens a new one; 5 goes after 4 since that segment is still small.
        assert [int(p.stem) for p in segments(tmp_path)] == [1, 4]
        got = wal.read(1, 10**6)
        assert [(r.first_seq, r.count) for r in got] == [(1, 1), (2, 2), (4, 1), (5, 1)]


def test_iter_records(tmp_path: Path) -> None:
    with WAL(tmp_path, segment_bytes=4096) as wal:
        written = fill(wal, 120)
        assert list(wal.iter_records(1)) == written
        middle = written[60].first_seq + 1
        got = list(wal.iter_records(middle))
        assert check_records(got, middle) == wal.last_sequence + 1
        assert got[1:] == written[61:]
        assert list(wal.iter_records(wal.last_sequence + 1)) == []
        with pytest.raises(WALError):
            wal.iter_records(0)


def test_reopen(tmp_path: Path) -> None:
    wal = WAL(tmp_path, segment_bytes=4096)
    written = fill(wal, 150)
    state = (wal.first_sequence, wal.last_sequence, wal.history_id, wal.size_bytes)
    reads = [wal.read(seq, 3000) for seq in range(1, wal.last_sequence + 1, 5)]
    wal.close()
    wal.close()  # idempotent

    wal = WAL(tmp_path, segment_bytes=4096)
    assert (wal.first_sequence, wal.last_sequence, wal.history_id, wal.size_bytes) == state
    assert [wal.read(seq, 3000) for seq in range(1, wal.last_sequence + 1, 5)] == reads
    more = fill(wal, 20, seed=2)
    assert wal.read(1, 10**9) == written + more
    wal.close()


def test_closed_wal_refuses_use(tmp_path: Path) -> None:
    wal = WAL(tmp_path)
    wal.append([make_record(1, 1)])
    wal.close()
    with pytest.raises(WALError):
        wal.read(1, 100)
    with pytest.raises(WALError):
        wal.append([make_record(2, 1)])
    with pytest.raises(WALError):
        wal.prune_before(2)


def test_history_missing_beside_segments(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.append([make_record(1, 1)])
    (tmp_path / "HISTORY").unlink()
    with pytest.raises(WALError, match="HISTORY"):
        WAL(tmp_path)


def test_without_fsync(tmp_path: Path) -> None:
    with WAL(tmp_path, segment_bytes=2048, fsync=False) as wal:
        written = fill(wal, 50)
    with WAL(tmp_path, segment_bytes=2048, fsync=False) as wal:
        assert wal.read(1, 10**9) == written


# -- torn tails -----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "partial_header", "garbage", "flip", "zeros"])
def test_torn_tail_is_truncated(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    with WAL(tmp_path, segment_bytes=4096) as wal:
        written = fill(wal, 100)
    last_file = segments(tmp_path)[-1]
    last_rec = written[-1]
    assert last_rec.first_seq > int(last_file.stem)  # the damage leaves a record before it
    size = last_file.stat().st_size
    intact_size = size - RECORD_HEADER - len(last_rec.body)
    expected_last = last_rec.last_seq
    expected_size = size
    if damage == "truncate":
        os.truncate(last_file, size - 3)
        expected_last, expected_size = last_rec.first_seq - 1, intact_size
    elif damage == "partial_header":
        os.truncate(last_file, intact_size + 7)
        expected_last, expected_size = last_rec.first_seq - 1, intact_size
    elif damage == "garbage":
        with last_file.open("ab") as f:
            f.write(b"\x13garbage that is no record at all")
    elif damage == "zeros":
        with last_file.open("ab") as f:
            f.write(bytes(100))
    else:
        flip_byte(last_file, size - len(last_rec.body) // 2)
        expected_last, expected_size = last_rec.first_seq - 1, intact_size

    with caplog.at_level(logging.WARNING, logger="kevo_repl.storage.wal"):
        wal = WAL(tmp_path, segment_bytes=4096)
    assert wal.last_sequence == expected_last
    assert last_file.stat().st_size == expected_size
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dropped" in warnings[0] and f"last good sequence {expected_last}" in warnings[0]

    more = fill(wal, 30, seed=3)
    assert more[0].first_seq == expected_last + 1
    assert check_records(wal.read(1, 10**9), 1) == wal.last_sequence + 1
    wal.close()
    with WAL(tmp_path, segment_bytes=4096) as wal:
        assert check_records(list(wal.iter_records(1)), 1) == more[-1].last_seq + 1


def test_torn_back_to_an_empty_segment(tmp_path: Path) -> None:
    with WAL(tmp_path, segment_bytes=1000) as wal:
        wal.append([make_record(1, 2, pad=1000)])
        wal.append([make_record(3, 4)])  # opens segment 3 and is its only record
    last_file = tmp_path / f"{3:020d}.wal"
    assert segments(tmp_path)[-1] == last_file
    os.truncate(last_file, SEGMENT_HEADER + 5)

    with WAL(tmp_path, segment_bytes=1000) as wal:
        assert (wal.first_sequence, wal.last_sequence) == (1, 2)
        assert last_file.stat().st_size == SEGMENT_HEADER
        assert wal.read(3, 100) == []
        wal.append([make_record(3, 1)])
        assert segments(tmp_path)[-1] == last_file
    with WAL(tmp_path, segment_bytes=1000) as wal:
        assert wal.last_sequence == 3
        assert [r.first_seq for r in wal.read(1, 10**6)] == [1, 3]


@pytest.mark.parametrize("size", [0, 5, SEGMENT_HEADER])
def test_crash_right_after_segment_creation(tmp_path: Path, size: int) -> None:
    with WAL(tmp_path) as wal:
        wal.append([make_record(1, 3)])
    # A segment for sequence 4 whose header never (or only partly) reached the disk.
    header = (tmp_path / f"{1:020d}.wal").read_bytes()[:SEGMENT_HEADER]
    header = header[:-8] + struct.pack("<Q", 4)
    (tmp_path / f"{4:020d}.wal").write_bytes(header[:size])

    with WAL(tmp_path) as wal:
        assert (wal.first_sequence, wal.last_sequence) == (1, 3)
        wal.append([make_record(4, 2)])
        assert (tmp_path / f"{4:020d}.wal").stat().st_size > SEGMENT_HEADER
    with WAL(tmp_path) as wal:
        assert check_records(wal.read(1, 10**6), 1) == 6


def test_only_segment_empty_after_pruning(tmp_path: Path) -> None:
    with WAL(tmp_path, segment_bytes=100) as wal:
        wal.append([make_record(1, 2), make_record(3, 2)])
    (tmp_path / f"{5:020d}.wal").write_bytes(b"")  # crash right after creating segment 5
    with WAL(tmp_path, segment_bytes=100) as wal:
        assert wal.prune_before(100) > 0
        assert (wal.first_sequence, wal.last_sequence) == (5, 4)
        with pytest.raises(SequenceNotRetained):
            wal.read(4, 100)
    with WAL(tmp_path, segment_bytes=100) as wal:
        assert (wal.first_sequence, wal.last_sequence) == (5, 4)
        wal.append([make_record(5, 1)])
        assert [r.first_seq for r in wal.read(5, 100)] == [5]


# -- corruption -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    ["flip", "truncate", "garbage", "missing", "renamed", "bad_last_header", "sequence_gap"],
)
def test_corruption_beyond_a_torn_tail_refuses_to_open(tmp_path: Path, damage: str) -> None:
    with WAL(tmp_path, segment_bytes=4096) as wal:
        fill(wal, 100)
    files = segments(tmp_path)
    assert len(files) >= 4
    middle = files[1]
    if damage == "flip":
        flip_byte(middle, SEGMENT_HEADER + RECORD_HEADER + 3)
    elif damage == "truncate":
        os.truncate(middle, middle.stat().st_size - 3)
    elif damage == "garbage":
        with middle.open("ab") as f:
            f.write(b"trailing junk")
    elif damage == "missing":
        middle.unlink()
    elif damage == "renamed":
        middle.rename(middle.with_name(f"{int(middle.stem) + 1:020d}.wal"))
    elif damage == "bad_last_header":
        flip_byte(files[-1], 0)
    else:
        # A record whose checksum holds but whose sequence does not follow.
        with WAL(tmp_path, segment_bytes=4096) as wal:
            last = wal.last_sequence
        with files[-1].open("ab") as f:
            f.write(frame(last + 2, 1, make_record(last + 2, 1).body))

    before = snapshot(tmp_path)
    with pytest.raises(WALError, match=r"\.wal.* offset \d+"):
        WAL(tmp_path, segment_bytes=4096)
    assert snapshot(tmp_path) == before  # nothing was "repaired" away


# -- damage in the last segment ------------------------------------------------------------
# A bad record is a torn tail only when nothing valid follows it and no acknowledged sequence
# is in it; otherwise the open refuses, names file, offset and last good sequence, and
# changes nothing on disk.


def _last_segment_records(directory: Path) -> tuple[Path, list[tuple[int, int, int]]]:
    """The last segment and (offset, first, last) of each of its records."""
    path = segments(directory)[-1]
    data = path.read_bytes()
    out: list[tuple[int, int, int]] = []
    pos = SEGMENT_HEADER
    while pos < len(data):
        _, length, first, count = struct.unpack_from("<IIQI", data, pos)
        out.append((pos, first, first + count - 1))
        pos += RECORD_HEADER + length
    return path, out


@pytest.mark.parametrize(
    ("record", "field_offset"),
    [
        (0, 2),  # the first record's checksum
        (0, 5),  # its length: the scan cannot step to the next record by it
        (0, 9),  # its first sequence
        (0, 30),  # its body (offset 46 of the file, as in the report)
        (1, 16),  # its count
        (-2, RECORD_HEADER + 1),  # the body of the record before the last
    ],
)
def test_damage_followed_by_valid_records_refuses(
    tmp_path: Path, record: int, field_offset: int
) -> None:
    with WAL(tmp_path, segment_bytes=4096) as wal:
        fill(wal, 100)
    path, records = _last_segment_records(tmp_path)
    assert len(records) >= 3
    offset, first, _ = records[record]
    flip_byte(path, offset + field_offset)
    before = snapshot(tmp_path)

    with pytest.raises(WALError) as err:
        WAL(tmp_path, segment_bytes=4096)
    msg = str(err.value)
    assert f"{path} offset {offset}:" in msg
    assert f"last good sequence {first - 1}" in msg
    assert "valid record follows" in msg
    assert snapshot(tmp_path) == before  # not one byte cut


def test_torn_tail_holding_an_acknowledged_sequence_refuses(tmp_path: Path) -> None:
    with WAL(tmp_path, segment_bytes=4096) as wal:
        written = fill(wal, 60)
    path, records = _last_segment_records(tmp_path)
    offset, first, last = records[-1]
    assert last == written[-1].last_seq
    flip_byte(path, offset + RECORD_HEADER + 2)  # nothing follows: looks like a torn write
    before = snapshot(tmp_path)

    for acknowledged in (first, last):
        with pytest.raises(WALError) as err:
            WAL(tmp_path, segment_bytes=4096, acknowledged=acknowledged)
        msg = str(err.value)
        assert f"{path} offset {offset}:" in msg
        assert f"last good sequence {first - 1}" in msg
        assert f"sequence {acknowledged} was acknowledged" in msg
        assert snapshot(tmp_path) == before

    # Nothing acknowledged in it: a torn tail, cut as before.
    with WAL(tmp_path, segment_bytes=4096, acknowledged=first - 1) as wal:
        assert wal.last_sequence == first - 1
    assert path.stat().st_size == offset


def test_torn_segment_header_holding_an_acknowledged_sequence_refuses(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.append([make_record(1, 3)])
    (tmp_path / f"{4:020d}.wal").write_bytes(b"KVR")  # a torn creation of segment 4
    before = snapshot(tmp_path)
    with pytest.raises(WALError, match=r"0{19}4\.wal offset 0: .*last good sequence 3.*"
                       r"sequence 4 was acknowledged"):
        WAL(tmp_path, acknowledged=4)
    assert snapshot(tmp_path) == before
    with WAL(tmp_path, acknowledged=3) as wal:
        assert wal.last_sequence == 3


def test_no_segments_but_an_acknowledged_sequence_refuses(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.append([make_record(1, 3)])
    for path in segments(tmp_path):
        path.unlink()
    before = snapshot(tmp_path)
    with pytest.raises(WALError, match="holds no segment, but sequence 3 was acknowledged"):
        WAL(tmp_path, acknowledged=3)
    assert snapshot(tmp_path) == before


def test_scan_past_a_long_torn_tail_is_bounded(tmp_path: Path) -> None:
    """4 MiB of garbage after the last record (the worst case: every offset is tried) is
    recognised as a torn tail within a bounded time, and cut."""
    with WAL(tmp_path, segment_bytes=1 << 30) as wal:
        fill(wal, 20)
        last = wal.last_sequence
    path = segments(tmp_path)[-1]
    good_size = path.stat().st_size
    rng = random.Random(7)
    with path.open("ab") as f:
        f.write(rng.randbytes(2 << 20) + bytes(2 << 20))
    started = time.monotonic()
    with WAL(tmp_path, segment_bytes=1 << 30) as wal:
        assert wal.last_sequence == last
    assert time.monotonic() - started < 20.0
    assert path.stat().st_size == good_size


# -- appending ------------------------------------------------------------------------------


def test_append_rejects_non_contiguous_records(tmp_path: Path) -> None:
    with WAL(tmp_path) as wal:
        wal.append([make_record(1, 3)])
        before = snapshot(tmp_path)
        bad_calls = [
            [make_record(5, 1)],  # gap
            [make_record(3, 1)],  # overlap
            [make_record(4, 2), make_record(7, 1)],  # gap inside the call
            [make_record(4, 2), make_record(5, 1)],  # overlap inside the call
            [Record(4, 0, b"")],  # no entries
        ]
        for call in bad_calls:
            with pytest.raises(WALError):
                wal.append(call)
            assert wal.last_sequence == 3
            assert snapshot(tmp_path) == before
        wal.append([])  # nothing to do
        assert snapshot(tmp_path) == before
        wal.append([make_record(4, 2), make_record(6, 1)])
        assert check_records(wal.read(1, 10**6), 1) == 7


def test_group_commit_syncs_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WAL(tmp_path)
    wal.append([make_record(1, 1)])
    calls: list[int] = []
    real_fdatasync = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        calls.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    records = [make_record(seq, 1) for seq in range(2, 52)]
    wal.append(records)
    assert len(calls) == 1
    assert wal.last_sequence == 51
    wal.append([])
    assert len(calls) == 1
    wal.close()


def test_readers_only_see_durable_contiguous_records(tmp_path: Path) -> None:
    wal = WAL(tmp_path, segment_bytes=2048)
    done = threading.Event()
    problems: list[BaseException] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        rng = random.Random(7)
        try:
            while not done.is_set() or reads == 0:
                last = wal.last_sequence
                if last == 0:
                    continue
                seq = rng.randint(1, last)
                got = wal.read(seq, rng.choice([0, 500, 5000]))
                check_records(got, seq)
                reads += 1
        except BaseException as exc:
            problems.append(exc)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        fill(wal, 200)
    finally:
        done.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert not problems, problems
    assert reads > 0
    wal.close()


# -- pruning --------------------------------------------------------------------------------


def test_prune_before(tmp_path: Path) -> None:
    wal = WAL(tmp_path, segment_bytes=4096)
    written = fill(wal, 200)
    files = segments(tmp_path)
    assert len(files) >= 5
    third = int(files[2].stem)
    sizes = [p.stat().st_size for p in files]

    assert wal.prune_before(1) == 0
    assert wal.prune_before(third) == sizes[0] + sizes[1]
    assert segments(tmp_path) == files[2:]
    assert wal.first_sequence == third
    assert wal.size_bytes == sum(sizes[2:])
    with pytest.raises(SequenceNotRetained):
        wal.read(third - 1, 1000)
    with pytest.raises(SequenceNotRetained):
        wal.iter_records(1)
    assert check_records(wal.read(third, 10**9), third) == wal.last_sequence + 1

    # Segment 3 still holds entries >= third + 1, so it stays.
    assert wal.prune_before(third + 1) == 0
    # Far beyond the end: everything but the active segment goes.
    freed = wal.prune_before(wal.last_sequence + 100)
    assert freed == sum(sizes[2:-1])
    assert segments(tmp_path) == files[-1:]
    active = int(files[-1].stem)
    assert wal.first_sequence == active
    assert wal.last_sequence == written[-1].last_seq
    assert check_records(wal.read(active, 10**9), active) == wal.last_sequence + 1
    wal.close()

    with WAL(tmp_path, segment_bytes=4096) as wal:
        assert wal.first_sequence == active
        with pytest.raises(SequenceNotRetained):
            wal.read(active - 1, 1000)
        fill(wal, 30, seed=4)
        assert check_records(list(wal.iter_records(active)), active) == wal.last_sequence + 1


# -- real crashes ---------------------------------------------------------------------------

CHILD = r"""
import sys
from pathlib import Path

from kevo_repl.protocol.codec import Op, checksum, encode
from kevo_repl.protocol.proto.replication_pb2 import WALEntry, WALStreamResponse
from kevo_repl.storage.wal import WAL, Record


def record(first, count):
    entries = []
    for seq in range(first, first + count):
        value = b"v%d." % seq * (1 + seq % 23)
        payload = encode(seq, Op.PUT, b"key-%d" % seq, value)
        entries.append(WALEntry(sequence_number=seq, payload=payload, checksum=checksum(payload)))
    return Record(first, count, WALStreamResponse(entries=entries).SerializeToString())


wal = WAL(Path(sys.argv[1]), segment_bytes=16384)
for i in range(200000):
    seq = wal.last_sequence + 1
    call = []
    for _ in range(1 + i % 3):
        call.append(record(seq, 1 + seq % 4))
        seq += 1 + seq % 4
    wal.append(call)
    print(wal.last_sequence, flush=True)
"""


def read_lines(proc: subprocess.Popen[bytes], wanted: int, timeout: float) -> list[int]:
    """Read `wanted` whole lines from the child's stdout, failing after `timeout` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    pending = b""
    lines: list[int] = []
    while len(lines) < wanted:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"child printed {len(lines)} of {wanted} lines in {timeout}s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            pytest.fail(f"child exited early with {proc.wait(timeout=10)}")
        *complete, pending = (pending + chunk).split(b"\n")
        lines += [int(line) for line in complete]
    return lines


@pytest.mark.crash
@pytest.mark.parametrize("lines_before_kill", [5, 50, 200])
def test_sigkill_never_loses_acknowledged_records(tmp_path: Path, lines_before_kill: int) -> None:
    directory = tmp_path / "wal"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    with (tmp_path / "stderr").open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=REPO,
            env=env,
        )
    try:
        printed = read_lines(proc, lines_before_kill, timeout=120)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr").read_text()
    acknowledged = max(printed)
    assert printed == sorted(printed)

    with WAL(directory, segment_bytes=16384) as wal:
        assert wal.last_sequence >= acknowledged
        assert wal.first_sequence == 1
        records = list(wal.iter_records(1))
        assert check_records(records, 1) == wal.last_sequence + 1
        last = wal.last_sequence
        wal.append([make_record(last + 1, 2)])
    with WAL(directory, segment_bytes=16384) as wal:
        assert wal.last_sequence == last + 2
        assert check_records(list(wal.iter_records(1)), 1) == last + 3
