"""Every task is owned: one that raises puts its node in ERROR with last_error and stops what
failed, instead of leaving a silently dead task behind a Status that says all is well.

Real parts: a real LMDB store, a real gRPC primary on 127.0.0.1:0 (scripted), a real Node."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kevo_repl.client.client import Client
from kevo_repl.config import Config
from kevo_repl.node.server import Node
from kevo_repl.plugin.manager import build_registry, get_plugin_manager, hookimpl
from kevo_repl.protocol.codec import Op, checksum, encode
from kevo_repl.protocol.methods import REPLICATION_SERVICE
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.replica.replica import Replica
from kevo_repl.replica.state import State
from kevo_repl.tasks import Supervisor, run_blocking

HISTORY = "h-supervision"


class EntriesPrimary:
    """Streams entries 1..count (or from the replica's start), then heartbeats; counts acks."""

    def __init__(self, count: int = 20) -> None:
        self.count = count
        self.streams = 0
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            REPLICATION_SERVICE,
            {
                "StreamWAL": grpc.unary_stream_rpc_method_handler(
                    self.stream, request_deserializer=rpb.WALStreamRequest.FromString,
                    response_serializer=rpb.WALStreamResponse.SerializeToString),
                "Acknowledge": grpc.unary_unary_rpc_method_handler(
                    self.ack, request_deserializer=rpb.Ack.FromString,
                    response_serializer=rpb.AckResponse.SerializeToString),
            }),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def stream(
        self, request: rpb.WALStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpb.WALStreamResponse]:
        self.streams += 1
        await context.send_initial_metadata((("session-id", uuid.uuid4().hex),))
        entries = []
        for seq in range(request.start_sequence, self.count + 1):
            payload = encode(seq, Op.PUT, b"k%d" % seq, b"v%d" % seq)
            entries.append(rpb.WALEntry(sequence_number=seq, payload=payload,
                                        checksum=checksum(payload)))
        yield rpb.WALStreamResponse(entries=entries, history_id=HISTORY,
                                    head_sequence=self.count)
        for _ in range(2000):  # heartbeats, bounded (at most 100 s)
            await asyncio.sleep(0.05)
            yield rpb.WALStreamResponse(head_sequence=self.count)

    async def ack(self, request: rpb.Ack, context: Any) -> rpb.AckResponse:
        return rpb.AckResponse(success=True)


def _replica_config(tmp_path: Path, port: int) -> Config:
    cfg = Config()
    cfg.node.role = "replica"
    cfg.node.data_dir = str(tmp_path / "replica")
    cfg.node.listen = "127.0.0.1:0"
    cfg.replica.primary = f"127.0.0.1:{port}"
    cfg.replica.backoff_initial_s = 0.01
    return cfg


# ---------------------------------------------------------------------------------------------
# the supervisor itself
# ---------------------------------------------------------------------------------------------


async def test_supervisor_reports_a_failed_task_once_and_not_a_cancelled_one() -> None:
    failures: list[tuple[str, str]] = []
    sup = Supervisor("test", lambda name, exc: failures.append((name, str(exc))))

    async def boom() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    async def forever() -> None:
        await asyncio.Event().wait()

    failed = sup.spawn(boom(), "boom-task")
    waiting = sup.spawn(forever(), "waiting-task")
    done = sup.spawn(asyncio.sleep(0), "done-task")
    await asyncio.wait_for(asyncio.wait([failed, done]), 5)
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert failures == [("boom-task", "boom")]
    assert sup.running == 1
    await sup.cancel()
    assert waiting.cancelled() and sup.running == 0
    assert failures == [("boom-task", "boom")]  # a cancel is no failure


async def test_run_blocking_waits_for_the_thread_when_cancelled() -> None:
    """A cancel never leaves a commit running under a store being closed."""
    started, finished = asyncio.Event(), []
    loop = asyncio.get_running_loop()

    def slow() -> int:
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.3)
        finished.append(True)
        return 1

    results: list[int] = []
    task = asyncio.create_task(run_blocking(slow, finished_under_cancel=results.append))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert finished == [True]  # the thread ended before the cancel went through
    assert results == [1]  # and what it did is handed over, not forgotten


# ---------------------------------------------------------------------------------------------
# the replica's pipeline
# ---------------------------------------------------------------------------------------------


class _BrokenLog(deque[tuple[float, int]]):
    """Stands in for the apply loop's progress log and raises when appended to: an
    unexpected bug inside the apply task, after a batch was committed."""

    def append(self, item: tuple[float, int]) -> None:
        raise RuntimeError("a bug in the apply loop")


async def test_failed_apply_task_stops_the_replica_in_error(tmp_path: Path) -> None:
    """The apply task raises something nobody handles: the supervisor puts the replica in
    ERROR naming the task, and run() ends by itself (no stop()), instead of streaming on into
    a queue nobody empties."""
    primary = EntriesPrimary(count=20)
    await primary.server.start()
    cfg = _replica_config(tmp_path, primary.port)
    pm = get_plugin_manager()
    replica = Replica(cfg, build_registry(pm), pm)
    replica._progress_log = _BrokenLog()  # the injected bug
    try:
        task = asyncio.create_task(replica.run())
        await asyncio.wait_for(task, 20)  # ends on its own
        st = replica.status()
        assert replica.sm.state is State.ERROR and st["state"] == "ERROR"
        assert "replica-apply failed" in st["last_error"]
        assert "a bug in the apply loop" in st["last_error"]
        assert replica.fatal == st["last_error"]
        assert primary.streams == 1  # no reconnect loop behind a dead apply task
    finally:
        replica.close()
        await primary.server.stop(None)


async def test_failed_sync_stops_the_replica_in_error_naming_the_applier(tmp_path: Path) -> None:
    """The store's sync fails after the first batch: that commit can be neither acknowledged
    nor applied again, so the replica stops in ERROR naming the applier plugin."""
    primary = EntriesPrimary(count=20)
    await primary.server.start()
    cfg = _replica_config(tmp_path, primary.port)
    pm = get_plugin_manager()
    replica = Replica(cfg, build_registry(pm), pm)
    store = replica.store

    def failing_sync() -> None:
        raise OSError("the disk went away")

    store.sync = failing_sync  # type: ignore[method-assign]
    try:
        task = asyncio.create_task(replica.run())
        await asyncio.wait_for(task, 20)  # ends on its own
        st = replica.status()
        assert replica.sm.state is State.ERROR and st["state"] == "ERROR"
        assert "applier 'lmdb'" in st["last_error"] and "failed in sync" in st["last_error"]
        assert "the disk went away" in st["last_error"]
        # nothing was acknowledged as durable that the failed sync did not make durable
        assert replica.position.sequence == 0
        assert primary.streams == 1  # no reconnect loop behind a failed sync
    finally:
        replica.close()
        await primary.server.stop(None)


# ---------------------------------------------------------------------------------------------
# the node's replica task
# ---------------------------------------------------------------------------------------------


class BrokenConnectorPlugin:
    """A connector that raises what no replica code expects (like a plugin written against
    the wrong signature): the exception escapes Replica.run."""

    calls = 0

    @staticmethod
    def connect(target: str, options: dict[str, Any]) -> Any:
        BrokenConnectorPlugin.calls += 1
        raise TypeError("connect() got an unexpected keyword argument")

    @hookimpl
    def kevo_repl_register_connectors(self, register: Any) -> None:
        register("broken-connector", self.connect)


async def test_node_replica_task_that_raises_puts_the_node_in_error(tmp_path: Path) -> None:
    cfg = _replica_config(tmp_path, 1)  # never dialled: the connector raises first
    cfg.connector.name = "broken-connector"
    node = Node(cfg)
    node.pm.register(BrokenConnectorPlugin(), name="broken-connector-plugin")
    node.registry = build_registry(node.pm)
    BrokenConnectorPlugin.calls = 0
    await node.start()
    try:
        assert node.replica is not None
        for _ in range(500):  # at most 5 s
            if node.service.status()["state"] == "ERROR":
                break
            await asyncio.sleep(0.01)
        st = node.service.status()
        assert st["state"] == "ERROR"
        # the plugin is named, with what it raised
        assert "connector 'broken-connector'" in st["last_error"]
        assert "TypeError" in st["last_error"]
        assert "unexpected keyword argument" in st["last_error"]
        # it stopped: no retry loop hammering a connector that cannot work
        await asyncio.sleep(0.2)
        assert BrokenConnectorPlugin.calls == 1
        # the node still answers Status (operators see why), over real gRPC
        client = Client(node.address, timeout=5)
        try:
            remote = await asyncio.to_thread(client.status)
        finally:
            client.close()
        assert remote["state"] == "ERROR" and "TypeError" in remote["last_error"]
    finally:
        await asyncio.wait_for(node.stop(), 10)


# ---------------------------------------------------------------------------------------------
# the primary's background tasks
# ---------------------------------------------------------------------------------------------


async def test_failed_slot_flush_task_puts_the_primary_in_error(tmp_path: Path) -> None:
    """The slot table's background write fails (its disk went away): the primary says so in
    Status (ERROR, last_error) and refuses writes, rather than run on with slots it cannot
    persist."""
    cfg = Config()
    cfg.node.role = "primary"
    cfg.node.data_dir = str(tmp_path / "primary")
    cfg.node.listen = "127.0.0.1:0"
    node = Node(cfg)
    await node.start()
    try:
        p = node.primary
        assert p is not None
        first, last = await p.write([(Op.PUT, b"a", b"1")])
        assert (first, last) == (1, 1)

        def failing_flush() -> None:
            raise OSError("slots.json: no space left on device")

        p.slots.flush = failing_flush  # type: ignore[method-assign]
        p.slots.ack("r1", 1)  # marks the table dirty: the background flush starts
        for _ in range(500):  # at most 5 s
            if node.service.status()["state"] == "ERROR":
                break
            await asyncio.sleep(0.01)
        st = node.service.status()
        assert st["state"] == "ERROR"
        assert "slots-flush failed: OSError" in st["last_error"]
        client = Client(node.address, timeout=5)
        try:
            with pytest.raises(Exception, match="slots-flush failed"):
                await asyncio.to_thread(client.put, b"b", b"2")
            assert (await asyncio.to_thread(client.status))["state"] == "ERROR"
        finally:
            client.close()
        assert p.head == 1  # nothing was written after the failure
        del p.slots.flush  # the real flush again, for a clean stop
    finally:
        await asyncio.wait_for(node.stop(), 10)
