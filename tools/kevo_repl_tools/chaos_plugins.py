"""Fault-injection plugins for the chaos suite (`kevo-repl chaos`, tests/chaos/).

Node processes load this module through ``KEVO_REPL_PLUGINS=kevo_repl_tools.chaos_plugins``. It
provides:

- **An apply log.** With ``$KEVO_CHAOS_APPLY_LOG`` set, one line ``NODE FIRST LAST COUNT``
  per batch the node committed (line-buffered appends: a SIGKILL loses no completed line).
  The chaos checker reads it to prove that no sequence is applied twice.
- **``faulty-NAME`` engines** (``faulty-lmdb``, ``faulty-leveldb``): the real ``NAME``
  engine, looked up in the plugin registry, with disk errors on demand. When the file
  ``DATA_DIR/inject-enospc`` appears holding a number N, the wrapper removes it and fails
  the next N non-empty commits with ``StoreError("ENOSPC ...")`` *before* touching the store,
  as a full disk would: nothing of the batch is written, the position is unchanged, and the
  node must retry. The store on disk is the real engine's, so it can be opened later with
  ``NAME`` itself.
- **``broken-NAME`` engines** (``broken-lmdb``, ``broken-leveldb``): deliberately WRONG, to
  prove that the chaos checker catches a real bug. It keeps its position and its data in two
  separate stores of the real engine and commits the position (the core's metadata blob)
  first, then (after a pause of
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kevo_repl.errors import StoreError
from kevo_repl.plugin.engine import Engine, EngineSpec
from kevo_repl.plugin.manager import hookimpl
from kevo_repl.plugin.registrars import ApplierRegistrar

log = logging.getLogger(__name__)

#: file the apply log is appended to (unset: no log)
ENV_APPLY_LOG = "KEVO_CHAOS_APPLY_LOG"
#: seconds the broken engines wait between committing the position and the data
ENV_BROKEN_WINDOW = "KEVO_CHAOS_BROKEN_WINDOW_S"
#: a file in a node's data directory holding N: its faulty engine fails the next N commits
DISK_ERROR_FILE = "inject-enospc"
#: the real engines that get a faulty-NAME and a broken-NAME variant
WRAPPED = ("lmdb", "leveldb")
#: the two stores of a broken engine
_BROKEN_PARTS = ("position", "data")

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
        register(
            f"faulty-{name}",
            EngineSpec(open=functools.partial(open_faulty, name), owns_file=_owns_like(name)),
        )
        register(
            f"broken-{name}",
            EngineSpec(
                open=functools.partial(open_broken, name), owns_file=_BROKEN_PARTS.__contains__
            ),
        )


@functools.cache
def _real_spec(name: str) -> EngineSpec:
    """The real engine's spec, from a registry of its own (built on first use, when a node
    opens its store, so that this module's registration hook does not recurse)."""
    from kevo_repl.plugin.manager import build_registry

    spec: EngineSpec = build_registry().get("applier", name)
    return spec


def _owns_like(name: str) -> Callable[[str], bool]:
    def owns(file_name: str) -> bool:
        owns_file = _real_spec(name).owns_file
        return owns_file is None or owns_file(file_name)

    return owns


# -- faulty-NAME: the real engine, with injected disk errors ------------------------------------


class FaultyEngine:
    """Delegates everything to the real engine; fails commits on demand (see the module)."""

    def __init__(self, name: str, inner: Engine, control: Path) -> None:
        self.name = f"faulty-{name}"
        self.inner = inner
        self.max_key_size = inner.max_key_size
        self.control = control
        #: commits still to fail, and commits failed so far
        self.pending_failures = 0
        self.failures = 0

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
        log.warning("%s: injecting ENOSPC into the next %d commits", self.name, count)

    def commit(
        self, ops: Sequence[int], keys: Sequence[bytes], values: Sequence[bytes], meta: bytes
    ) -> None:
        self._arm()  # the core serializes commits: no lock needed
        if ops and self.pending_failures > 0:
            self.pending_failures -= 1
            self.failures += 1
            raise StoreError(f"ENOSPC: no space left on device (injected by {self.name})")
        self.inner.commit(ops, keys, values, meta)

    def read_meta(self) -> bytes | None:
        return self.inner.read_meta()

    def sync(self) -> None:
        self.inner.sync()

    def get(self, key: bytes) -> bytes | None:
        return self.inner.get(key)

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def load(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        self.inner.load(keys, values)

    def close(self) -> None:
        self.inner.close()


def open_faulty(name: str, path: Path, options: Mapping[str, Any], durable: bool) -> Engine:
    inner = _real_spec(name).open(Path(path), options, durable)
    # the store lives in DATA_DIR/store; the runner drops its control file in DATA_DIR
    return FaultyEngine(name, inner, Path(path).parent / DISK_ERROR_FILE)


# -- broken-NAME: position committed before the data (deliberately wrong) -----------------------


class _BrokenView:
    def __init__(self, data_view: Any, meta: bytes | None) -> None:
        self._view = data_view
        self.meta = meta

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        items: Iterator[tuple[bytes, bytes]] = self._view.items(after)
        return items


class BrokenEngine:
    """Two real stores, `position` and `data`; see the module's docstring for the bug."""

    def __init__(self, name: str, position: Engine, data: Engine, window_s: float) -> None:
        self.name = f"broken-{name}"
        self._pos = position
        self._data = data
        self.max_key_size = data.max_key_size
        self.window_s = window_s

    def commit(
        self, ops: Sequence[int], keys: Sequence[bytes], values: Sequence[bytes], meta: bytes
    ) -> None:
        # THE BUG: the position is committed in a transaction of its own...
        self._pos.commit([], [], [], meta)
        time.sleep(self.window_s)
        # ...and the data in another one: a crash in between loses these entries.
        self._data.commit(ops, keys, values, meta)

    def read_meta(self) -> bytes | None:
        return self._pos.read_meta()

    def sync(self) -> None:
        self._pos.sync()
        self._data.sync()

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    @contextmanager
    def snapshot(self) -> Iterator[_BrokenView]:
        with self._data.snapshot() as view:
            yield _BrokenView(view, self._pos.read_meta())

    def load(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        self._data.load(keys, values)

    def close(self) -> None:
        self._pos.close()
        self._data.close()


def open_broken(name: str, path: Path, options: Mapping[str, Any], durable: bool) -> Engine:
    spec = _real_spec(name)
    path = Path(path)
    pos = spec.open(path / "position", options, durable)
    try:
        data = spec.open(path / "data", options, durable)
    except BaseException:
        pos.close()
        raise
    window = float(os.environ.get(ENV_BROKEN_WINDOW, "0.05"))
    log.warning("%s: position committed %.3fs before the data: this store LOSES entries "
                "when killed; it exists only to show the chaos checker catching it",
                f"broken-{name}", window)
    return BrokenEngine(name, pos, data, window)
