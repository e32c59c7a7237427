"""The built-in ``grpc`` connector: how a replica opens a channel to its primary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from ..plugins import hookimpl
from ..transport import channel_options


def open_channel(address: str, options: Mapping[str, Any]) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=channel_options())


@hookimpl(trylast=True)
def kevo_repl_register_connectors(register: Any) -> None:
    register("grpc", open_channel)
