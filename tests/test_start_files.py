"""Every file a node reads at start, damaged: one clear error naming the file (or store) and
the field, exit code 2, no traceback, and not one byte on disk changed.

A real primary and replica make the files once; each test copies their data directories,
damages one file, and starts the node again through the `kevo-repl` script.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_script import run
from helpers import load, wait_caught_up
from kevo_repl_lmdb import SPEC as LMDB
from kevo_repl_tools.launcher import NodeProcess

#: nothing in these tests waits long: a refused start exits at once
START_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A stopped primary (`primary/`) and replica (`replica/`, derived replica id) that
    replicated 500 entries."""
    root = tmp_path_factory.mktemp("seed")
    primary = NodeProcess("primary", root / "primary", applier="lmdb")
    replica = NodeProcess("replica", root / "replica", applier="lmdb", primary="")
    try:
        primary.start()
        replica.primary = primary.address
        replica.start()
        load(primary.address, 500)
        wait_caught_up(primary, replica)
        assert replica.terminate() == 0
        assert primary.terminate() == 0
    finally:
        replica.kill()
        primary.kill()
    assert (root / "replica" / "replica_id").exists()
    yield root


def _copy(seeded: Path, tmp_path: Path, role: str) -> Path:
    data_dir = tmp_path / role
    shutil.copytree(seeded / role, data_dir)
    return data_dir


def _files(data_dir: Path) -> dict[str, bytes]:
    """Every file's bytes, except lock files (our LOCK holds its holder's pid, LMDB resets
    lock.mdb at every open): data only."""
    return {
        str(p.relative_to(data_dir)): p.read_bytes()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and p.name not in ("LOCK", "lock.mdb")
    }


def _start(role: str, data_dir: Path) -> subprocess.CompletedProcess[bytes]:
    args = ["--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--applier", "lmdb"]
    if role == "replica":
        args += ["--primary", "127.0.0.1:1"]  # never reached: the start is refused first
    return run(role, *args, timeout=START_TIMEOUT_S)


def _assert_refused(role: str, data_dir: Path, *needles: str) -> str:
    before = _files(data_dir)
    res = _start(role, data_dir)
    err = res.stderr.decode()
    assert res.returncode == 2, (res.returncode, err)
    assert "Traceback" not in err, err
    assert b"listening" not in res.stdout
    for needle in needles:
        assert needle in err, (needle, err)
    # one error line, not a cascade
    assert len([line for line in err.splitlines() if line.startswith("kevo-repl: error")]) == 1
    assert _files(data_dir) == before, "a refused start changed the data directory"
    return err


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


@pytest.mark.parametrize(
    ("content", "field"),
    [(b"1 1 zz\n", "line 1 is not an epoch"), (b"1 1 0\n2 0", "line 2 is not an epoch"),
     (b"", "at least one epoch"), (b"\xff\xfe", "unreadable")],
)
def test_replica_epochs_file(seeded: Path, tmp_path: Path, content: bytes, field: str) -> None:
    data_dir = _copy(seeded, tmp_path, "replica")
    _write(data_dir / "EPOCHS", content)
    _assert_refused("replica", data_dir, str(data_dir / "EPOCHS"), field)


def test_primary_epochs_file(seeded: Path, tmp_path: Path) -> None:
    data_dir = _copy(seeded, tmp_path, "primary")
    path = data_dir / "wal" / "EPOCHS"
    _write(path, b"1 1 0\n1 5 0\n")  # numbers must grow
    _assert_refused("primary", data_dir, str(path), "cannot follow")


@pytest.mark.parametrize("content", [b"", b"0123", b"\xff" * 32, b"g" * 32])
def test_primary_history_file(seeded: Path, tmp_path: Path, content: bytes) -> None:
    data_dir = _copy(seeded, tmp_path, "primary")
    path = data_dir / "wal" / "HISTORY"
    _write(path, content)
    _assert_refused("primary", data_dir, str(path), "history id")


@pytest.mark.parametrize(
    "content", [b"", b"bad id with spaces\n", b"\xff\xfe\n", b"x" * 300]
)
def test_replica_id_file(seeded: Path, tmp_path: Path, content: bytes) -> None:
    data_dir = _copy(seeded, tmp_path, "replica")
    _write(data_dir / "replica_id", content)
    _assert_refused("replica", data_dir, f"{data_dir / 'replica_id'} is damaged",
                    "replica id", "--replica-id")


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b'{"role": "repl', "unreadable or damaged"),
        (b"\xff\xfe", "unreadable or damaged"),
        (b'["replica", "lmdb"]', "found a list"),
        (b'{"role": 7, "applier": "lmdb"}', "field 'role' is 7"),
        (b'{"role": "replica"}', "field 'applier' is None"),
        (b'{"role": "witness", "applier": "lmdb"}', "field 'role' is 'witness'"),
    ],
)
@pytest.mark.parametrize("role", ["primary", "replica"])
def test_node_json(seeded: Path, tmp_path: Path, role: str, content: bytes, field: str) -> None:
    data_dir = _copy(seeded, tmp_path, role)
    _write(data_dir / "node.json", content)
    _assert_refused(role, data_dir, str(data_dir / "node.json"), field)


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b'{"sequence": 5, "history_id": "h"', "unreadable or damaged"),
        (b"[]", "found a list"),
        (b'{"sequence": "5", "history_id": "h", "applied_entries": 5}', "'sequence' is '5'"),
        (b'{"sequence": 5, "history_id": "h", "applied_entries": -1}',
         "'applied_entries' is -1"),
        (b'{"sequence": 5, "history_id": 3, "applied_entries": 5}', "'history_id' is 3"),
    ],
)
def test_bootstrap_marker(seeded: Path, tmp_path: Path, content: bytes, field: str) -> None:
    data_dir = _copy(seeded, tmp_path, "replica")
    shutil.copytree(data_dir / "store", data_dir / "store.bootstrap")  # an install to finish
    _write(data_dir / "bootstrap.json", content)
    _assert_refused("replica", data_dir, str(data_dir / "bootstrap.json"), field,
                    "install cannot be finished")
    assert (data_dir / "store").is_dir() and (data_dir / "store.bootstrap").is_dir()


def _damage_meta(store: Path, damage: Callable[[bytes], bytes]) -> None:
    """Rewrite the replication metadata blob the core applier keeps in an LMDB store."""
    engine = LMDB.open(store, {}, True)
    try:
        meta = engine.read_meta()
        assert meta is not None
        engine.commit([], [], [], damage(meta))
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        (lambda b: b[:10], "truncated"),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + b"\x07" + b[5:], "format version"),
        (lambda b: b + b"\xff", "history_id is not UTF-8"),
    ],
)
@pytest.mark.parametrize("role", ["primary", "replica"])
def test_store_metadata_blob(
    seeded: Path, tmp_path: Path, role: str, damage: Callable[[bytes], bytes], field: str
) -> None:
    data_dir = _copy(seeded, tmp_path, role)
    _damage_meta(data_dir / "store", damage)
    err = _assert_refused(role, data_dir, f"the lmdb store at {data_dir / 'store'} is damaged",
                          "replication metadata", field)
    if role == "replica":  # the default policy says what to do
        assert "on_damage" in err


@pytest.mark.parametrize("content", [b"\xff\xfe:1", b"nonsense", b""])
def test_node_addr_read_by_a_client(seeded: Path, tmp_path: Path, content: bytes) -> None:
    """node.addr is read by client commands given a data directory as their target."""
    data_dir = _copy(seeded, tmp_path, "primary")
    _write(data_dir / "node.addr", content)
    before = _files(data_dir)
    res = run("status", "--target", str(data_dir), timeout=START_TIMEOUT_S)
    err = res.stderr.decode()
    assert res.returncode == 2 and "Traceback" not in err, err
    assert str(data_dir / "node.addr") in err and "HOST:PORT" in err, err
    assert _files(data_dir) == before
