"""The primary's side of epochs: which replica may stream, and fencing.

A replica names its epoch history in the `kevo-epochs` header of StreamWAL. Against this
primary's history:
- a replica on a newer epoch means a newer primary exists: this primary is fenced (it refuses
  writes from then on) and the stream is refused;
- a replica on an older epoch whose position is past the end of that epoch here holds entries
  this history never had: refused, naming the exact fork point, so that it rejoins
  (`kevo-repl rejoin`) instead of mixing two histories.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from kevo_repl.storage import epochs as epochs_mod
from kevo_repl.storage.epochs import Epoch


def replica_epochs(metadata: Sequence[tuple[str, str | bytes]] | None) -> tuple[Epoch, ...] | None:
    """The history a replica sent; None when it sent none (an older peer, or KevoDB)."""
    for key, value in metadata or ():
        if key == epochs_mod.EPOCHS_HEADER:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            return epochs_mod.parse(text, header=True)
    return None


def header(epochs: Sequence[Epoch]) -> tuple[str, str]:
    return (epochs_mod.EPOCHS_HEADER, epochs_mod.render(epochs, header=True))


def check_replica(
    mine: Sequence[Epoch], theirs: Sequence[Epoch] | None, start: int
) -> tuple[grpc.StatusCode, str, bool] | None:
    """A refusal (code, message, whether this primary is now fenced) or None."""
    if theirs is None:
        return None
    current, their_current = mine[-1], theirs[-1]
    if their_current.number > current.number:
        return (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"this primary is fenced: its epoch {current.number} is older than the replica's "
            f"epoch {their_current.number}; a newer primary exists (rejoin this node as a "
            "replica with kevo-repl rejoin)",
            True,
        )
    fork = epochs_mod.fork_point(mine, theirs)
    if fork is not None and start - 1 > fork:
        return (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"the replica forked from this history: it holds sequences {fork + 1}..{start - 1} "
            f"of epoch {their_current.number}, but epoch {_epoch_after(mine, fork)} of this "
            f"history starts at {fork + 1} (fork point {fork}); rejoin it with kevo-repl "
            "rejoin",
            False,
        )
    return None


def _epoch_after(epochs: Sequence[Epoch], fork: int) -> int:
    for epoch in epochs:
        if epoch.start == fork + 1:
            return epoch.number
    return epochs[-1].number

