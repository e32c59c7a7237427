"""The checked-in generated modules must be what the .proto sources generate now."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="needs grpcio-tools")
def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(tmp_path)],
                   check=True, timeout=120)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert generated, "the generator produced nothing"
    for rel in generated:
        checked_in = ROOT / rel
        assert checked_in.exists(), f"{rel} is generated but not checked in"
        assert checked_in.read_bytes() == (tmp_path / rel).read_bytes(), (
            f"{rel} is stale: run python scripts/gen_proto.py"
        )


def test_kevodb_field_numbers_unchanged() -> None:
    from kevo_repl.protocol.proto import replication_pb2 as rpb

    def numbers(msg: object) -> dict[str, int]:
        return {f.name: f.number for f in msg.DESCRIPTOR.fields if f.number < 16}  # type: ignore[attr-defined]

    assert numbers(rpb.WALStreamRequest) == {
        "start_sequence": 1, "protocol_version": 2, "compression_supported": 3,
        "preferred_codec": 4, "listener_address": 5,
    }
    assert numbers(rpb.WALStreamResponse) == {"entries": 1, "compressed": 2, "codec": 3}
    assert numbers(rpb.WALEntry) == {
        "sequence_number": 1, "payload": 2, "fragment_type": 3, "checksum": 4,
    }
    assert numbers(rpb.Ack) == {"acknowledged_up_to": 1}
    assert numbers(rpb.Nack) == {"missing_from_sequence": 1}
    service = rpb.DESCRIPTOR.services_by_name["WALReplicationService"]
    assert {m.name for m in service.methods} >= {"StreamWAL", "Acknowledge", "NegativeAcknowledge"}
    assert rpb.DESCRIPTOR.package == "kevo.replication"
