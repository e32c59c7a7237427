"""The types of what plugins register, and of the registrars the registration hooks receive.

A registration hook gets one of the registrar callables below; each takes a name and one
object of its kind. The registry checks each object against its protocol when it is
registered (kevo_repl.plugin.registration_checks), so a wrong one fails at load time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kevo_repl.plugin.engine import EngineSpec
from kevo_repl.protocol.compression import Compressor

#: ``factory(address, options)``: a ``grpc.aio.Channel`` (or an object with its
#: ``unary_unary``, ``unary_stream`` and ``close`` methods) to the primary at ``address``;
#: ``options`` is the ``[connector]`` table as a dict.
ConnectorFactory = Callable[[str, Mapping[str, Any]], Any]

#: ``register(name, spec)`` for a storage engine (see kevo_repl.plugin.engine)
ApplierRegistrar = Callable[[str, EngineSpec], None]
#: ``register(name, compressor)`` for a payload codec
CompressorRegistrar = Callable[[str, Compressor], None]
#: ``register(name, factory)`` for a way to reach a primary
ConnectorRegistrar = Callable[[str, ConnectorFactory], None]
