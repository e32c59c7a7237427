"""Reading `slots.json`: every field checked, a damaged file refused with its name and field.

The file decides what WAL retention keeps and which sequences WAL recovery must not cut, so a
value that is not what the primary wrote is an error at start, never a guess."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kevo_repl.errors import StoreError
from kevo_repl.identity import replica_id_problem

_INTS = ("acked", "start", "implied", "sent")
_FLOATS = ("last_ack_at", "lost_at", "last_seen_at")
_BOOLS = ("lost", "never_acks")
#: a KevoDB replica's slot is keyed by its listener address, at most this long
MAX_ADDRESS_BYTES = 256
_FIELDS = ("replica_id", *_INTS, *_FLOATS, *_BOOLS)


def read_slot_file(path: Path) -> list[dict[str, Any]]:
    """The slots in `path`, each a dict of checked fields; StoreError naming the file and
    field when anything is wrong."""
    hint = "restore it from a backup, or remove it to start without slots (replicas re-register)"
    try:
        raw = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path} is damaged (not JSON: {exc}); {hint}") from exc
    if not isinstance(raw, list):
        raise StoreError(f"{path} is damaged: a list of slots expected; {hint}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"{path}: slot {i}"
        if not isinstance(item, dict):
            raise StoreError(f"{where} is not an object; {hint}")
        unknown = sorted(set(item) - set(_FIELDS))
        if unknown:
            raise StoreError(f"{where}: unknown field {unknown[0]!r}; {hint}")
        rid = item.get("replica_id")
        if item.get("never_acks") is True:  # keyed by a listener address, not a replica id
            valid = (isinstance(rid, str) and 0 < len(rid.encode()) <= MAX_ADDRESS_BYTES
                     and rid.isprintable())
        else:
            valid = isinstance(rid, str) and replica_id_problem(rid) is None
        if not valid or not isinstance(rid, str):
            raise StoreError(f"{where}: field 'replica_id' is not a valid replica id; {hint}")
        if rid in seen:
            raise StoreError(f"{where}: replica id {rid!r} appears twice; {hint}")
        seen.add(rid)
        for name in _INTS:
            value = item.get(name, 0)
            if type(value) is not int or value < 0:
                raise StoreError(
                    f"{where} ({rid}): field {name!r} must be a non-negative integer, "
                    f"not {value!r}; {hint}"
                )
        for name in _FLOATS:
            value = item.get(name, 0.0)
            if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
                raise StoreError(
                    f"{where} ({rid}): field {name!r} must be a non-negative number, "
                    f"not {value!r}; {hint}"
                )
        for name in _BOOLS:
            value = item.get(name, False)
            if type(value) is not bool:
                raise StoreError(
                    f"{where} ({rid}): field {name!r} must be true or false, not {value!r}; "
                    f"{hint}"
                )
        out.append(dict(item))
    return out
