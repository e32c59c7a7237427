"""gRPC settings that both sides must agree on."""

from __future__ import annotations

#: largest gRPC message either side accepts; a response is capped well below it
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


def server_options() -> list[tuple[str, int]]:
    return [*channel_options(), ("grpc.so_reuseport", 0)]
