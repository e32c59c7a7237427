"""Continuous verification on a replica: `[replica] verify_interval_s`.

Every interval the replica runs `verify` against its primary, with itself as the replica
side: the primary takes its digest at its WAL head P and holds this replica's stream at P
(Digest hold_replica), this replica reaches P, takes its own digest there (its digest
barrier) and the two are compared bucket by bucket, narrowing a difference down to key
ranges. The result goes to status and metrics (`last_verified_sequence`,
`last_verified_age_s`, `divergent_ranges`); a divergence is logged as a WARNING naming the
ranges. Damage is found without anyone running `kevo-repl verify`.

The comparison runs in a daemon thread (verify's client is synchronous); the replica's own
digests are taken on the node's loop. One comparison at a time; each is bounded by
VERIFY_TIMEOUT_S, and so is the primary's hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from kevo_repl.config import Config
from kevo_repl.node.digest_at import DigestRefused, digest_at, digest_response
from kevo_repl.protocol.proto import node_pb2 as npb
from kevo_repl.replica.replica import Replica
from kevo_repl.storage import store as store_mod

if TYPE_CHECKING:
    from kevo_repl.client.verify import VerifyResult

log = logging.getLogger(__name__)

#: the most differing ranges one comparison looks for and status lists
MAX_REPORTED_RANGES = 16
#: a comparison (and the primary's hold of this replica) lasts at most this long
VERIFY_TIMEOUT_S = 60.0
#: a call to the primary waits at most this long
CALL_TIMEOUT_S = 30.0

T = TypeVar("T")


class _Refused(grpc.RpcError):  # type: ignore[misc]  # grpc is untyped
    """A local digest refusal, shaped as the gRPC error verify handles."""

    def __init__(self, refused: DigestRefused) -> None:
        super().__init__(refused.message)
        self._refused = refused

    def code(self) -> grpc.StatusCode:
        return self._refused.code

    def details(self) -> str:
        return self._refused.message


class LocalDigests:
    """This replica as verify's replica side: its digests, taken on the node's loop."""

    def __init__(self, replica: Replica, loop: asyncio.AbstractEventLoop) -> None:
        self.replica = replica
        self.loop = loop
        self.timeout = CALL_TIMEOUT_S

    def digest_buckets(
        self, prefix: bytes, at_sequence: int = 0, timeout: float | None = None
    ) -> npb.DigestResponse:
        budget = self.timeout if timeout is None else timeout
        future = asyncio.run_coroutine_threadsafe(self._digest(prefix, at_sequence, budget),
                                                  self.loop)
        try:
            return future.result(budget + 5.0)
        except DigestRefused as exc:
            raise _Refused(exc) from exc

    async def _digest(self, prefix: bytes, at_sequence: int, budget: float) -> npb.DigestResponse:
        if at_sequence:
            d = await digest_at(self.replica, at_sequence, prefix, True, budget)
        else:  # an empty primary: now
            d = await asyncio.to_thread(store_mod.digest, self.replica.store, prefix, True)
        return digest_response(d)


class BackgroundVerifier:
    def __init__(self, cfg: Config, replica: Replica) -> None:
        self.cfg = cfg
        self.replica = replica
        self.interval_s = cfg.replica.verify_interval_s
        self.runs = 0
        self.failures = 0
        self.error = ""
        self.last_sequence = 0
        self._last_at = 0.0  # time.monotonic() of the last completed comparison
        self.ranges: list[str] = []
        self.range_count = 0

    def status(self) -> dict[str, Any]:
        return {
            "last_verified_sequence": self.last_sequence,
            "last_verified_age_s": time.monotonic() - self._last_at if self._last_at else -1.0,
            "divergent_ranges": list(self.ranges),
            "divergent_range_count": self.range_count,
            "verify_runs": self.runs,
            "verify_failures": self.failures,
            "verify_error": self.error,
        }

    async def run(self) -> None:
        """Compare every interval until cancelled; a failed comparison is counted and
        reported (verify_error), never fatal."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                result = await _in_daemon_thread(lambda: self._compare(loop))
            except Exception as exc:
                self.failures += 1
                self.error = f"{type(exc).__name__}: {exc}"
                log.info("background verification could not compare: %s", self.error)
                continue
            self._record(result)

    def _compare(self, loop: asyncio.AbstractEventLoop) -> VerifyResult:
        # imported when verification runs: a replica without it starts without them
        from kevo_repl.client.client import Client
        from kevo_repl.client.verify import verify

        with Client(self.cfg.replica.primary, CALL_TIMEOUT_S, self.cfg.connector) as primary:
            return verify(primary, LocalDigests(self.replica, loop),
                          replica_id=self.replica.replica_id, timeout=VERIFY_TIMEOUT_S,
                          max_ranges=MAX_REPORTED_RANGES)

    def _record(self, result: VerifyResult) -> None:
        self.runs += 1
        self.error = ""
        self.last_sequence = result.sequence
        self._last_at = time.monotonic()
        self.range_count = len(result.ranges)
        self.ranges = [
            f"bucket {d['bucket']!r}: keys {d['first_key']!r}..{d['last_key']!r} "
            f"({d['primary_keys']} on the primary, {d['replica_keys']} here)"
            for d in (r.as_dict() for r in result.ranges[:MAX_REPORTED_RANGES])
        ]
        if result.equal:
            log.debug("background verification: equal at %d", result.sequence)
            return
        log.warning(
            "background verification: this replica DIFFERS from its primary at sequence %d "
            "(digest %s, primary's %s) in %d key range(s): %s",
            result.sequence, result.replica_digest, result.primary_digest,
            len(result.ranges), "; ".join(self.ranges) or "(not narrowed down)",
        )


def _in_daemon_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """`fn()` in a daemon thread: a node that stops does not wait for a comparison (a hold it
    leaves on the primary expires by itself)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)  # type: ignore[arg-type]  # None only with an error

    def run() -> None:
        try:
            value: T | None = fn()
            error: BaseException | None = None
        except Exception as exc:
            value, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: the node stopped
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=run, name="background-verify", daemon=True).start()
    return future
