"""gRPC method paths, read from the generated stubs (proto/*_grpc.py) rather than written out
by hand: a renamed service or method in the .proto changes them all at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kevo_repl.protocol.proto import node_pb2_grpc, replication_pb2_grpc


class _PathRecorder:
    """Stands in for a channel while a generated stub is built: notes each method's path."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def _record(self, path: str, *args: Any, **kwargs: Any) -> None:
        self.paths[path.rsplit("/", 1)[1]] = path

    unary_unary = unary_stream = stream_unary = stream_stream = _record


def _paths_of(stub: Callable[[Any], Any]) -> dict[str, str]:
    recorder = _PathRecorder()
    stub(recorder)
    return recorder.paths


def _service_of(paths: dict[str, str]) -> str:
    (service,) = {path.split("/")[1] for path in paths.values()}
    return service


_REPLICATION = _paths_of(replication_pb2_grpc.WALReplicationServiceStub)
_NODE = _paths_of(node_pb2_grpc.NodeStub)

#: the replication service (KevoDB's `kevo.replication.WALReplicationService`)
REPLICATION_SERVICE = _service_of(_REPLICATION)
STREAM_WAL = _REPLICATION["StreamWAL"]
ACKNOWLEDGE = _REPLICATION["Acknowledge"]
NEGATIVE_ACKNOWLEDGE = _REPLICATION["NegativeAcknowledge"]
SNAPSHOT = _REPLICATION["Snapshot"]

#: the node API (`kevo.repl.Node`): writes, reads, status, digests, slots
NODE_SERVICE = _service_of(_NODE)
NODE_WRITE = _NODE["Write"]
NODE_WRITE_STREAM = _NODE["WriteStream"]
NODE_GET = _NODE["Get"]
NODE_STATUS = _NODE["Status"]
NODE_DIGEST = _NODE["Digest"]
NODE_DROP_SLOT = _NODE["DropSlot"]
NODE_RELEASE_DIGEST_HOLD = _NODE["ReleaseDigestHold"]
NODE_REPOINT = _NODE["Repoint"]
NODE_PROMOTE = _NODE["Promote"]
