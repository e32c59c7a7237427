"""Fault-injection plugins for the chaos suite (`kevo-repl chaos`, tests/chaos/).

Node processes load this module through ``KEVO_REPL_PLUGINS=kevo_repl_tools.chaos_plugins``. It
provides:

- **An apply log.** With ``$KEVO_CHAOS_APPLY_LOG`` set, one line ``NODE FIRST LAST COUNT``
  per batch the node committed (line-buffered appends: a SIGKILL loses no completed line).
  The chaos checker reads it to prove that no sequence is applied twice.
- **``faulty-NAME`` appliers** (``faulty-lmdb``, ``faulty-leveldb``): the real ``NAME``
  applier, looked up in the plugin registry, with disk errors on demand. When the file
  ``DATA_DIR/inject-enospc`` appears holding a number N, the wrapper removes it and fails
  the next N ``apply`` calls with ``StoreError("ENOSPC ...")`` *before* touching the store,
  as a full disk would: nothing of the batch is written, the position is unchanged, and the
  node must retry. The store on disk is the real applier's, so it can be opened later with
  ``NAME`` itself.
- **``broken-NAME`` appliers** (``broken-lmdb``, ``broken-leveldb``): deliberately WRONG, to
  prove that the chaos checker catches a real bug. It keeps its position and its data in two
  separate stores of the real applier and commits the position first, then (after a pause of
  ``$KEVO_CHAOS_BROKEN_WINDOW_S`` seconds, 0.05 by default) the data. A SIGKILL between the
  two commits leaves a position that claims entries the store does not hold; the replica
  resumes after them and they are lost. Never use it for anything but that demonstration.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kevo_repl.errors import StoreError
from kevo_repl.plugin.engine import Applier, ApplierFactory, Position
from kevo_repl.plugin.manager import hookimpl
from kevo_repl.plugin.registrars import ApplierRegistrar
from kevo_repl.protocol.codec import Entry, Op

log = logging.getLogger(__name__)

#: file the apply log is appended to (unset: no log)
ENV_APPLY_LOG = "KEVO_CHAOS_APPLY_LOG"
#: seconds the broken appliers wait between committing the position and the data
ENV_BROKEN_WINDOW = "KEVO_CHAOS_BROKEN_WINDOW_S"
#: a file in a node's data directory holding N: its faulty applier fails the next N applies
DISK_ERROR_FILE = "inject-enospc"
#: the real appliers that get a faulty-NAME and a broken-NAME variant
WRAPPED = ("lmdb", "leveldb")
#: the broken appliers' position store advances by deleting this key, which never exists
_MARKER_KEY = b"\x00kevo-chaos-position-marker"

_path = os.environ.get(ENV_APPLY_LOG)
# line-buffered append: each line reaches the OS at once, so SIGKILL loses no completed line
_fh = open(_path, "a", buffering=1) if _path else None  # noqa: SIM115  # lives with the node
_fh_lock = threading.Lock()


@hookimpl
def kevo_repl_batch_applied(node: str, first_seq: int, last_seq: int, count: int) -> None:
    if _fh is not None:
        with _fh_lock:
            _fh.write(f"{node} {first_seq} {last_seq} {count}\n")


@hookimpl
def kevo_repl_register_appliers(register: ApplierRegistrar) -> None:
    for name in WRAPPED:
        register(f"faulty-{name}", functools.partial(open_faulty, name))
        register(f"broken-{name}", functools.partial(open_broken, name))


@functools.cache
def _real_factory(name: str) -> ApplierFactory:
    """The real applier's factory, from a registry of its own (built on first use, when a
    node opens its store, so that this module's registration hook does not recurse)."""
    from kevo_repl.plugin.manager import build_registry

    factory: ApplierFactory = build_registry().get("applier", name)
    return factory


# -- faulty-NAME: the real applier, with injected disk errors -----------------------------------


class FaultyApplier:
    """Delegates everything to the real applier; fails applies on demand (see the module)."""

    def __init__(self, name: str, inner: Any, control: Path) -> None:
        self.name = f"faulty-{name}"
        #: the real applier (typed loosely: the wrapper forwards whatever it offers)
        self.inner: Any = inner
        self.max_key_size = inner.max_key_size
        self.control = control
        #: applies still to fail, and applies failed so far
        self.pending_failures = 0
        self.failures = 0
        self._lock = threading.Lock()

    def _arm(self) -> None:
        try:
            text = self.control.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s: %s", self.control, exc)
            return
        try:
            self.control.unlink()
        except FileNotFoundError:
            pass
        try:
            count = max(1, int(text.strip() or "1"))
        except ValueError:
            count = 1
        self.pending_failures += count
        log.warning("%s: injecting ENOSPC into the next %d applies", self.name, count)

    def position(self) -> Position:
        pos: Position = self.inner.position()
        return pos

    def apply(
        self, entries: Sequence[Entry], history_id: str, *args: Any, **kwargs: Any
    ) -> Position:
        with self._lock:
            self._arm()
            if entries and self.pending_failures > 0:
                self.pending_failures -= 1
                self.failures += 1
                raise StoreError(
                    f"ENOSPC: no space left on device (injected by {self.name}); entries "
                    f"{entries[0].seq}..{entries[-1].seq} were not applied, the position "
                    f"stays at {self.inner.position().sequence}"
                )
        # anything else the contract passes (or will pass) goes through untouched
        pos: Position = self.inner.apply(entries, history_id, *args, **kwargs)
        return pos

    def sync(self) -> None:
        self.inner.sync()

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.inner.get(key)
        return value

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def load(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        loaded: int = self.inner.load(items)
        return loaded

    def set_position(self, position: Position) -> None:
        self.inner.set_position(position)

    def close(self) -> None:
        self.inner.close()


def open_faulty(name: str, path: Path, options: Mapping[str, Any], durable: bool) -> Applier:
    inner = _real_factory(name)(Path(path), options, durable)
    # the store lives in DATA_DIR/store; the runner drops its control file in DATA_DIR
    return FaultyApplier(name, inner, Path(path).parent / DISK_ERROR_FILE)


# -- broken-NAME: position committed before the data (deliberately wrong) -----------------------


class _BrokenView:
    def __init__(self, data_view: Any, position: Position) -> None:
        self._view = data_view
        self._position = position

    @property
    def position(self) -> Position:
        return self._position

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        items: Iterator[tuple[bytes, bytes]] = (
            self._view.items() if after is None else self._view.items(after)
        )
        return items


class BrokenApplier:
    """Two real stores, `position` and `data`; see the module's docstring for the bug."""

    def __init__(self, name: str, position: Any, data: Any, window_s: float) -> None:
        self.name = f"broken-{name}"
        self._pos: Any = position
        self._data: Any = data
        self.max_key_size = data.max_key_size
        self.window_s = window_s
        self._lock = threading.Lock()

    def position(self) -> Position:
        pos: Position = self._pos.position()
        return pos

    def apply(
        self, entries: Sequence[Entry], history_id: str, *args: Any, **kwargs: Any
    ) -> Position:
        if not entries:
            return self.position()
        with self._lock:
            current = self._pos.position()
            if entries[0].seq != current.sequence + 1:
                raise StoreError(
                    f"{self.name} expected entry {current.sequence + 1} next but the batch "
                    f"starts at {entries[0].seq}; nothing was applied"
                )
            # THE BUG: the position is committed in a transaction of its own...
            markers = [Entry(e.seq, Op.DELETE, _MARKER_KEY, b"") for e in entries]
            new_pos: Position = self._pos.apply(markers, history_id, *args, **kwargs)
            time.sleep(self.window_s)
            # ...and the data in another one: a crash in between loses these entries.
            done = self._data.position().sequence
            self._data.apply(
                [Entry(done + 1 + i, e.op, e.key, e.value) for i, e in enumerate(entries)],
                history_id,
            )
            return new_pos

    def sync(self) -> None:
        self._pos.sync()
        self._data.sync()

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._data.get(key)
        return value

    @contextmanager
    def snapshot(self) -> Iterator[_BrokenView]:
        with self._data.snapshot() as view:
            yield _BrokenView(view, self._pos.position())

    def load(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        loaded: int = self._data.load(items)
        return loaded

    def set_position(self, position: Position) -> None:
        self._pos.set_position(position)

    def close(self) -> None:
        self._pos.close()
        self._data.close()


def open_broken(name: str, path: Path, options: Mapping[str, Any], durable: bool) -> Applier:
    factory = _real_factory(name)
    path = Path(path)
    pos = factory(path / "position", options, durable)
    try:
        data = factory(path / "data", options, durable)
    except BaseException:
        pos.close()
        raise
    window = float(os.environ.get(ENV_BROKEN_WINDOW, "0.05"))
    log.warning("%s: position committed %.3fs before the data: this store LOSES entries "
                "when killed; it exists only to show the chaos checker catching it",
                f"broken-{name}", window)
    return BrokenApplier(name, pos, data, window)
