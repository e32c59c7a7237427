"""Problems the chaos suite found, each reduced to a deterministic test (an expected failure
while it is not fixed; the fault kinds that hit it stay out of the default kinds until then).

1. Fixed. A byte flipped in flight outside an entry's payload (the `corrupt_any` fault) can
leave a response that does not parse. gRPC's aio client then logs "Exception deserializing
message!" and hands the replica ``None`` instead of a response; the replica's run task died on
it (AttributeError), the node kept serving a status frozen in WAITING_FOR_DATA and never
replicated again. Found by ``kevo-repl chaos --seed 13 --duration 25``. The replica now counts
such a response as corrupt and reconnects from its position.

2. A primary shutting down cleanly sends GOAWAY on every connection. When that reaches a
replica whose connection is still being set up (``kevo-repl chaos --seed 16 --duration 25``
did it: the replica's link was stalled while the primary restarted), gRPC's client (grpcio
1.85.3) never completes the call and its transport allocates memory without end, about
1 GB/s: the replica sits in CONNECTING until its RSS exhausts the machine. Reduced here to a
plain ``grpc.aio`` channel and a socket that answers like a shutting-down gRPC server. It
needs a deadline on the stream's start in the replica (and closing the channel), or a gRPC
fix; until then the graceful `restart` fault is not a default kind.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kevo_repl.config import Config
from kevo_repl.plugin.manager import build_registry, get_plugin_manager
from kevo_repl.protocol.codec import Op, checksum, encode
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.replica.replica import Replica

pytestmark = pytest.mark.chaos


def _response(first: int, last: int, history: bool) -> bytes:
    entries = []
    for seq in range(first, last + 1):
        payload = encode(seq, Op.PUT, b"k%d" % seq, b"v%d" % seq)
        entries.append(rpb.WALEntry(sequence_number=seq, payload=payload,
                                    checksum=checksum(payload)))
    msg = rpb.WALStreamResponse(entries=entries, head_sequence=20)
    if history:
        msg.history_id = "h-chaos"
    return bytes(msg.SerializeToString())


class _GarblingPrimary:
    """Streams 1..10, then a message that does not parse; a new stream gets the rest."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "kevo.replication.WALReplicationService",
            {
                "StreamWAL": grpc.unary_stream_rpc_method_handler(
                    self.stream, request_deserializer=rpb.WALStreamRequest.FromString,
                    response_serializer=lambda b: b),
                "Acknowledge": grpc.unary_unary_rpc_method_handler(
                    self.ack, request_deserializer=rpb.Ack.FromString,
                    response_serializer=rpb.AckResponse.SerializeToString),
            }),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def stream(
        self, request: rpb.WALStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        await context.send_initial_metadata((("session-id", uuid.uuid4().hex),))
        start = request.start_sequence
        self.starts.append(start)
        if start <= 10:
            yield _response(start, 10, history=True)
            yield b"\x0a\xff\xff\xff\xff\x0f"  # entries field whose length runs past the end
        else:
            yield _response(start, 20, history=True)
        await asyncio.sleep(30)  # idle, like a caught-up primary

    async def ack(self, request: rpb.Ack, context: grpc.aio.ServicerContext) -> rpb.AckResponse:
        return rpb.AckResponse(success=True)


async def test_replica_survives_a_response_that_does_not_parse(tmp_path: Path) -> None:
    primary = _GarblingPrimary()
    await primary.server.start()
    cfg = Config()
    cfg.node.role = "replica"
    cfg.node.data_dir = str(tmp_path / "replica")
    cfg.replica.primary = f"127.0.0.1:{primary.port}"
    cfg.replica.backoff_initial_s = 0.01
    pm = get_plugin_manager()
    replica = Replica(cfg, build_registry(pm), pm)
    task = asyncio.create_task(replica.run())
    try:
        async with asyncio.timeout(15):
            while replica.position.sequence < 20 and not task.done():
                await asyncio.sleep(0.02)
        assert not task.done(), f"the replica stopped: {task.exception()!r}"
        assert replica.position.sequence == 20 and primary.starts == [1, 11]
    finally:
        await replica.stop()
        try:
            await asyncio.wait_for(task, 10)
        except Exception:
            pass
        replica.close()
        await primary.server.stop(None)


# What a gRPC server sends on a connection it is shutting down: SETTINGS, WINDOW_UPDATE,
# GOAWAY (NO_ERROR, "Server shutdown"), PING, GOAWAY (INTERNAL_ERROR, "Cancelling all calls"),
# as grpcio 1.85 sends them when `server.stop()` runs.
_SHUTDOWN_BYTES = (
    "000018040000000000000400400000000500400000000600004000fe0300000001000004080000000000003f"
    "00010000170700000000007fffffff000000005365727665722073687574646f776e0000080600000000003a"
    "6c6a0ec48844e800001c070000000000000000000000000243616e63656c6c696e6720616c6c2063616c6c73"
)

# Runs in a child process: a watchdog ends it (exit 3) once its RSS passes 300 MB, so the
# bug cannot take the test runner's memory with it.
_CLIENT = """
import asyncio, os, socket, sys, threading, time
import grpc

data = bytes.fromhex(sys.argv[1])
srv = socket.create_server(("127.0.0.1", 0))
port = srv.getsockname()[1]

def serve():
    while True:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        conn.sendall(data)
        time.sleep(0.05)
        conn.close()

def watchdog():
    while True:
        with open("/proc/self/status") as fh:
            rss = next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))
        if rss > 300 * 1024:
            print(f"RSS {rss // 1024} MB", flush=True)
            os._exit(3)
        time.sleep(0.01)

threading.Thread(target=serve, daemon=True).start()
threading.Thread(target=watchdog, daemon=True).start()

async def main():
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_stream("/kevo.replication.WALReplicationService/StreamWAL",
                                request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)(b"", timeout=5)
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as exc:
        print(exc.code().name, flush=True)
    await channel.close()

asyncio.run(main())
"""


@pytest.mark.xfail(
    strict=True,
    reason="grpcio 1.85.3: a GOAWAY reaching a connection being set up makes the client "
    "allocate memory without end; found by the chaos suite's restart fault",
)
def test_client_survives_goaway_while_connecting() -> None:
    res = subprocess.run(
        [sys.executable, "-c", _CLIENT, _SHUTDOWN_BYTES],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, f"exit {res.returncode}: {res.stdout} {res.stderr[-500:]}"
    assert res.stdout.strip() == "UNAVAILABLE"
