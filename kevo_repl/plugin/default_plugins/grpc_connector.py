"""The built-in ``grpc`` connector: how a replica opens a channel to its primary
(plaintext, TLS verified against a CA, or mutual TLS; see `[connector]`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from kevo_repl.plugin.manager import hookimpl
from kevo_repl.plugin.registrars import ConnectorRegistrar
from kevo_repl.protocol.transport import connector_config, open_aio_channel


def open_channel(address: str, options: Mapping[str, Any]) -> grpc.aio.Channel:
    return open_aio_channel(address, connector_config(options))


@hookimpl(trylast=True)
def kevo_repl_register_connectors(register: ConnectorRegistrar) -> None:
    register("grpc", open_channel)
