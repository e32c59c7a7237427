"""`kevo-repl wal check`: find damage in a primary's WAL without changing anything.

It applies the rules the primary's start-up applies (see kevo_repl.storage.wal), but only reads: no
directory, HISTORY or segment is created, cut or rewritten, so it is safe on a primary that
refused to start and on a copy of one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from kevo_repl.errors import WALError
from kevo_repl.storage.wal import (
    list_segments,
    scan_segment,
    segment_header_problem,
    valid_record_after,
)

#: how many bytes of a segment's header are read to check it
_HEADER_BYTES = 16

Kind = Literal["torn_tail", "damaged"]


@dataclass(frozen=True)
class Finding:
    """One problem, at one offset of one file."""

    path: str
    offset: int
    #: torn_tail: start-up cuts it unless it holds an acknowledged sequence;
    #: damaged: start-up refuses
    kind: Kind
    detail: str


@dataclass
class WALReport:
    directory: str
    segments: int = 0
    first_sequence: int = 0
    #: the last sequence before the first problem (the WAL's end when there is none)
    last_good_sequence: int = 0
    #: highest sequence a replica acknowledged, from the primary's slots.json (0 without one)
    acknowledged_by_replicas: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        """The primary refuses to start on this WAL."""
        return any(f.kind == "damaged" for f in self.findings)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "damaged": self.damaged}, sort_keys=True)


def _acknowledged_by_replicas(data_dir: Path) -> int:
    path = data_dir / "slots.json"
    try:
        slots = json.loads(path.read_text())
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        raise WALError(f"{path}: unreadable: {exc}") from exc
    return max((int(slot.get("acked", 0)) for slot in slots), default=0)


def check_wal(data_dir: Path) -> WALReport:
    """Report every problem start-up would find in `data_dir`/wal, reading only."""
    directory = data_dir / "wal"
    if not directory.is_dir():
        raise WALError(f"{directory}: no WAL directory")
    report = WALReport(str(directory))
    report.acknowledged_by_replicas = _acknowledged_by_replicas(data_dir)
    found = list_segments(directory)
    report.segments = len(found)
    if found and not (directory / "HISTORY").exists():
        report.findings.append(
            Finding(str(directory / "HISTORY"), 0, "damaged", "missing beside segments")
        )
    if found:
        report.first_sequence = found[0][0]
        report.last_good_sequence = found[0][0] - 1
    for n, (first_seq, path) in enumerate(found):
        is_last = n == len(found) - 1
        finding = _check_segment(path, first_seq, report.last_good_sequence, is_last, report)
        if finding is not None:
            report.findings.append(finding)
            break  # what follows damage is not read as if it continued the log
    return report


def _check_segment(
    path: Path, first_seq: int, last_seq: int, is_last: bool, report: WALReport
) -> Finding | None:
    """Check one segment; advance report.last_good_sequence over its good records."""
    if first_seq != last_seq + 1:
        return Finding(
            str(path), 0, "damaged",
            f"segment starts at sequence {first_seq} but the previous one ends at {last_seq}",
        )
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(_HEADER_BYTES)
    problem = segment_header_problem(header, first_seq)
    if problem is not None:
        kind: Kind = "torn_tail" if is_last and file_size <= _HEADER_BYTES else "damaged"
        return Finding(str(path), 0, kind, problem)
    try:
        scan = scan_segment(path, first_seq, file_size)
    except WALError as exc:
        return Finding(str(path), _offset_in(str(exc)), "damaged", str(exc))
    report.last_good_sequence = scan.last_seq
    if scan.problem is None:
        return None
    if not is_last:
        return Finding(str(path), scan.end, "damaged", scan.problem)
    valid_at = valid_record_after(path, scan.end, file_size, scan.last_seq + 1)
    if valid_at is not None:
        return Finding(
            str(path), scan.end, "damaged",
            f"{scan.problem}, yet a valid record follows at offset {valid_at}",
        )
    if report.acknowledged_by_replicas > scan.last_seq:
        return Finding(
            str(path), scan.end, "damaged",
            f"{scan.problem}; a replica acknowledged sequence "
            f"{report.acknowledged_by_replicas}, past the last good one",
        )
    return Finding(
        str(path), scan.end, "torn_tail",
        f"{scan.problem}; {file_size - scan.end} bytes that start-up cuts unless the "
        "primary's store holds a sequence past the last good one (then it refuses)",
    )


def _offset_in(message: str) -> int:
    """The offset a scan error names ('PATH offset N: ...'), 0 if none."""
    head = message.split(":", 1)[0]
    _, _, number = head.rpartition(" offset ")
    return int(number) if number.isdigit() else 0


def describe(report: WALReport) -> list[str]:
    """The report as lines for a terminal."""
    lines = [
        f"WAL {report.directory}: {report.segments} segments, sequences "
        f"{report.first_sequence}..{report.last_good_sequence} good"
        + (f", replicas acknowledged up to {report.acknowledged_by_replicas}"
           if report.acknowledged_by_replicas else ""),
    ]
    for f in report.findings:
        lines.append(f"{f.kind.upper()} {f.path} offset {f.offset}: {f.detail}")
    if report.damaged:
        lines.append(
            f"DAMAGED: the primary refuses to start; last good sequence "
            f"{report.last_good_sequence}. Rebuild it from a replica (README, 'A damaged WAL')"
        )
    elif not report.findings:
        lines.append("OK: no damage")
    return lines

