"""Checks of client requests that protobuf cannot make: enum values it does not know, numbers
that are not numbers. A request that fails one is refused (INVALID_ARGUMENT), never guessed."""

from __future__ import annotations

import math

from kevo_repl.protocol.proto import node_pb2 as npb

_LEVELS = {npb.ACK_DURABLE: "durable", npb.ACK_RECEIVED: "received"}
_POLICIES = (npb.ON_TIMEOUT_RAISE, npb.ON_TIMEOUT_DEGRADE)


def request_problem(request: npb.WriteRequest) -> str | None:
    """Why `request` is invalid as asked, or None."""
    if request.level not in _LEVELS:
        return (
            f"unknown ack level {request.level}: use ACK_DURABLE ({npb.ACK_DURABLE}) or "
            f"ACK_RECEIVED ({npb.ACK_RECEIVED})"
        )
    if request.on_timeout not in _POLICIES:
        return (
            f"unknown on_timeout {request.on_timeout}: use ON_TIMEOUT_RAISE "
            f"({npb.ON_TIMEOUT_RAISE}) or ON_TIMEOUT_DEGRADE ({npb.ON_TIMEOUT_DEGRADE})"
        )
    timeout = request.timeout_s
    if not math.isfinite(timeout) or timeout < 0:
        return f"timeout_s must be 0 (the primary's default) or a positive number, not {timeout}"
    if request.HasField("idempotency_key"):
        # here, not at the top: a replica's start-up imports none of the primary's modules
        from kevo_repl.primary.idempotency import key_problem

        return key_problem(request.idempotency_key)
    return None
