"""gRPC channel and server settings: message limits, keepalive, TLS and token auth.

Both sides must agree on these, so they live in one place. A server with a token (and/or a
replication token) checks it on every call through `TokenInterceptor`; a client sends it as
`authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from kevo_repl.config import MESSAGE_LIMIT, ConnectorConfig, ServerConfig
from kevo_repl.errors import ConfigError
from kevo_repl.protocol.methods import NODE_PROMOTE, NODE_REPOINT

#: largest gRPC message either side accepts; a response is capped well below it
MAX_MESSAGE_BYTES = MESSAGE_LIMIT
AUTH_HEADER = "authorization"
#: the server accepts keepalive pings this often at most; clients ping no faster than twice
#: this, so jitter never earns them a "too many pings" GOAWAY
MIN_PING_INTERVAL_MS = 500


def _message_limits() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


def channel_options(cfg: ConnectorConfig | None = None) -> list[tuple[str, Any]]:
    cfg = cfg or ConnectorConfig()
    opts = [
        *_message_limits(),
        ("grpc.keepalive_time_ms", max(2 * MIN_PING_INTERVAL_MS, int(cfg.keepalive_s * 1000))),
        ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
        # newer gRPC cores time out an unanswered ping by this one instead (default 1 min)
        ("grpc.http2.ping_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # grpcio 1.83.0 to 1.85.3 (at least) allocate memory without end when a server's
        # SETTINGS and GOAWAY reach a call that is still waiting for its connection: the
        # retry layer spins on the dead transport. Without it the call fails UNAVAILABLE at
        # once and the caller's own backoff reconnects (docs/DESIGN.md, "GOAWAY growth").
        ("grpc.enable_retries", 0),
    ]
    if cfg.tls_server_name:
        opts.append(("grpc.ssl_target_name_override", cfg.tls_server_name))
    return opts


def server_options(cfg: ServerConfig | None = None) -> list[tuple[str, Any]]:
    cfg = cfg or ServerConfig()
    return [
        *_message_limits(),
        ("grpc.so_reuseport", 0),
        # the server pings too, so a replica that vanished without closing is noticed and
        # its session freed
        ("grpc.keepalive_time_ms", int(cfg.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
        ("grpc.http2.ping_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def client_credentials(cfg: ConnectorConfig) -> grpc.ChannelCredentials | None:
    if not cfg.tls_ca:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(cfg.tls_ca, "[connector] tls_ca"),
        private_key=_read(cfg.tls_key, "[connector] tls_key") if cfg.tls_key else None,
        certificate_chain=_read(cfg.tls_cert, "[connector] tls_cert") if cfg.tls_cert else None,
    )


def server_credentials(cfg: ServerConfig) -> grpc.ServerCredentials | None:
    if not cfg.tls_cert:
        return None
    pair = (_read(cfg.tls_key, "[server] tls_key"), _read(cfg.tls_cert, "[server] tls_cert"))
    if cfg.tls_client_ca:
        return grpc.ssl_server_credentials(
            [pair],
            root_certificates=_read(cfg.tls_client_ca, "[server] tls_client_ca"),
            require_client_auth=True,
        )
    return grpc.ssl_server_credentials([pair])


def call_metadata(cfg: ConnectorConfig) -> tuple[tuple[str, str], ...]:
    return ((AUTH_HEADER, f"Bearer {cfg.token}"),) if cfg.token else ()


def connector_config(options: Mapping[str, Any]) -> ConnectorConfig:
    """The `[connector]` table as a ConnectorConfig (connector plugins get it as a mapping)."""
    known = ConnectorConfig.__dataclass_fields__
    return ConnectorConfig(**{k: v for k, v in options.items() if k in known})


def open_aio_channel(address: str, cfg: ConnectorConfig) -> grpc.aio.Channel:
    creds = client_credentials(cfg)
    if creds is None:
        return grpc.aio.insecure_channel(address, options=channel_options(cfg))
    return grpc.aio.secure_channel(address, creds, options=channel_options(cfg))


def open_channel(address: str, cfg: ConnectorConfig) -> grpc.Channel:
    creds = client_credentials(cfg)
    if creds is None:
        return grpc.insecure_channel(address, options=channel_options(cfg))
    return grpc.secure_channel(address, creds, options=channel_options(cfg))


#: the replication service: its calls are the replication role's
REPLICATION_PREFIX = "/kevo.replication.WALReplicationService/"
#: node calls that change a node's place in replication: also the replication role's
ADMIN_METHODS = frozenset({NODE_REPOINT, NODE_PROMOTE})


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Refuses calls without the right token. With a replication token, replication calls need
    it and client-API calls need the client token: one role's token never grants the other's
    (PERMISSION_DENIED); a missing or unknown token is UNAUTHENTICATED."""

    def __init__(self, token: str, replication_token: str = "") -> None:
        self._client = f"Bearer {token}".encode() if token else None
        self._replication = f"Bearer {replication_token}".encode() if replication_token else None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        presented = b""
        for key, value in details.invocation_metadata or ():
            if key == AUTH_HEADER:
                presented = value.encode() if isinstance(value, str) else bytes(value)
        method = str(details.method)
        replication = method.startswith(REPLICATION_PREFIX) or method in ADMIN_METHODS
        wanted: bytes | None
        other: bytes | None
        if replication and self._replication is not None:
            wanted, other, role = self._replication, self._client, "replication"
        else:
            wanted, other, role = self._client, self._replication, "client"
        if wanted is None or hmac.compare_digest(presented, wanted):
            return handler
        if other is not None and hmac.compare_digest(presented, other):
            return _refusal(
                handler, grpc.StatusCode.PERMISSION_DENIED,
                f"this token does not grant {role} calls: they need this server's {role} token",
            )
        reason = "missing token" if not presented else "wrong token"
        what = "replication token" if role == "replication" else "shared token"
        return _refusal(
            handler, grpc.StatusCode.UNAUTHENTICATED,
            f"{reason}: this server requires a valid {what}",
        )


def _refusal(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover  # makes this an async generator, as the handler must be

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(abort_stream, **kw)
    return grpc.unary_unary_rpc_method_handler(abort, **kw)
