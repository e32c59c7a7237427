"""The primary's write-ahead log: segmented, crash-safe, group-committed.

A WAL directory holds:

    HISTORY                    uuid4 hex naming this primary's history, written once
    00000000000000000001.wal   segments, each named by the first sequence it holds

A segment starts with a 16-byte header (magic b"KVRWAL", u16 version, u64 first sequence)
followed by records back to back. A record is a 20-byte header and its body:

    u32 crc     CRC-32 of the 16 header bytes after it, then of the body
    u32 length  body length in bytes
    u64 first   sequence of the record's first entry
    u32 count   number of entries, at least 1
    body        a WALStreamResponse in wire form holding the batch as one column block
                (or, written before blocks, as entries), served to replicas as is
                (protocol/records.py)

All integers are little-endian.

Recovery relies on two rules of the write path: a segment's header is durable (file and
directory) before any record goes into it, and a segment is durable before the next one is
created. So only the last segment can end in a torn write; damage anywhere else is real
corruption of acknowledged data and stops the open.

Even in the last segment a bad record is a torn write only when nothing valid follows it: a
record with a good checksum further on means the bad bytes were once durable (a damaged disk
or a stray write), so the open refuses, names the file, offset and last good sequence, and
changes nothing. A torn tail is also kept, and the open refused, when dropping it would lose a
sequence known to be acknowledged elsewhere (`acknowledged`: the primary's store, its slots).
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
import re
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from kevo_repl.errors import WALError
from kevo_repl.protocol.proto.replication_pb2 import WALStreamResponse
from kevo_repl.protocol.records import Record, trim_body

log = logging.getLogger(__name__)

_SEGMENT_MAGIC = b"KVRWAL"
_SEGMENT_VERSION = 1
_SEGMENT_HEADER = struct.Struct("<6sHQ")
_RECORD_HEADER = struct.Struct("<IIQI")
_RECORD_FIELDS = struct.Struct("<IQI")  # the part of the record header the CRC covers
_CRC = struct.Struct("<I")
_SEGMENT_NAME = re.compile(r"(\d{20})\.wal")
_HISTORY_ID = re.compile(rb"[0-9a-f]{32}")
_HISTORY = "HISTORY"
_MAX_U32 = 0xFFFF_FFFF
_MAX_U64 = 0xFFFF_FFFF_FFFF_FFFF
#: read buffer used while scanning segments at open
_SCAN_BUFFER = 1 << 20
#: largest span of records fetched with one pread
_READ_SPAN = 4 << 20
#: max_bytes of each read behind iter_records
_ITER_BATCH = 4 << 20


class SequenceNotRetained(WALError):
    """The requested sequence is below the first one the WAL still holds (it was pruned)."""


@dataclass
class SegmentScan:
    """What a read-only scan of one segment file found."""

    first_seq: int
    file_size: int
    end: int  # offset just past the last good record (the header's end if none)
    last_seq: int  # first_seq - 1 while no record is good
    problem: str | None = None  # why the bytes from `end` on are not a record
    firsts: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class SegmentInfo:
    """What retention needs to know of one segment."""

    path: Path
    first_seq: int
    last_seq: int  # first_seq - 1 while it holds no record
    size: int  # bytes of header and durable records


class _Segment:
    """One segment file, its descriptor, and the index of its records.

    The four per-record lists only ever grow, under the WAL's lock, with `firsts` extended
    last: a reader that finds a record in `firsts` always finds the rest of its index.
    """

    def __init__(self, path: Path, first_seq: int, fd: int) -> None:
        self.path = path
        self.first_seq = first_seq
        self.fd = fd
        self.size = 0  # bytes of the file that hold the header and durable records
        self.last_seq = first_seq - 1
        self.firsts: list[int] = []
        self.offsets: list[int] = []  # offset of the record header
        self.lengths: list[int] = []  # body length
        self.counts: list[int] = []
        self.pins = 0  # readers using fd right now
        self.retired = False  # pruned or closed: close fd once no reader uses it


@dataclass
class _Batch:
    """What one append() writes into one segment, not yet visible to readers."""

    seg: _Segment
    new: bool  # the segment was created by this append
    start: int  # file offset the batch's bytes go to
    end: int
    chunks: list[bytes] = field(default_factory=list)
    firsts: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def add(self, rec: Record) -> None:
        fields = _RECORD_FIELDS.pack(len(rec.body), rec.first_seq, rec.count)
        crc = zlib.crc32(rec.body, zlib.crc32(fields))
        self.chunks += (_CRC.pack(crc), fields, rec.body)
        self.firsts.append(rec.first_seq)
        self.offsets.append(self.end)
        self.lengths.append(len(rec.body))
        self.counts.append(rec.count)
        self.end += _RECORD_HEADER.size + len(rec.body)


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.wal"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(f"pwrite wrote {written} bytes")
        view = view[written:]
        offset += written


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    # Linux caps one pread near 2 GiB, so large spans take several calls.
    parts: list[bytes] = []
    remaining = size
    while remaining:
        part = os.pread(fd, remaining, offset)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
        offset += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(first sequence, path) of every segment file in `directory`, oldest first."""
    found: list[tuple[int, Path]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.endswith(".wal"):
                continue
            match = _SEGMENT_NAME.fullmatch(entry.name)
            if match is None or int(match.group(1)) < 1:
                raise WALError(f"{entry.path}: not a valid segment file name")
            found.append((int(match.group(1)), Path(entry.path)))
    found.sort()
    return found


def segment_header_problem(raw: bytes, first_seq: int) -> str | None:
    """What is wrong with a segment's header bytes, None when nothing is."""
    if len(raw) < _SEGMENT_HEADER.size:
        return f"segment header is {len(raw)} of {_SEGMENT_HEADER.size} bytes"
    magic, version, seq = _SEGMENT_HEADER.unpack_from(raw)
    if magic != _SEGMENT_MAGIC:
        return "not a WAL segment (bad magic)"
    if version != _SEGMENT_VERSION:
        return f"unsupported segment version {version}"
    if seq != first_seq:
        return f"segment header names sequence {seq}, the file name {first_seq}"
    return None


def _trim(rec: Record, from_seq: int, where: str) -> Record:
    """The part of `rec` from `from_seq` on, with its body re-encoded."""
    count = rec.last_seq - from_seq + 1
    try:
        block_body = trim_body(rec.body, from_seq)
    except Exception as exc:  # a damaged block, or protobuf's DecodeError
        raise WALError(f"{where}: record body does not hold a good block: {exc}") from exc
    if block_body is not None:
        return Record(from_seq, count, block_body)
    try:
        msg = WALStreamResponse.FromString(rec.body)
    except Exception as exc:  # protobuf's DecodeError; its module ships no type stubs
        raise WALError(f"{where}: record body does not parse: {exc}") from exc
    kept = [e for e in msg.entries if e.sequence_number >= from_seq]
    if len(kept) != count or kept[0].sequence_number != from_seq:
        raise WALError(
            f"{where}: record {rec.first_seq}..{rec.last_seq} does not hold entries "
            f"{from_seq}..{rec.last_seq} in its body"
        )
    out = WALStreamResponse(entries=kept)
    if msg.HasField("chain"):  # the hash chain after the record's last entry stays true
        out.chain = msg.chain
    body: bytes = out.SerializeToString()
    return Record(from_seq, count, body)


def scan_segment(path: Path, first_seq: int, file_size: int) -> SegmentScan:
    """Index the records of a segment whose header is good, changing nothing; stop at the
    first bytes that are not a good record and say why in `problem`.

    Raise WALError for records whose checksum holds but whose content is impossible.
    """
    offset = _SEGMENT_HEADER.size
    scan = SegmentScan(first_seq, file_size, offset, first_seq - 1)
    expected = first_seq
    with open(path, "rb", buffering=_SCAN_BUFFER) as f:
        f.seek(offset)
        while offset < file_size:
            head = f.read(_RECORD_HEADER.size)
            if len(head) < _RECORD_HEADER.size:
                scan.problem = f"partial record header of {len(head)} bytes"
                break
            crc, length, first, count = _RECORD_HEADER.unpack(head)
            end = offset + _RECORD_HEADER.size + length
            if end > file_size:
                scan.problem = f"record length {length} runs past the end of the file"
                break
            body = f.read(length)
            if len(body) != length:
                raise WALError(f"{path} offset {offset}: file shrank while opening")
            if zlib.crc32(body, zlib.crc32(head[_CRC.size :])) != crc:
                scan.problem = "checksum mismatch"
                break
            if count < 1:
                raise WALError(f"{path} offset {offset}: record with no entries")
            if first != expected:
                raise WALError(
                    f"{path} offset {offset}: record starts at sequence {first}, "
                    f"expected {expected}"
                )
            scan.counts.append(count)
            scan.offsets.append(offset)
            scan.lengths.append(length)
            scan.firsts.append(first)
            expected = first + count
            scan.last_seq = expected - 1
            offset = end
    scan.end = offset
    return scan


def valid_record_after(path: Path, bad_at: int, file_size: int, expected: int) -> int | None:
    """The offset of the first record past `bad_at` whose checksum holds and that could
    follow sequence `expected - 1`, or None when there is none (a torn tail).

    Every offset is tried, since the bad record's length field may be the damaged part. The
    header fields are checked before the checksum: a record starts at a sequence from
    `expected` on, at most one entry per byte skipped (every entry takes bytes), and has
    1..length entries. The file is mapped, not read, so the scan needs no buffer.
    """
    last_start = file_size - _RECORD_HEADER.size
    if last_start <= bad_at:
        return None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if len(mm) < file_size:
            raise WALError(f"{path}: file shrank while opening")
        view = memoryview(mm)
        try:
            for pos in range(bad_at + 1, last_start + 1):
                crc, length, first, count = _RECORD_HEADER.unpack_from(mm, pos)
                if not (1 <= count <= length and expected <= first <= expected + pos - bad_at):
                    continue
                body_at = pos + _RECORD_HEADER.size
                if body_at + length > file_size:
                    continue
                fields_crc = zlib.crc32(view[pos + _CRC.size : body_at])
                if zlib.crc32(view[body_at : body_at + length], fields_crc) == crc:
                    return pos
        finally:
            view.release()
    return None


class WAL:
    """Segmented write-ahead log of the primary.

    One thread at a time appends (and prunes, and closes); any number of threads may read
    meanwhile and only ever see durable records.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 64 * 1024 * 1024,
        fsync: bool = True,
        acknowledged: int = 0,
    ) -> None:
        """Open (recovering) or create the WAL in `directory`.

        `acknowledged` is the highest sequence known to have been acknowledged outside the
        WAL; recovery refuses, changing nothing, rather than drop a tail holding it.
        """
        if segment_bytes < 1:
            raise WALError(f"segment_bytes must be positive, not {segment_bytes}")
        self._dir = Path(directory)
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        # _lock guards what readers look at (segment list, last sequence, pins) and is only
        # held briefly; _write_lock keeps append, prune and close one at a time.
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._starts: list[int] = []  # first_seq of each segment, for bisect
        self._last_seq = 0
        self._size = 0
        self._closed = False
        self._failure: str | None = None
        self._acknowledged = acknowledged

        self._make_directory()
        found = self._list_segments()
        if not found and acknowledged > 0:
            # A new, empty WAL would hand out sequence 1.. again.
            raise WALError(
                f"{self._dir} holds no segment, but sequence {acknowledged} was acknowledged; "
                "nothing was changed"
            )
        self.history_id: str = self._load_history(bool(found))
        try:
            self._recover(found)
        except BaseException:
            self._closed = True
            for seg in self._segments:
                os.close(seg.fd)
            raise
        log.debug(
            "opened WAL %s: sequences %s..%s in %s segments, history %s",
            self._dir,
            self.first_sequence,
            self._last_seq,
            len(self._segments),
            self.history_id,
        )

    # -- state ---------------------------------------------------------------------------

    @property
    def first_sequence(self) -> int:
        with self._lock:
            # The oldest segment's name; when the WAL holds no entries that segment is the
            # only, empty one and its name is last_sequence + 1.
            return self._segments[0].first_seq

    @property
    def last_sequence(self) -> int:
        return self._last_seq

    @property
    def size_bytes(self) -> int:
        return self._size

    # -- open ----------------------------------------------------------------------------

    def _make_directory(self) -> None:
        missing: list[Path] = []
        path = self._dir
        while not path.exists():
            missing.append(path)
            path = path.parent
        self._dir.mkdir(parents=True, exist_ok=True)
        if self._fsync:
            # A new directory only survives a crash once its parent is synced.
            for created in reversed(missing):
                _fsync_dir(created.parent)

    def _list_segments(self) -> list[tuple[int, Path]]:
        return list_segments(self._dir)

    def _load_history(self, has_segments: bool) -> str:
        path = self._dir / _HISTORY
        try:
            raw = path.read_bytes().strip()
        except FileNotFoundError:
            if has_segments:
                # A new id over old entries would let replicas mix two histories.
                raise WALError(f"{path} is missing but the directory holds segments") from None
            return self._create_history(path)
        if not _HISTORY_ID.fullmatch(raw):
            raise WALError(f"{path} does not hold a history id")
        return raw.decode("ascii")

    def _create_history(self, path: Path) -> str:
        history_id = uuid.uuid4().hex
        # Written aside and renamed so that a crash never leaves a partial HISTORY.
        tmp = path.with_name(_HISTORY + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _pwrite_all(fd, history_id.encode("ascii") + b"\n", 0)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if self._fsync:
            _fsync_dir(self._dir)
        log.info("WAL %s: new history %s", self._dir, history_id)
        return history_id

    def _recover(self, found: list[tuple[int, Path]]) -> None:
        if not found:
            seg = self._create_segment(1)
            self._segments.append(seg)
            self._starts.append(seg.first_seq)
            self._size = seg.size
            return
        for n, (first_seq, path) in enumerate(found):
            is_last = n == len(found) - 1
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            seg = _Segment(path, first_seq, fd)
            self._segments.append(seg)
            self._starts.append(first_seq)
            if n and first_seq != self._last_seq + 1:
                raise WALError(
                    f"{path} offset 0: segment starts at sequence {first_seq} but the "
                    f"previous segment ends at {self._last_seq}"
                )
            self._recover_segment(seg, is_last)
            self._last_seq = seg.last_seq
            self._size += seg.size

    def _recover_segment(self, seg: _Segment, is_last: bool) -> None:
        file_size = os.fstat(seg.fd).st_size
        problem = segment_header_problem(os.pread(seg.fd, _SEGMENT_HEADER.size, 0), seg.first_seq)
        if problem is not None:
            # The header is synced before any record goes in, so a bad header is a torn
            # creation only when nothing follows it.
            if not (is_last and file_size <= _SEGMENT_HEADER.size):
                raise WALError(
                    f"{seg.path} offset 0: {problem}; last good sequence {seg.first_seq - 1}"
                )
            self._refuse_losing_acknowledged(seg.path, 0, problem, seg.first_seq - 1)
            if file_size:
                log.warning(
                    "WAL %s: dropped %s bytes of a torn segment header; last good sequence %s",
                    seg.path,
                    file_size,
                    seg.first_seq - 1,
                )
            self._write_segment_header(seg)
            seg.size = _SEGMENT_HEADER.size
            return
        scan = scan_segment(seg.path, seg.first_seq, file_size)
        seg.counts, seg.offsets, seg.lengths = scan.counts, scan.offsets, scan.lengths
        seg.firsts, seg.last_seq = scan.firsts, scan.last_seq
        end, bad = scan.end, scan.problem
        if bad is not None:
            where = f"{seg.path} offset {end}: {bad}"
            if not is_last:
                raise WALError(f"{where}; last good sequence {seg.last_seq}")
            # Everything is checked before the tail is cut, so a refusal changes nothing.
            valid_at = valid_record_after(seg.path, end, file_size, seg.last_seq + 1)
            if valid_at is not None:
                raise WALError(
                    f"{where}, yet a valid record follows at offset {valid_at}: durable "
                    f"records are damaged, this is no torn tail; last good sequence "
                    f"{seg.last_seq}. Nothing was changed; rebuild this primary from a replica "
                    "(see README, 'A damaged WAL')"
                )
            self._refuse_losing_acknowledged(seg.path, end, bad, seg.last_seq)
            log.warning(
                "WAL %s: dropped %s bytes of a torn tail at offset %s (%s); last good sequence %s",
                seg.path,
                file_size - end,
                end,
                bad,
                seg.last_seq,
            )
            os.ftruncate(seg.fd, end)
            if self._fsync:
                os.fsync(seg.fd)
        seg.size = end

    def _refuse_losing_acknowledged(
        self, path: Path, offset: int, problem: str, last_good: int
    ) -> None:
        """Raise unless cutting the tail after `last_good` loses no acknowledged sequence."""
        if self._acknowledged > last_good:
            raise WALError(
                f"{path} offset {offset}: {problem}; last good sequence {last_good}, but "
                f"sequence {self._acknowledged} was acknowledged: the damaged tail holds "
                "acknowledged records. Nothing was changed; rebuild this primary from a "
                "replica (see README, 'A damaged WAL')"
            )

    # -- write ---------------------------------------------------------------------------

    def _write_segment_header(self, seg: _Segment) -> None:
        os.ftruncate(seg.fd, 0)
        _pwrite_all(
            seg.fd, _SEGMENT_HEADER.pack(_SEGMENT_MAGIC, _SEGMENT_VERSION, seg.first_seq), 0
        )
        if self._fsync:
            os.fdatasync(seg.fd)

    def _create_segment(self, first_seq: int) -> _Segment:
        path = self._dir / _segment_name(first_seq)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        seg = _Segment(path, first_seq, fd)
        try:
            self._write_segment_header(seg)
            if self._fsync:
                _fsync_dir(self._dir)
        except BaseException:
            os.close(fd)
            raise
        seg.size = _SEGMENT_HEADER.size
        log.debug("WAL %s: new segment %s", self._dir, path.name)
        return seg

    def _flush(self, batch: _Batch) -> None:
        if not batch.chunks:
            return  # a segment that was already full at the call's start is durable
        _pwrite_all(batch.seg.fd, b"".join(batch.chunks), batch.start)
        if self._fsync:
            os.fdatasync(batch.seg.fd)

    def append(self, records: Sequence[Record]) -> None:
        """Write `records` and make them durable with one fdatasync (plus two more for each
        segment the call rolls to). Readers see them only once they are durable.

        After a failed write or sync the WAL refuses further appends: what reached the disk
        is unknown until the WAL is reopened and recovered.
        """
        with self._write_lock:
            self._check_open()
            if self._failure is not None:
                raise WALError(f"{self._dir}: an earlier append failed ({self._failure}); reopen")
            if not records:
                return
            self._check_contiguous(records)
            created: list[_Segment] = []
            try:
                batches = self._write(records, created)
            except BaseException as exc:
                # Bytes past the durable end may now be on disk; only recovery sorts them out.
                self._failure = repr(exc)
                for seg in created:
                    os.close(seg.fd)
                if isinstance(exc, OSError):
                    raise WALError(f"{self._dir}: append failed: {exc}") from exc
                raise
            self._publish(batches, records[-1].last_seq)

    def _check_contiguous(self, records: Sequence[Record]) -> None:
        expected = self._last_seq + 1
        for n, rec in enumerate(records):
            if not 1 <= rec.count <= _MAX_U32:
                raise WALError(f"record {n} has {rec.count} entries")
            if rec.first_seq != expected:
                raise WALError(
                    f"record {n} starts at sequence {rec.first_seq}, expected {expected}"
                )
            if rec.last_seq > _MAX_U64:
                raise WALError(f"record {n} runs past the largest sequence")
            if len(rec.body) > _MAX_U32:
                raise WALError(f"record {n} has a body of {len(rec.body)} bytes")
            expected = rec.last_seq + 1

    def _write(self, records: Sequence[Record], created: list[_Segment]) -> list[_Batch]:
        active = self._segments[-1]
        batches = [_Batch(active, new=False, start=active.size, end=active.size)]
        for rec in records:
            batch = batches[-1]
            if batch.end >= self._segment_bytes and (batch.seg.firsts or batch.firsts):
                # The full segment is made durable before the next one exists, so that
                # recovery can treat damage in any but the last segment as corruption.
                self._flush(batch)
                seg = self._create_segment(rec.first_seq)
                created.append(seg)
                batch = _Batch(seg, new=True, start=seg.size, end=seg.size)
                batches.append(batch)
            batch.add(rec)
        self._flush(batches[-1])
        return batches

    def _publish(self, batches: list[_Batch], last_seq: int) -> None:
        with self._lock:
            for batch in batches:
                seg = batch.seg
                seg.counts += batch.counts
                seg.offsets += batch.offsets
                seg.lengths += batch.lengths
                seg.firsts += batch.firsts
                if batch.firsts:
                    seg.last_seq = batch.firsts[-1] + batch.counts[-1] - 1
                if batch.new:
                    self._segments.append(seg)
                    self._starts.append(seg.first_seq)
                    self._size += batch.end
                else:
                    self._size += batch.end - seg.size
                seg.size = batch.end
            self._last_seq = last_seq

    # -- read ----------------------------------------------------------------------------

    def read(self, from_seq: int, max_bytes: int) -> list[Record]:
        """Whole records from the one holding `from_seq` (trimmed to start there) while
        their bodies total at most `max_bytes`; at least one record if any is there.
        """
        if from_seq < 1:
            raise WALError(f"sequence {from_seq} is not valid; sequences start at 1")
        with self._lock:
            self._check_open()
            last = self._last_seq
            if from_seq > last:
                return []
            seg = self._pin(from_seq)
            if seg is None:
                raise SequenceNotRetained(
                    f"sequence {from_seq} is below the first retained sequence "
                    f"{self._segments[0].first_seq}"
                )
        try:
            i = bisect.bisect_right(seg.firsts, from_seq) - 1
            first = self._read_span(seg, i, i + 1)[0]
            if first.first_seq < from_seq:
                first = _trim(first, from_seq, f"{seg.path} offset {seg.offsets[i]}")
            out = [first]
            used = len(first.body)
            seq = first.last_seq + 1
            while seq <= last:
                k = bisect.bisect_left(seg.firsts, seq)
                if k == len(seg.firsts):
                    # This segment is done; `seq` starts the next one.
                    with self._lock:
                        nxt = self._pin(seq)
                        if nxt is not None:
                            self._unpin(seg)
                    if nxt is None:
                        break  # pruned meanwhile: the caller asks again and learns it
                    seg = nxt
                    continue
                j = k
                span = 0
                while j < len(seg.firsts) and seg.firsts[j] <= last:
                    length = seg.lengths[j]
                    if used + length > max_bytes or (j > k and span + length > _READ_SPAN):
                        break
                    used += length
                    span += length
                    j += 1
                if j == k:
                    break
                out += self._read_span(seg, k, j)
                seq = out[-1].last_seq + 1
            return out
        finally:
            with self._lock:
                self._unpin(seg)

    def record_start(self, seq: int) -> int:
        """The first sequence of the record holding `seq` (SequenceNotRetained if pruned)."""
        with self._lock:
            self._check_open()
            if not 1 <= seq <= self._last_seq:
                raise WALError(f"sequence {seq} is not in the WAL (last: {self._last_seq})")
            seg = self._pin(seq)
            if seg is None:
                raise SequenceNotRetained(
                    f"sequence {seq} is below the first retained sequence "
                    f"{self._segments[0].first_seq}"
                )
            try:
                return seg.firsts[bisect.bisect_right(seg.firsts, seq) - 1]
            finally:
                self._unpin(seg)

    def start_of_last_records(self, records: int) -> int | None:
        """The first sequence of the oldest of the last `records` retained records (of the
        first retained record when fewer are retained); None when the WAL holds none."""
        with self._lock:
            self._check_open()
            left = records
            for seg in reversed(self._segments):
                if left <= len(seg.firsts):
                    return seg.firsts[len(seg.firsts) - left] if left > 0 else None
                left -= len(seg.firsts)
            return next((seg.firsts[0] for seg in self._segments if seg.firsts), None)

    def iter_records(self, from_seq: int) -> Iterator[Record]:
        """Every record from the one holding `from_seq` (trimmed to start there) up to the
        last sequence as of this call."""
        end = self._last_seq
        batch = self.read(from_seq, _ITER_BATCH)  # here, so that errors raise at the call
        return self._iterate(batch, end)

    def _iterate(self, batch: list[Record], end: int) -> Iterator[Record]:
        while batch:
            for rec in batch:
                if rec.first_seq > end:
                    return
                yield rec
            seq = batch[-1].last_seq + 1
            if seq > end:
                return
            batch = self.read(seq, _ITER_BATCH)
            if not batch or batch[0].first_seq != seq:
                raise WALError(f"{self._dir}: sequence {seq} vanished while iterating")

    def _pin(self, seq: int) -> _Segment | None:
        """The segment holding `seq`, kept open until unpinned; None if pruned. Needs _lock."""
        if self._closed:
            raise WALError(f"{self._dir}: WAL is closed")
        if seq < self._starts[0]:
            return None
        seg = self._segments[bisect.bisect_right(self._starts, seq) - 1]
        seg.pins += 1
        return seg

    def _unpin(self, seg: _Segment) -> None:
        """Needs _lock."""
        seg.pins -= 1
        self._release(seg)

    @staticmethod
    def _release(seg: _Segment) -> None:
        """Close a retired segment's descriptor once no reader uses it. Needs _lock."""
        if seg.retired and seg.pins == 0 and seg.fd >= 0:
            os.close(seg.fd)
            seg.fd = -1

    def _read_span(self, seg: _Segment, k: int, j: int) -> list[Record]:
        """Records k..j-1 of `seg`, with one pread; checksums are verified again so that
        damage since the open never reaches a replica."""
        start = seg.offsets[k]
        size = seg.offsets[j - 1] + _RECORD_HEADER.size + seg.lengths[j - 1] - start
        data = _pread_exact(seg.fd, size, start)
        if len(data) != size:
            raise WALError(f"{seg.path} offset {start}: file ends before its indexed records")
        view = memoryview(data)
        out: list[Record] = []
        pos = 0
        for idx in range(k, j):
            crc, length, first, count = _RECORD_HEADER.unpack_from(data, pos)
            body_at = pos + _RECORD_HEADER.size
            body = view[body_at : body_at + length]
            fields = view[pos + _CRC.size : body_at]
            if (
                length != seg.lengths[idx]
                or first != seg.firsts[idx]
                or zlib.crc32(body, zlib.crc32(fields)) != crc
            ):
                raise WALError(f"{seg.path} offset {seg.offsets[idx]}: record damaged on disk")
            out.append(Record(first, count, bytes(body)))
            pos = body_at + length
        return out

    # -- retention and shutdown ----------------------------------------------------------

    def prune_before(self, seq: int) -> int:
        """Delete the segments all of whose entries are below `seq`, never the last one;
        return the bytes freed."""
        with self._write_lock:
            with self._lock:
                self._check_open()
                doomed: list[_Segment] = []
                for seg in self._segments[:-1]:
                    if seg.last_seq >= seq:
                        break
                    doomed.append(seg)
                if not doomed:
                    return 0
                # New lists, so readers pinning from here on never reach the doomed ones.
                self._segments = self._segments[len(doomed) :]
                self._starts = self._starts[len(doomed) :]
                freed = sum(seg.size for seg in doomed)
                self._size -= freed
            try:
                # Oldest first, each synced, so a crash midway leaves a contiguous suffix.
                for seg in doomed:
                    os.unlink(seg.path)
                    if self._fsync:
                        _fsync_dir(self._dir)
            except OSError as exc:
                raise WALError(f"{self._dir}: pruning failed: {exc}") from exc
            finally:
                with self._lock:
                    for seg in doomed:
                        seg.retired = True
                        self._release(seg)
            log.info(
                "WAL %s: pruned %s segments (%s bytes); first retained sequence %s",
                self._dir,
                len(doomed),
                freed,
                self._segments[0].first_seq,
            )
            return freed

    def segments(self) -> list[SegmentInfo]:
        """Every segment, oldest first; the last one is the one being written."""
        with self._lock:
            self._check_open()
            return [
                SegmentInfo(seg.path, seg.first_seq, seg.last_seq, seg.size)
                for seg in self._segments
            ]

    def oldest_segment_end(self) -> int | None:
        """The last sequence of the oldest segment, None when that segment is the one being
        written (then nothing can be pruned)."""
        with self._lock:
            if len(self._segments) < 2:
                return None
            return self._segments[0].last_seq

    def bytes_from(self, seq: int) -> int:
        """Bytes of the durable records holding `seq` and everything after it (all retained
        bytes when `seq` is no longer retained, 0 when it is past the end)."""
        with self._lock:
            self._check_open()
            total = 0
            for seg in self._segments:
                if seg.last_seq < seq:
                    continue
                if seg.first_seq >= seq or not seg.firsts:
                    total += seg.size
                else:
                    i = bisect.bisect_right(seg.firsts, seq) - 1
                    total += seg.size - seg.offsets[i]
            return total

    def _check_open(self) -> None:
        if self._closed:
            raise WALError(f"{self._dir}: WAL is closed")

    def close(self) -> None:
        with self._write_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            for seg in self._segments:
                seg.retired = True
                self._release(seg)

    def __enter__(self) -> WAL:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_wal_at(directory: Path, history_id: str, next_sequence: int) -> None:
    """Create a WAL that continues history `history_id` at `next_sequence`: HISTORY and one
    empty segment named after that sequence, each durable before the next step. Used when a
    replica is promoted: its store holds everything up to `next_sequence - 1`. Refuses a
    directory that already holds a WAL."""
    if not _HISTORY_ID.fullmatch(history_id.encode("ascii")):
        raise WALError(f"not a history id: {history_id!r}")
    if next_sequence < 1:
        raise WALError(f"a WAL cannot start at sequence {next_sequence}")
    directory.mkdir(parents=True, exist_ok=True)
    if list_segments(directory) or (directory / _HISTORY).exists():
        raise WALError(f"{directory} already holds a WAL; nothing was changed")
    tmp = directory / (_HISTORY + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _pwrite_all(fd, history_id.encode("ascii") + b"\n", 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / _HISTORY)
    path = directory / _segment_name(next_sequence)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _pwrite_all(fd, _SEGMENT_HEADER.pack(_SEGMENT_MAGIC, _SEGMENT_VERSION, next_sequence), 0)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    _fsync_dir(directory)
