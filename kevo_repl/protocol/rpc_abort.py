"""End an RPC with a status, typed so that the code after it is known not to run."""

from __future__ import annotations

from typing import NoReturn

import grpc


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode,
                details: str) -> NoReturn:
    """`context.abort`, which always raises; its stubs do not say so."""
    await context.abort(code, details)
    raise AssertionError("grpc.aio's abort returned")  # pragma: no cover
