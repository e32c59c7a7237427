"""One damaged byte in a real primary's active WAL segment: the primary refuses to start,
says where, and leaves every byte on disk; no acknowledged sequence is handed out again.

Reproduces hardening issue item 1: `[wal] segment_bytes = 65536`, 300 puts of 500 bytes,
SIGTERM, one byte XORed at offset 46 of the last segment (inside its first record), restart.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import cli, wait_caught_up
from kevo_repl_tools.launcher import NodeProcess

from kevo_repl.errors import KevoReplError

pytestmark = pytest.mark.crash

SEGMENT_HEADER = 16
RECORD_HEADER = 20
VALUE_SIZE = 500


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "primary.toml"
    path.write_text("[wal]\nsegment_bytes = 65536\n")
    return path


def _put(node: NodeProcess, count: int, start: int) -> None:
    """`count` puts of VALUE_SIZE bytes, one write (one WAL record) each."""
    res = cli("load", "--target", node.address, "--count", str(count), "--start", str(start),
              "--value-size", str(VALUE_SIZE), "--batch", "1")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1])["entries"] == count


def _wal_bytes(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((data_dir / "wal").iterdir())}


def _last_segment(data_dir: Path) -> Path:
    return sorted((data_dir / "wal").glob("*.wal"))[-1]


def _xor_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def _assert_refuses(node: NodeProcess, needles: list[str]) -> str:
    """Starting `node` fails, and its error output holds every needle."""
    with pytest.raises(KevoReplError, match="did not start"):
        node.start(timeout=60)
    assert not node.running
    out = node.stderr_file.read_text() + node.log_file.read_text()
    for needle in needles:
        assert needle in out, (needle, out[-3000:])
    assert "dropped" not in out  # nothing was cut as a "torn tail"
    return out


def _primary(tmp_path: Path) -> NodeProcess:
    return NodeProcess("primary", tmp_path / "primary", applier="lmdb", config=_config(tmp_path))


def test_damaged_first_record_of_the_active_segment_refuses(tmp_path: Path) -> None:
    primary = _primary(tmp_path)
    try:
        primary.start()
        _put(primary, 300, 0)
        assert primary.terminate() == 0
        segment = _last_segment(primary.data_dir)
        first_seq = int(segment.stem)
        assert 1 < first_seq < 300  # 300 records of ~600 bytes span several 64 KiB segments
        assert segment.stat().st_size > 16_000
        _xor_byte(segment, 46)
        before = _wal_bytes(primary.data_dir)

        _assert_refuses(primary, [
            f"{segment} offset {SEGMENT_HEADER}:",
            f"last good sequence {first_seq - 1}",
            "valid record follows",
        ])
        assert _wal_bytes(primary.data_dir) == before  # not one byte cut or rewritten

        # The check reports the same, read-only, and exits 1.
        res = cli("wal", "check", "--json", str(primary.data_dir))
        assert res.returncode == 1, res.stderr
        report = json.loads(res.stdout)
        assert report["damaged"] and report["last_good_sequence"] == first_seq - 1
        [finding] = report["findings"]
        assert (finding["path"], finding["offset"], finding["kind"]) == (
            str(segment), SEGMENT_HEADER, "damaged")
        assert _wal_bytes(primary.data_dir) == before

        # A second start refuses the same way: the refusal did not "repair" anything.
        _assert_refuses(primary, [f"last good sequence {first_seq - 1}"])
        assert _wal_bytes(primary.data_dir) == before
    finally:
        primary.kill()


def test_store_behind_the_wal_never_reissues_an_acknowledged_sequence(tmp_path: Path) -> None:
    """The primary's store is applied without sync, so it may be behind its WAL (here: a
    copy taken at sequence 200). Damage in the active segment must not let the primary serve
    from the store's position and hand out sequences 201.. again."""
    primary = _primary(tmp_path)
    store_copy = tmp_path / "store-at-200"
    try:
        primary.start()
        _put(primary, 200, 0)
        assert primary.terminate() == 0
        shutil.copytree(primary.data_dir / "store", store_copy)
        primary.start()
        _put(primary, 100, 200)
        assert primary.status()["head_sequence"] == 300
        assert primary.terminate() == 0
        shutil.rmtree(primary.data_dir / "store")
        shutil.copytree(store_copy, primary.data_dir / "store")

        segment = _last_segment(primary.data_dir)
        first_seq = int(segment.stem)
        assert 200 < first_seq < 300
        _xor_byte(segment, 46)
        before = _wal_bytes(primary.data_dir)
        _assert_refuses(primary, [f"{segment} offset {SEGMENT_HEADER}:",
                                  f"last good sequence {first_seq - 1}"])
        assert _wal_bytes(primary.data_dir) == before
    finally:
        primary.kill()


def test_damaged_last_record_a_replica_acknowledged_refuses(tmp_path: Path) -> None:
    """Damage in the very last record looks like a torn write; with the store behind, only
    the replica's durable acknowledgement (its slot) proves the record was acknowledged."""
    primary = _primary(tmp_path)
    replica = NodeProcess("replica", tmp_path / "replica", applier="lmdb",
                          primary="", replica_id="r1")
    store_copy = tmp_path / "store-at-200"
    try:
        primary.start()
        _put(primary, 200, 0)
        assert primary.terminate() == 0
        shutil.copytree(primary.data_dir / "store", store_copy)
        primary.start()
        replica.primary = primary.address
        replica.start()
        _put(primary, 100, 200)
        wait_caught_up(primary, replica)
        replica.terminate()
        assert primary.terminate() == 0
        slots = json.loads((primary.data_dir / "slots.json").read_text())
        assert [s["acked"] for s in slots] == [300]
        shutil.rmtree(primary.data_dir / "store")
        shutil.copytree(store_copy, primary.data_dir / "store")

        segment = _last_segment(primary.data_dir)
        last_record_body = segment.stat().st_size - VALUE_SIZE // 2
        _xor_byte(segment, last_record_body)
        before = _wal_bytes(primary.data_dir)
        _assert_refuses(primary, [str(segment), "last good sequence 299",
                                  "sequence 300 was acknowledged"])
        assert _wal_bytes(primary.data_dir) == before
        res = cli("wal", "check", str(primary.data_dir))
        assert res.returncode == 1 and "replica acknowledged sequence 300" in res.stdout
    finally:
        replica.kill()
        primary.kill()


def test_rebuild_the_primary_from_a_replica(tmp_path: Path) -> None:
    """The documented way back: a new primary filled from the stopped replica's store, and
    replicas re-created empty, which bootstrap from it."""
    primary = _primary(tmp_path)
    replica = NodeProcess("replica", tmp_path / "replica", applier="lmdb",
                          primary="", replica_id="r1")
    new_primary = NodeProcess("primary", tmp_path / "new-primary", applier="leveldb")
    new_replica = NodeProcess("replica", tmp_path / "new-replica", applier="lmdb",
                              primary="", replica_id="r1")
    try:
        primary.start()
        replica.primary = primary.address
        replica.start()
        _put(primary, 300, 0)
        wait_caught_up(primary, replica)
        want = replica.digest()
        assert (want["sequence"], want["keys"]) == (300, 300)
        replica.terminate()
        primary.terminate()
        _xor_byte(_last_segment(primary.data_dir), 46)
        _assert_refuses(primary, ["valid record follows"])

        new_primary.start()
        args = ["rebuild-primary", "--from-replica", str(replica.data_dir), "--applier", "lmdb",
                "--target", new_primary.address, "--batch-bytes", "20000"]
        res = cli(*args)
        assert res.returncode == 0, res.stderr
        result = json.loads(res.stdout)
        assert result["replica_sequence"] == 300 and result["keys"] == 300
        assert result["first_sequence"] == 1 and result["last_sequence"] == 300
        got = new_primary.digest()
        assert (got["keys"], got["digest"]) == (want["keys"], want["digest"])
        # A second copy into the now non-empty primary is refused.
        again = cli(*args)
        assert again.returncode == 2 and "is not empty" in again.stderr

        new_replica.primary = new_primary.address
        new_replica.start()
        wait_caught_up(new_primary, new_replica)
        assert new_replica.digest()["digest"] == want["digest"]
    finally:
        for node in (new_replica, new_primary, replica, primary):
            node.kill()
