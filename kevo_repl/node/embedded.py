"""A primary inside the application's own process: `open_primary(data_dir)`.

The node (WAL, store, gRPC server for replicas and clients) runs on an event loop in one
background thread. Writes from any thread (`put`/`delete`/`write`) or any asyncio loop
(`aput`/`adelete`/`awrite`) go into one bounded hand-off queue; the node's loop takes
everything queued at once and hands it to the primary's group commit, so N concurrent writers
cost one loop wake-up and one WAL fsync per group, not one RPC each. Reads (`get`) go
straight to the store on the caller's thread. A write returns once it is durable in the WAL
and applied to the store, exactly as a `Write` RPC does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from kevo_repl.config import Config
from kevo_repl.config import load as load_config
from kevo_repl.errors import KevoReplError
from kevo_repl.node.server import Node
from kevo_repl.primary.primary import Primary, WriteRejected
from kevo_repl.protocol.codec import Op
from kevo_repl.protocol.written import Written

log = logging.getLogger(__name__)

Mutation = tuple[int, bytes, bytes]
#: writes queued between the callers and the node's loop before callers wait
MAX_QUEUED_WRITES = 65_536
_START_TIMEOUT_S = 60.0

_Queued = tuple[Sequence[Mutation], "concurrent.futures.Future[Written]"]


class EmbeddedPrimary:
    """A running primary node in this process; see the module docstring."""

    def __init__(self, cfg: Config, max_queued: int = MAX_QUEUED_WRITES) -> None:
        if cfg.node.role != "primary":
            raise KevoReplError("an embedded node must have the role 'primary'")
        if max_queued < 1:
            raise KevoReplError("max_queued must be at least 1")
        self.cfg = cfg
        self.max_queued = max_queued
        self._slots = threading.BoundedSemaphore(max_queued)
        self._lock = threading.Lock()
        self._queue: list[_Queued] = []
        self._drain_scheduled = False
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._node = Node(cfg)
        self._stop: asyncio.Event | None = None
        self._commits: set[asyncio.Task[None]] = set()
        self._started = concurrent.futures.Future[str]()
        self._thread = threading.Thread(target=self._run, name="kevo-repl-primary", daemon=True)

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> EmbeddedPrimary:
        self._thread.start()
        try:
            self._started.result(timeout=_START_TIMEOUT_S)
        except BaseException:
            self._thread.join(_START_TIMEOUT_S)
            raise
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            address = await self._node.start()
        except BaseException as exc:
            try:
                await self._node.stop()
            finally:  # whatever the clean-up does, start() hears why at once
                self._started.set_exception(exc)
            return
        self._started.set_result(address)
        try:
            await self._stop.wait()
        finally:
            if self._commits:
                await asyncio.wait(self._commits)
            await self._node.stop()

    def close(self) -> None:
        """Finish the writes already queued, stop serving and close the WAL and store."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._drain)
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def __enter__(self) -> EmbeddedPrimary:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> EmbeddedPrimary:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.close)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def address(self) -> str:
        """host:port where replicas and clients reach this primary."""
        return self._node.address

    @property
    def metrics_address(self) -> str:
        return self._node.metrics_address

    @property
    def queued(self) -> int:
        """Writes handed over but not yet taken by the node's loop (at most max_queued)."""
        with self._lock:
            return len(self._queue)

    @property
    def primary(self) -> Primary:
        assert self._node.primary is not None, "the primary is not started"
        return self._node.primary

    # -- writes ------------------------------------------------------------------------------

    def write(
        self, mutations: Sequence[Mutation], idempotency_key: bytes | None = None
    ) -> Written:
        """Write one atomic batch from any thread; (first, last) sequence once durable, with
        the `epoch` it was accepted in. With `idempotency_key`, a retry (same key, same
        mutations) gets the original sequences without writing again (README, "Idempotent
        writes")."""
        if idempotency_key is not None:
            return self._write_once(mutations, idempotency_key)
        self._slots.acquire()
        return self._submit(mutations).result()

    def _write_once(self, mutations: Sequence[Mutation], key: bytes) -> Written:
        # not through the hand-off queue: a retry waits on its key's own write
        self._slots.acquire()
        try:
            with self._lock:  # so that close() finds the write among the commits it awaits
                if self._closed or not self._thread.is_alive():
                    raise KevoReplError("the embedded primary is closed")
                fut = asyncio.run_coroutine_threadsafe(self._once(mutations, key), self._loop)
            first, last, _duplicate = fut.result()
            # a duplicate was accepted in this epoch too: the window starts empty on promotion
            return Written(first, last, self.primary.epochs[-1].number)
        finally:
            self._slots.release()

    async def _once(self, mutations: Sequence[Mutation], key: bytes) -> tuple[int, int, bool]:
        task = asyncio.current_task()
        assert task is not None
        self._commits.add(task)  # close() awaits it like the queued commits
        try:
            return await self.primary.write_once(mutations, key)
        finally:
            self._commits.discard(task)

    def put(self, key: bytes, value: bytes) -> int:
        return self.write([(Op.PUT, key, value)])[1]

    def delete(self, key: bytes) -> int:
        return self.write([(Op.DELETE, key, b"")])[1]

    async def awrite(self, mutations: Sequence[Mutation]) -> Written:
        """`write` for asyncio code on any loop (the node runs on its own)."""
        if not self._slots.acquire(blocking=False):
            await asyncio.to_thread(self._slots.acquire)  # the queue is full: wait, off-loop
        return await asyncio.wrap_future(self._submit(mutations))

    async def aput(self, key: bytes, value: bytes) -> int:
        return (await self.awrite([(Op.PUT, key, value)]))[1]

    async def adelete(self, key: bytes) -> int:
        return (await self.awrite([(Op.DELETE, key, b"")]))[1]

    def _submit(self, mutations: Sequence[Mutation]) -> concurrent.futures.Future[Written]:
        """Queue a write (its queue slot already taken); wake the loop once per group."""
        fut = concurrent.futures.Future[Written]()
        fut.add_done_callback(lambda _f: self._slots.release())
        with self._lock:
            if self._closed or not self._thread.is_alive():
                fut.set_exception(KevoReplError("the embedded primary is closed"))
                return fut
            self._queue.append((mutations, fut))
            wake = not self._drain_scheduled
            self._drain_scheduled = True
        if wake:
            self._loop.call_soon_threadsafe(self._drain)
        return fut

    def _drain(self) -> None:
        """On the node's loop: everything queued goes to the primary as one group."""
        with self._lock:
            group, self._queue = self._queue, []
            self._drain_scheduled = False
        if group:
            task = self._loop.create_task(self._commit(group))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)

    async def _commit(self, group: list[_Queued]) -> None:
        try:
            results = await self.primary.write_many([m for m, _ in group])
        except Exception as exc:  # the primary is unavailable: every write of the group fails
            for _, fut in group:
                fut.set_exception(exc)
            return
        epoch = self.primary.epochs[-1].number  # fixed for this primary's life
        for (_, fut), result in zip(group, results, strict=True):
            if isinstance(result, WriteRejected):
                fut.set_exception(result)
            else:
                fut.set_result(Written(result[0], result[1], epoch))

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The key's value in the store, read on the caller's thread (no RPC, no loop hop)."""
        return self.primary.store.get(key)

    def head_sequence(self) -> int:
        return self.primary.store.position().sequence


def serve_primary_until_signal(cfg: Config, on_ready: Callable[[EmbeddedPrimary], None]) -> None:
    """What `kevo-repl primary` runs: an embedded primary, until SIGTERM or SIGINT."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda _s, _f: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with EmbeddedPrimary(cfg).start() as p:
            on_ready(p)
            while not stop.wait(1.0) and p.running:
                pass
            log.info("signal received, shutting down" if stop.is_set() else "the node stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def open_primary(
    data_dir: str | Path,
    *,
    applier: str | None = None,
    listen: str = "127.0.0.1:0",
    config: str | Path | Config | None = None,
    max_queued: int = MAX_QUEUED_WRITES,
) -> EmbeddedPrimary:
    """Open (creating if needed) and start a primary at `data_dir` in this process; use it as
    a context manager or call `close()`. `config` is a TOML file or a Config; `applier` and
    `listen` override it."""
    cfg = config if isinstance(config, Config) else load_config(config)
    cfg.node.role = "primary"
    cfg.node.data_dir = str(data_dir)
    cfg.node.listen = listen
    if applier is not None:
        cfg.applier.name = applier
    return EmbeddedPrimary(cfg, max_queued).start()
