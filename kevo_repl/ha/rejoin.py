"""`kevo-repl rejoin`: turn an old primary, or a replica that forked, into a replica of the
new primary's history.

The new primary names its epoch history in its Status answer. Against it:
- the fork point F is the last sequence both histories share (`storage.epochs.fork_point`);
  on an old primary it is proven: its WAL's hash chain after F must equal the chain the new
  epoch records at its start, else nothing is changed;
- entries this node holds past F were never part of the new history: they are counted and
  reported (`discarded_entries`, first and last sequence), and kept aside in
  `DATA_DIR/discarded-epoch-N/` (WAL, slots, store) for inspection, never deleted;
- a store at or below F is kept and streams on from its position (a replica behind the new
  primary's first retained sequence bootstraps as usual); a store past F is moved aside, and
  the node bootstraps from the new primary's snapshot. (No engine offers an undo of applied
  entries, so rewinding a store is a re-bootstrap.)
Finally the node's epoch history becomes the new primary's, and `node.json` names it a replica.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from kevo_repl.client.client import Client
from kevo_repl.config import Config
from kevo_repl.errors import KevoReplError, StoreError
from kevo_repl.ha.discarded import REPORT_FILE
from kevo_repl.ha.node_dir import read_role, write_role
from kevo_repl.plugin.manager import Registry
from kevo_repl.primary.slots import SlotTable
from kevo_repl.protocol.records import chain_of
from kevo_repl.storage import epochs as epochs_mod
from kevo_repl.storage.epochs import Epoch
from kevo_repl.storage.store import STORE_DIR, lock_data_dir, open_store, write_file_atomically
from kevo_repl.storage.wal import WAL

log = logging.getLogger(__name__)

SLOTS_FILE = "slots.json"
WAL_DIR = "wal"


@dataclass(frozen=True)
class RejoinResult:
    was: str
    #: the last sequence both histories share
    fork_point: int
    #: entries this node held past the fork point (never replicated into the new history)
    discarded_entries: int
    discarded_first: int
    discarded_last: int
    #: the store kept (it streams on) or moved aside (it bootstraps)
    store_kept: bool
    new_epoch: int
    #: where what was set aside lies ("" when nothing was)
    kept_in: str


def new_primary_epochs(target: str, client: Client) -> tuple[str, tuple[Epoch, ...]]:
    """The new primary's history id and epoch history."""
    status = client.status()
    if status.get("role") != "primary":
        raise KevoReplError(f"{target} is not a primary (it is a {status.get('role')})")
    text = client.status_headers().get(epochs_mod.EPOCHS_HEADER)
    if not text:
        raise KevoReplError(f"{target} names no epoch history (an older version?)")
    return str(status["history_id"]), epochs_mod.parse(text, header=True)


def rejoin(cfg: Config, registry: Registry, target: str, *, timeout: float = 30.0) -> RejoinResult:
    """Rejoin the stopped node at `cfg.data_dir` to the primary at `target`."""
    with Client(target, timeout=timeout, connector=cfg.connector) as client:
        history_id, theirs = new_primary_epochs(target, client)
    data_dir = cfg.data_dir
    lock = lock_data_dir(data_dir)  # refuses a node that is still running
    try:
        marker = read_role(data_dir)
        cfg.applier.name = marker["applier"] or cfg.applier.name
        cfg.node.role = "primary" if marker["role"] == "primary" else "replica"
        if marker["role"] == "primary":
            result = _rejoin_primary(cfg, registry, history_id, theirs)
        else:
            result = _rejoin_replica(cfg, registry, history_id, theirs)
        epochs_mod.save(data_dir, theirs)
        write_role(data_dir, "replica", cfg.applier.name)
    finally:
        os.close(lock)
    log.warning(
        "rejoined %s (a %s) to epoch %d at fork point %d: %d entries discarded%s",
        data_dir, result.was, result.new_epoch, result.fork_point, result.discarded_entries,
        f", kept in {result.kept_in}" if result.kept_in else "",
    )
    return result


def _store_position(cfg: Config, registry: Registry) -> tuple[int, str]:
    store = open_store(cfg, registry, durable=cfg.node.role == "replica")
    try:
        pos = store.position()
        return pos.sequence, pos.history_id
    finally:
        store.close()


def _rejoin_primary(
    cfg: Config, registry: Registry, history_id: str, theirs: tuple[Epoch, ...]
) -> RejoinResult:
    data_dir = cfg.data_dir
    mine = epochs_mod.load(data_dir / WAL_DIR)
    if theirs[-1].number <= mine[-1].number:
        raise KevoReplError(
            f"the new primary's epoch {theirs[-1].number} is not newer than this primary's "
            f"epoch {mine[-1].number}; nothing was changed"
        )
    stored, _ = _store_position(cfg, registry)
    slots = SlotTable(data_dir / SLOTS_FILE)
    acknowledged = max([stored, *(s.acked for s in slots.slots.values())])
    fork = epochs_mod.fork_point(mine, theirs)
    assert fork is not None  # the histories differ: theirs has a newer epoch
    with WAL(data_dir / WAL_DIR, acknowledged=acknowledged) as wal:
        if wal.history_id != history_id:
            raise KevoReplError(
                f"this primary's history {wal.history_id} is not the new primary's "
                f"{history_id}; start it as a new, empty replica instead"
            )
        head = wal.last_sequence
        if fork < head and fork >= wal.first_sequence:
            _prove_fork(wal, fork, theirs)
    discarded = max(0, head - fork)
    store_kept = stored <= fork
    # a replica keeps no WAL and no slots: set aside with whatever they hold past the fork
    aside = _aside_dir(data_dir, mine[-1].number)
    os.replace(data_dir / WAL_DIR, aside / WAL_DIR)
    if (data_dir / SLOTS_FILE).exists():
        os.replace(data_dir / SLOTS_FILE, aside / SLOTS_FILE)
    if not store_kept:
        os.replace(data_dir / STORE_DIR, aside / STORE_DIR)
    kept_in = str(aside)
    result = RejoinResult(
        "primary", fork, discarded, fork + 1 if discarded else 0, head if discarded else 0,
        store_kept, theirs[-1].number, kept_in,
    )
    write_file_atomically(aside / REPORT_FILE, json.dumps(asdict(result), indent=1).encode())
    _fsync(data_dir)
    return result


def _prove_fork(wal: WAL, fork: int, theirs: tuple[Epoch, ...]) -> None:
    """The chain after `fork` in this WAL must be the one the new epoch started on."""
    expected = next((e.chain for e in theirs if e.start == fork + 1), None)
    if expected is None:
        return
    [record] = wal.read(fork, 1)
    mine = chain_of(record) if record.last_seq == fork else None
    if mine != expected:
        raise KevoReplError(
            f"this primary's log differs from the new primary's before sequence {fork + 1} "
            f"(hash chain {mine or 0:016x}, expected {expected:016x}): the histories part "
            "earlier than the epochs say; nothing was changed"
        )


def _rejoin_replica(
    cfg: Config, registry: Registry, history_id: str, theirs: tuple[Epoch, ...]
) -> RejoinResult:
    data_dir = cfg.data_dir
    mine = epochs_mod.load(data_dir)
    position, store_history = _store_position(cfg, registry)
    if store_history and store_history != history_id:
        raise KevoReplError(
            f"this replica's history {store_history} is not the new primary's {history_id}; "
            "start it as a new, empty replica instead"
        )
    fork = epochs_mod.fork_point(mine, theirs)
    if fork is None or position <= fork:
        return RejoinResult("replica", fork if fork is not None else position, 0, 0, 0, True,
                            theirs[-1].number, "")
    aside = _aside_dir(data_dir, mine[-1].number)
    os.replace(data_dir / STORE_DIR, aside / STORE_DIR)
    result = RejoinResult("replica", fork, position - fork, fork + 1, position, False,
                          theirs[-1].number, str(aside))
    write_file_atomically(aside / REPORT_FILE, json.dumps(asdict(result), indent=1).encode())
    _fsync(data_dir)
    return result


def _aside_dir(data_dir: Path, epoch: int) -> Path:
    n = 0
    while True:
        aside = data_dir / f"discarded-epoch-{epoch}" if n == 0 else data_dir / (
            f"discarded-epoch-{epoch}.{n}")
        if not aside.exists():
            aside.mkdir()
            return aside
        n += 1


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise StoreError(f"cannot sync {path}: {exc}") from exc
    finally:
        os.close(fd)
