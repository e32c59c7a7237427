"""A small blocking client for a node's API (used by the CLI, tests and benchmarks)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.message import Message

from .codec import Op
from .config import ConnectorConfig
from .proto import node_pb2 as npb
from .transport import call_metadata, open_channel


class Client:
    def __init__(
        self, target: str, timeout: float = 30.0, connector: ConnectorConfig | None = None
    ) -> None:
        self.target = target
        self.timeout = timeout
        cfg = connector or ConnectorConfig()
        self._channel = open_channel(target, cfg)
        metadata = call_metadata(cfg)

        def unary(name: str, req: Any, resp: Any) -> Any:
            call = self._channel.unary_unary(
                f"/kevo.repl.Node/{name}",
                request_serializer=req.SerializeToString,
                response_deserializer=resp.FromString,
            )
            return functools.partial(call, metadata=metadata) if metadata else call

        self._write = unary("Write", npb.WriteRequest, npb.WriteResponse)
        self._get = unary("Get", npb.GetRequest, npb.GetResponse)
        self._status = unary("Status", npb.StatusRequest, npb.StatusResponse)
        self._digest = unary("Digest", npb.DigestRequest, npb.DigestResponse)
        self._drop_slot = unary("DropSlot", npb.DropSlotRequest, npb.DropSlotResponse)

    def write(self, mutations: Iterable[tuple[int, bytes, bytes]]) -> tuple[int, int]:
        req = npb.WriteRequest(
            mutations=[
                npb.Mutation(op=op, key=k, value=v)  # type: ignore[arg-type]  # enums take ints
                for op, k, v in mutations
            ]
        )
        resp = self._write(req, timeout=self.timeout)
        return resp.first_sequence, resp.last_sequence

    def put(self, key: bytes, value: bytes) -> int:
        return self.write([(Op.PUT, key, value)])[1]

    def delete(self, key: bytes) -> int:
        return self.write([(Op.DELETE, key, b"")])[1]

    def get(self, key: bytes) -> bytes | None:
        resp = self._get(npb.GetRequest(key=key), timeout=self.timeout)
        return bytes(resp.value) if resp.found else None

    def status(self) -> dict[str, Any]:
        return message_to_dict(self._status(npb.StatusRequest(), timeout=self.timeout))

    def digest(self) -> dict[str, Any]:
        resp = self._digest(npb.DigestRequest(), timeout=self.timeout)
        return {"sequence": resp.sequence, "keys": resp.keys, "digest": resp.digest}

    def drop_slot(self, replica_id: str) -> int:
        """Drop a replica's slot on a primary; return the sequence it had acknowledged."""
        resp = self._drop_slot(npb.DropSlotRequest(replica_id=replica_id), timeout=self.timeout)
        acked: int = resp.acked_sequence
        return acked

    def digest_buckets(self, prefix: bytes) -> npb.DigestResponse:
        """Digests of the keys under `prefix`, one bucket per next byte."""
        resp: npb.DigestResponse = self._digest(
            npb.DigestRequest(prefix=prefix, split=True), timeout=self.timeout
        )
        return resp

    def wait_ready(self, timeout: float) -> None:
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def message_to_dict(msg: Message) -> dict[str, Any]:
    """Every field, defaults included, with integers kept as integers (unlike json_format)."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.message_type is not None:
            if field.is_repeated:
                out[field.name] = [message_to_dict(v) for v in value]
            else:
                out[field.name] = message_to_dict(value)
        elif field.is_repeated:
            out[field.name] = list(value)
        else:
            out[field.name] = value
    return out
