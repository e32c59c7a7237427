"""Every hook a kevo-repl plugin can implement.

Plugins implement these with ``@kevo_repl.hookimpl`` and are found through the ``kevo_repl``
entry-point group (or the ``KEVO_REPL_PLUGINS`` environment variable, a comma-separated list
of modules). Registration hooks receive a typed ``register`` callable (see
kevo_repl.plugin.registrars) that checks what it is given against its protocol; event hooks'
results are ignored. The hot path calls the chosen backend directly, never a hook per entry.

docs/plugins.md explains how to write, package and register each kind of plugin, with the
engine contract and a working example of each.
"""

from __future__ import annotations

import pluggy

from kevo_repl.plugin.registrars import (
    ApplierRegistrar,
    CompressorRegistrar,
    ConnectorRegistrar,
)

hookspec = pluggy.HookspecMarker("kevo_repl")

# --------------------------------------------------------------------------------------------
# Registration: called once when the plugin manager builds its registry.
# --------------------------------------------------------------------------------------------


@hookspec
def kevo_repl_register_appliers(register: ApplierRegistrar) -> None:
    """Register store backends.

    :param register: call ``register(name, spec)`` with a
        :class:`kevo_repl.plugin.engine.EngineSpec`; its ``open(path, options, durable)`` opens
        the store and returns an :class:`kevo_repl.plugin.engine.Engine`.
    """


@hookspec
def kevo_repl_register_compressors(register: CompressorRegistrar) -> None:
    """Register payload compressors.

    :param register: call ``register(name, compressor)``; the compressor has ``codec_id``
        (the wire enum value), ``compress(data) -> bytes`` and
        ``decompress(data, max_size) -> bytes``, which raises
        :class:`kevo_repl.protocol.compression.DecompressionError` for damaged input or output
        longer than ``max_size`` (see :class:`kevo_repl.protocol.compression.Compressor`).
    """


@hookspec
def kevo_repl_register_connectors(register: ConnectorRegistrar) -> None:
    """Register ways for a replica to reach its primary.

    :param register: call ``register(name, factory)``; ``factory(address, options)`` returns
        a ``grpc.aio.Channel`` (or an object with the same unary/stream call methods);
        ``options`` is the ``[connector]`` table as a dict (TLS files, token, keepalive).
    """


# --------------------------------------------------------------------------------------------
# Events: observers only; results are ignored and exceptions are logged, never raised.
# --------------------------------------------------------------------------------------------


@hookspec
def kevo_repl_state_changed(node: str, old: str, new: str, reason: str) -> None:
    """A replica's state machine moved.

    :param node: the replica's id.
    :param old: the state it left.
    :param new: the state it entered.
    :param reason: a short human-readable cause.
    """


@hookspec
def kevo_repl_batch_applied(node: str, first_seq: int, last_seq: int, count: int) -> None:
    """A batch was committed to the local store (after it became durable on a replica).

    :param node: the node's id ("primary" on a primary, the replica id on a replica).
    :param first_seq: first sequence of the batch.
    :param last_seq: last sequence of the batch (the store's new position).
    :param count: entries in the batch.
    """
