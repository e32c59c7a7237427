"""Opening a node's local store through its applier, and what is computed over a store."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kevo_repl.config import Config
from kevo_repl.errors import StoreError
from kevo_repl.plugin.manager import Registry
from kevo_repl.storage.applier import Applier, open_applier

log = logging.getLogger(__name__)

NODE_FILE = "node.json"
STORE_DIR = "store"
_LEN = struct.Struct("<I")


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new content."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data directory for this process's lifetime: two nodes
    on one directory would corrupt each other's WAL and store. Returns the lock's fd."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise StoreError(f"{data_dir} is in use by another kevo-repl process{pid}") from None
    # the holder's pid, for the message above (the lock itself is the flock, not the file)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def read_node_file(marker: Path) -> dict[str, str]:
    """`node.json`: what a data directory was made for. Damaged, truncated or wrongly typed
    content is a StoreError naming the file and the field; it is never rewritten."""
    try:
        found = json.loads(marker.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{marker} is unreadable or damaged ({exc}); it names the node's "
                         "role and applier: restore it or use another --data-dir") from exc
    if not isinstance(found, dict):
        raise StoreError(f"{marker} is damaged: a JSON object with role and applier expected, "
                         f"found a {type(found).__name__}")
    for key in ("role", "applier"):
        value = found.get(key)
        if not isinstance(value, str) or not value:
            raise StoreError(f"{marker} is damaged: field {key!r} is {value!r}, not a name")
    if found["role"] not in ("primary", "replica"):
        raise StoreError(f"{marker} is damaged: field 'role' is {found['role']!r}, not "
                         "'primary' or 'replica'")
    return {"role": found["role"], "applier": found["applier"]}


def open_store(cfg: Config, registry: Registry, *, durable: bool) -> Applier:
    """Open the data directory's store, refusing one made for another role or applier."""
    data_dir = cfg.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    marker = data_dir / NODE_FILE
    wanted = {"role": cfg.node.role, "applier": cfg.applier.name}
    if marker.exists():
        found = read_node_file(marker)
        for key in ("role", "applier"):
            if found.get(key) != wanted[key]:
                raise StoreError(_mismatch(data_dir, found, wanted))
    name = cfg.applier.name
    spec = registry.get("applier", name)
    store = open_applier(name, spec, data_dir / STORE_DIR, cfg.applier.options, durable)
    if not marker.exists():
        write_file_atomically(marker, json.dumps(wanted).encode())
    log.info("%s store position: %d", cfg.applier.name, store.position().sequence)
    return store


@dataclass
class Bucket:
    """Digest of the keys sharing one prefix."""

    prefix: bytes
    exact: bool = False
    keys: int = 0
    first_key: bytes = b""
    last_key: bytes = b""
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)

    def add(self, key: bytes, value: bytes) -> None:
        h = self._hash
        h.update(_LEN.pack(len(key)))
        h.update(key)
        h.update(_LEN.pack(len(value)))
        h.update(value)
        if not self.keys:
            self.first_key = key
        self.last_key = key
        self.keys += 1

    @property
    def digest(self) -> str:
        return str(self._hash.hexdigest())


@dataclass(frozen=True)
class Digest:
    sequence: int
    keys: int
    digest: str
    buckets: tuple[Bucket, ...] = ()


def digest(
    store: Applier, prefix: bytes = b"", split: bool = False,
    opened: Callable[[], None] | None = None,
) -> Digest:
    """SHA-256 over every live key and value (length-prefixed, in key order), read in one
    consistent snapshot together with the position it belongs to. With `prefix`, only keys
    that start with it; with `split`, also one digest per next byte after the prefix (how
    `verify` narrows a difference down to key ranges). `opened` is called once the snapshot
    is taken (the primary holds its commits until then)."""
    total = Bucket(prefix)
    buckets: dict[bytes, Bucket] = {}
    depth = len(prefix)
    with store.snapshot() as snap:
        if opened is not None:
            opened()
        for key, value in snap.items():
            if prefix and not key.startswith(prefix):
                # keys are in order: past the prefix's range, nothing more can match
                if key > prefix:
                    break
                continue
            total.add(key, value)
            if split:
                sub = key[: depth + 1]
                bucket = buckets.get(sub)
                if bucket is None:
                    bucket = buckets[sub] = Bucket(sub, exact=len(key) == depth)
                bucket.add(key, value)
        return Digest(snap.position.sequence, total.keys, total.digest, tuple(buckets.values()))


def _mismatch(data_dir: Path, found: dict[str, Any], wanted: dict[str, str]) -> str:
    """Name only what differs, and what to do about it."""
    if found.get("role") != wanted["role"]:
        return (
            f"{data_dir} holds a {found.get('role')}'s data; it cannot be run as a "
            f"{wanted['role']}. Start it as `kevo-repl {found.get('role')}`, or give the "
            f"{wanted['role']} its own --data-dir"
        )
    return (
        f"{data_dir} holds a store of the {found.get('applier')!r} applier, which the "
        f"{wanted['applier']!r} applier cannot open. Start it with --applier "
        f"{found.get('applier')}, or use another --data-dir"
    )
