"""`kevo-repl verify`: equal stores pass; a store changed behind the replica's back is found
and the differing key range printed."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import cli, load, wait_caught_up


def _tamper(store_dir: Path, applier: str, key: bytes, value: bytes | None) -> None:
    """Change one key directly in the store files, as a bug or an operator might."""
    if applier == "lmdb":
        import lmdb

        env = lmdb.open(str(store_dir), max_dbs=2, subdir=True)
        data = env.open_db(b"data")
        with env.begin(write=True) as txn:
            if value is None:
                txn.delete(key, db=data)
            else:
                txn.put(key, value, db=data)
        env.close()
    else:
        import plyvel

        db = plyvel.DB(str(store_dir))
        if value is None:
            db.delete(b"d" + key, sync=True)
        else:
            db.put(b"d" + key, value, sync=True)
        db.close()


def test_verify_equal_then_tampered(cluster, applier: str) -> None:
    primary = cluster.primary()
    replica = cluster.replica(primary)
    load(primary.address, 3_000)
    wait_caught_up(primary, replica)

    res = cli("verify", "--primary", primary.address, "--replica", replica.address, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["equal"] and out["sequence"] == 3_000 and out["ranges"] == []

    replica.terminate()
    _tamper(replica.data_dir / "store", applier, b"key0000000001234", b"tampered")
    _tamper(replica.data_dir / "store", applier, b"key0000000002500", None)
    replica.start()
    wait_caught_up(primary, replica)

    res = cli("verify", "--primary", primary.address, "--replica", replica.address)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "DIFFERENT at sequence 3000" in res.stdout
    res = cli("verify", "--primary", primary.address, "--replica", replica.address, "--json")
    ranges = json.loads(res.stdout)["ranges"]
    assert len(ranges) == 2
    changed, deleted = ranges
    assert changed["first_key"] <= "key0000000001234" <= changed["last_key"]
    assert changed["primary_keys"] == changed["replica_keys"]
    assert deleted["first_key"] <= "key0000000002500" <= deleted["last_key"]
    assert deleted["primary_keys"] == deleted["replica_keys"] + 1
    # narrowed down to a handful of keys, not the whole store
    assert changed["primary_keys"] <= 16 and deleted["primary_keys"] <= 16
