"""Request bytes that do not parse are the caller's error (INVALID_ARGUMENT), not the
server's (gRPC answers UNKNOWN when a deserializer raises). Deserializers made here return an
`Undecodable` instead of raising; the wrapped handlers refuse it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError


class Undecodable:
    """Request bytes that did not parse as `what`."""

    def __init__(self, what: str, error: Exception) -> None:
        self.message = f"the request is not a valid {what}: {error}"


def lenient(message_type: Any) -> Callable[[bytes], Any]:
    """A deserializer for `message_type` that returns an Undecodable for bad bytes."""
    what = message_type.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return Undecodable(what, exc)

    return deserialize


def unary(fn: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Any:
    """Wrap a unary handler: an Undecodable request is refused."""

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await fn(request, context)

    return handler


def server_stream(fn: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]) -> Any:
    """Wrap a server-streaming handler: an Undecodable request is refused."""

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        async for item in fn(request, context):
            yield item

    return handler
