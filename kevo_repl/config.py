"""One TOML file of configuration; every option has a default, and CLI flags override it.

Each section is a dataclass whose fields declare their type, range and meaning (msgspec
`Meta`); kevo_repl.schema checks TOML tables against them, and docs/configuration.md is
generated from them (scripts/gen_config_doc.py).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from msgspec import Meta

from kevo_repl import schema
from kevo_repl.errors import ConfigError
from kevo_repl.identity import replica_id_problem

#: what a node is; `kevo-repl primary|replica` sets it
Role = Literal["primary", "replica"]
ROLES: tuple[Role, ...] = typing.get_args(Role)
#: the largest gRPC message either side accepts (kevo_repl.protocol.transport uses it)
MESSAGE_LIMIT = 256 * 1024 * 1024
#: responses and writes must fit the gRPC message limit that both sides set
MAX_BATCH_BYTES = MESSAGE_LIMIT - 1024 * 1024
#: bounds of a snapshot chunk's size, on either side
MIN_CHUNK_BYTES = 1024
MAX_CHUNK_BYTES = 64 * 1024 * 1024


@dataclass
class NodeConfig:
    """What this node is and where it lives."""

    role: Annotated[
        Role,
        Meta(description="the `kevo-repl primary|replica` subcommand sets it"),
    ] = "primary"
    data_dir: Annotated[
        str, Meta(description="the node's directory: its store, and on a primary its WAL and slots")
    ] = "./data"
    listen: Annotated[
        str,
        Meta(description="HOST:PORT to serve on; port 0 picks a free one (written to "
             "DATA_DIR/node.addr)"),
    ] = "127.0.0.1:50052"
    metrics: Annotated[
        str, Meta(description="HOST:PORT for a Prometheus /metrics endpoint, or PORT alone for "
                  "127.0.0.1:PORT; empty = none")
    ] = ""
    advertise: Annotated[
        str,
        Meta(description="HOST:PORT other nodes reach this node at; a replica sends it to its "
             "primary as `listener_address` (KevoDB's primary requires it); empty = the listen "
             "address"),
    ] = ""
    max_rss_mb: Annotated[
        int,
        Meta(ge=0, description="RSS bound in MB: past it the node logs why and exits with code 75 "
             "for its supervisor to restart it (crash-safe, so nothing is lost); 0 = no bound"),
    ] = 1024
    metrics_token: Annotated[
        str, Meta(description="when set, /metrics answers only requests with "
                  "\"Authorization: Bearer <token>\"")
    ] = ""
    metrics_tls_cert: Annotated[
        str, Meta(description="PEM certificate: serve /metrics over HTTPS (with metrics_tls_key)")
    ] = ""
    metrics_tls_key: Annotated[
        str, Meta(description="PEM private key of metrics_tls_cert")
    ] = ""


@dataclass
class ReplicaConfig:
    """How a replica follows its primary."""

    primary: Annotated[
        str, Meta(description="the primary's HOST:PORT (required for a replica: --primary or "
                  "this key)")
    ] = ""
    replica_id: Annotated[
        str,
        Meta(description="this replica's name (1 to 128 of A-Z a-z 0-9 . _ -); "
             "the primary keeps a durable slot (acked position) per name. Empty: an id derived "
             "once (host name plus a random suffix) and kept in DATA_DIR/replica_id"),
    ] = ""
    replication_token: Annotated[
        str,
        Meta(description="the primary's [server] replication_token, sent instead of "
             "[connector] token on replication calls; empty = send [connector] token"),
    ] = ""
    queue_batches: Annotated[
        int,
        Meta(ge=1, description="responses buffered between receive and apply; bounds replica "
             "memory (flow control)"),
    ] = 8
    max_apply_entries: Annotated[
        int,
        Meta(ge=1, description="most entries applied in one store transaction when batches "
             "queue up"),
    ] = 50_000
    backoff_initial_s: Annotated[
        float,
        Meta(gt=0, description="first reconnect delay; it doubles per failed attempt, with "
             "jitter (x0.5..1)..."),
    ] = 0.05
    backoff_max_s: Annotated[
        float,
        Meta(gt=0, description="...up to this; it resets once a connection makes progress"),
    ] = 5.0
    max_corrupt_retries: Annotated[
        int,
        Meta(ge=0, description="how often to re-request the same corrupt sequence before "
             "giving up in ERROR"),
    ] = 5
    bootstrap: Annotated[
        bool,
        Meta(description="when the primary no longer retains our position (OUT_OF_RANGE), "
             "install a snapshot of its store into a fresh store and switch to it; false: stop "
             "with an error instead"),
    ] = True
    snapshot_chunk_bytes: Annotated[
        int,
        Meta(ge=MIN_CHUNK_BYTES, le=MAX_CHUNK_BYTES,
             description="largest snapshot chunk to ask for (the primary caps it at [snapshot] "
             "max_chunk_bytes)"),
    ] = 1024 * 1024
    v1_resend_wait_s: Annotated[
        float,
        Meta(gt=0, description="a protocol-1 primary (KevoDB) re-sends its unacknowledged "
             "window on a timer: on a gap from one, wait this long for that re-send before "
             "asking (NegativeAcknowledge), and ask at most once per this interval"),
    ] = 1.0
    on_damage: Annotated[
        Literal["stop", "rebootstrap"],
        Meta(description="when the store is found damaged (on open, apply, read or digest): "
             "\"stop\" goes to ERROR and stops acknowledging; \"rebootstrap\" moves the store "
             "aside to DATA_DIR/store.damaged-<time> and installs a snapshot from the primary"),
    ] = "stop"
    max_damaged_copies: Annotated[
        int,
        Meta(ge=1, le=100, description="most damaged stores kept aside: with this many "
             "already in DATA_DIR, on_damage = \"rebootstrap\" stops instead (they are never "
             "deleted automatically)"),
    ] = 3
    verify_interval_s: Annotated[
        float,
        Meta(ge=0, description="background verification: every this many seconds, compare "
             "this replica's bucket digests with its primary's at a common position (the "
             "primary holds this replica's stream there meanwhile; calls carry [connector] "
             "token) and report it in status and metrics; 0 = off"),
    ] = 0.0


@dataclass
class ApplierConfig:
    """The store this node applies entries into."""

    name: Annotated[
        str,
        Meta(min_length=1, description='a registered applier name: "lmdb", "leveldb", or a '
             "plugin's (`kevo-repl plugins`)"),
    ] = "lmdb"
    options: Annotated[
        dict[str, Any],
        Meta(description="the `[applier.options]` table, checked against the applier's own "
             "declared options (below)"),
    ] = field(default_factory=dict)


@dataclass
class CompressorConfig:
    """Replica: the codec it asks its primary to compress the stream with."""

    name: Annotated[
        str,
        Meta(min_length=1, description='a registered compressor: "none", "zstd" or "snappy" '
             "(block format); the primary falls back to none when it does not know the codec"),
    ] = "none"


@dataclass
class ConnectorConfig:
    """How this node (a replica) or a CLI client reaches a server."""

    name: Annotated[
        str, Meta(min_length=1, description='a registered connector; "grpc" is built in')
    ] = "grpc"
    tls_ca: Annotated[
        str, Meta(description="CA file that verifies the server's certificate; empty means "
                  "plaintext")
    ] = ""
    tls_cert: Annotated[
        str, Meta(description="client certificate, for servers that require one (mutual TLS)")
    ] = ""
    tls_key: Annotated[str, Meta(description="the client certificate's private key")] = ""
    tls_server_name: Annotated[
        str, Meta(description="name to check in the server's certificate instead of the "
                  "address's host")
    ] = ""
    token: Annotated[str, Meta(description="shared token sent with every call")] = ""
    keepalive_s: Annotated[
        float,
        Meta(gt=0, description="gRPC keepalive ping interval; a peer that does not answer "
             "within keepalive_timeout_s is dead"),
    ] = 10.0
    keepalive_timeout_s: Annotated[
        float, Meta(gt=0, description="how long a keepalive ping may go unanswered")
    ] = 5.0


@dataclass
class ServerConfig:
    """How this node serves (both the replication service and the node API)."""

    tls_cert: Annotated[str, Meta(description="server certificate; empty means plaintext")] = ""
    tls_key: Annotated[str, Meta(description="the server certificate's private key")] = ""
    tls_client_ca: Annotated[
        str, Meta(description="when set, clients must present a certificate signed by this CA "
                  "(mutual TLS)")
    ] = ""
    token: Annotated[
        str, Meta(description="when set, every client-API call must carry this token (and every "
                  "replication call, unless replication_token is set)")
    ] = ""
    replication_token: Annotated[
        str, Meta(description="when set, replication calls (StreamWAL, Acknowledge, "
                  "NegativeAcknowledge, Snapshot) must carry this token; [server] token does not "
                  "grant them (PERMISSION_DENIED)")
    ] = ""
    replica_id_from_cert: Annotated[
        bool, Meta(description="with mutual TLS: a replica's id must be its client "
                   "certificate's common name or one of its subject alternative names "
                   "(PERMISSION_DENIED otherwise)")
    ] = False
    keepalive_s: Annotated[
        float,
        Meta(gt=0, description="the server pings idle clients this often, so a vanished "
             "replica's session is freed"),
    ] = 10.0
    keepalive_timeout_s: Annotated[
        float,
        Meta(gt=0, description="how long a ping may go unanswered before the connection is "
             "closed"),
    ] = 5.0


@dataclass
class WALConfig:
    """The primary's write-ahead log."""

    segment_bytes: Annotated[
        int,
        Meta(ge=1, description="a new segment file is started after this many bytes; retention "
             "deletes whole segments"),
    ] = 64 * 1024 * 1024


@dataclass
class StreamConfig:
    """How the primary streams its WAL."""

    max_batch_bytes: Annotated[
        int,
        Meta(ge=1, le=MAX_BATCH_BYTES,
             description="a response carries whole write batches up to this many bytes; a "
             "bigger batch is split over several responses, and an entry bigger than this "
             "travels as fragments (at most the gRPC message limit less 1 MiB)"),
    ] = 1024 * 1024
    max_entry_bytes: Annotated[
        int,
        Meta(ge=1, le=MAX_BATCH_BYTES,
             description="the largest entry (key, value and framing) a write may carry, and "
             "the largest write batch; bigger writes are refused with a clear error"),
    ] = 128 * 1024 * 1024
    heartbeat_s: Annotated[
        float, Meta(gt=0, description="an idle stream gets an empty heartbeat response this often")
    ] = 1.0
    stall_after_s: Annotated[
        float,
        Meta(gt=0, description="a replica that is behind and has not advanced for this long is "
             "reported as stalled"),
    ] = 5.0
    max_streams: Annotated[
        int, Meta(ge=1, description="most StreamWAL calls served at once; more are refused with "
                  "RESOURCE_EXHAUSTED")
    ] = 64
    max_write_stream_pending: Annotated[
        int, Meta(ge=1, description="results a WriteStream may hold (in flight or not yet sent); "
                  "past it the primary stops reading the stream's requests until the client "
                  "reads its results")
    ] = 1024


@dataclass
class PrimaryConfig:
    """The primary's write path."""

    idempotency_window: Annotated[
        int,
        Meta(ge=1, le=10_000_000,
             description="idempotent writes: a write's idempotency key is remembered while "
             "the write is among the primary's last this-many writes (keyed or not), also "
             "across restarts while the WAL retains it; a retry within it gets the original "
             "sequences. About 410 bytes of memory per remembered key (64-byte keys): 41 MB at "
             "the default"),
    ] = 100_000


@dataclass
class SemiSyncConfig:
    """Writes that wait for replicas (WriteRequest.wait_for > 0)."""

    default_timeout_s: Annotated[
        float,
        Meta(gt=0, description="how long such a write waits when the request names no timeout"),
    ] = 5.0


@dataclass
class RetentionConfig:
    """How much WAL the primary keeps for its replicas' slots (see docs/retention.md)."""

    max_retained_bytes: Annotated[
        int,
        Meta(ge=1, description="cap on WAL bytes on disk (at least twice [wal] segment_bytes): "
             "past it the oldest segments are deleted even when a slot still needs them (the "
             "slot is marked lost; its replica bootstraps from a snapshot)"),
    ] = 64 * 1024**3
    max_retained_age_s: Annotated[
        float,
        Meta(ge=0, description="cap on the age of a full segment (seconds since its last "
             "write); 0 = no age cap"),
    ] = 0.0
    drop_inactive_after_s: Annotated[
        float,
        Meta(ge=0, description="forget a slot whose replica has not been connected for this "
             "long; 0 = never"),
    ] = 0.0
    check_interval_s: Annotated[
        float,
        Meta(gt=0, description="how often the age cap and inactive slots are checked (only "
             "when one of them is set)"),
    ] = 5.0
    max_slots: Annotated[
        int, Meta(ge=1, description="most replica slots; a stream that would create one more is "
                  "refused (RESOURCE_EXHAUSTED)")
    ] = 64
    unacked_slot_expiry_s: Annotated[
        float, Meta(ge=0, description="forget a slot that never acknowledged anything once its "
                    "replica has been gone this long; 0 = never")
    ] = 600.0


@dataclass
class SnapshotConfig:
    """Snapshots of its store the primary serves to bootstrapping replicas."""

    max_chunk_bytes: Annotated[
        int,
        Meta(ge=MIN_CHUNK_BYTES, le=MAX_CHUNK_BYTES,
             description="largest chunk of snapshot data in one message"),
    ] = 4 * 1024 * 1024
    hold_s: Annotated[
        float,
        Meta(gt=0, description="a snapshot nobody streams is kept this long for a replica to "
             "resume it, then released"),
    ] = 60.0
    max_held: Annotated[
        int,
        Meta(ge=1, description="most snapshots held at once (each one is an open read "
             "transaction / LevelDB snapshot)"),
    ] = 4


@dataclass
class HAConfig:
    """Automatic failover through etcd (`kevo-repl ha`; see README, "High availability")."""

    etcd: Annotated[str, Meta(description="etcd's HOST:PORT; empty = no automatic failover")] = ""
    cluster: Annotated[
        str, Meta(description="the cluster's name: its keys in etcd live under /kevo-repl/NAME/")
    ] = "kevo"
    name: Annotated[
        str, Meta(description="this node's name in the cluster (1 to 128 of A-Z a-z 0-9 . _ -; "
                  "its replica id too)")
    ] = ""
    ttl_s: Annotated[
        int, Meta(ge=2, description="the primary's lease in etcd, in whole seconds: a primary "
                  "that cannot renew it stops taking writes well within it, and replicas elect a "
                  "new primary once it expired")
    ] = 5


@dataclass
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    replica: ReplicaConfig = field(default_factory=ReplicaConfig)
    applier: ApplierConfig = field(default_factory=ApplierConfig)
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    primary: PrimaryConfig = field(default_factory=PrimaryConfig)
    semisync: SemiSyncConfig = field(default_factory=SemiSyncConfig)
    wal: WALConfig = field(default_factory=WALConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    ha: HAConfig = field(default_factory=HAConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir)

    def validate(self) -> None:
        """Check every section against its schema (flags may have changed them since load),
        then what a schema cannot say: addresses, and keys that depend on one another."""
        for f in dataclasses.fields(self):
            schema.check(getattr(self, f.name), f"[{f.name}]")
        parse_address(self.node.listen, "[node] listen")
        if self.node.metrics:
            parse_address(metrics_address(self.node.metrics), "[node] metrics")
        if bool(self.node.metrics_tls_cert) != bool(self.node.metrics_tls_key):
            raise ConfigError("[node] metrics_tls_cert and metrics_tls_key go together")
        if self.node.advertise:
            parse_address(self.node.advertise, "[node] advertise")
        if self.node.role == "replica":
            if self.replica.replica_id:
                problem = replica_id_problem(self.replica.replica_id)
                if problem is not None:
                    raise ConfigError(f"[replica] replica_id: {problem}")
            if not self.replica.primary:
                raise ConfigError(
                    "a replica needs its primary: --primary HOST:PORT, or [replica] primary "
                    "in --config"
                )
            parse_address(self.replica.primary, "[replica] primary")
        if bool(self.server.tls_cert) != bool(self.server.tls_key):
            raise ConfigError("[server] tls_cert and tls_key go together")
        if self.server.tls_client_ca and not self.server.tls_cert:
            raise ConfigError("[server] tls_client_ca needs tls_cert and tls_key")
        if self.server.replica_id_from_cert and not self.server.tls_client_ca:
            raise ConfigError(
                "[server] replica_id_from_cert needs mutual TLS (tls_client_ca, tls_cert, tls_key)"
            )
        if self.server.replication_token and self.server.replication_token == self.server.token:
            raise ConfigError(
                "[server] replication_token must differ from token: replication is its own role"
            )
        if bool(self.connector.tls_cert) != bool(self.connector.tls_key):
            raise ConfigError("[connector] tls_cert and tls_key go together")
        if self.connector.tls_cert and not self.connector.tls_ca:
            raise ConfigError("[connector] a client certificate needs tls_ca (TLS) as well")
        if self.ha.etcd:
            parse_address(self.ha.etcd, "[ha] etcd")
            for what, text in (("name", self.ha.name), ("cluster", self.ha.cluster)):
                problem = replica_id_problem(text)
                if problem is not None:
                    raise ConfigError(f"[ha] {what}: {problem}")
        if self.retention.max_retained_bytes < 2 * self.wal.segment_bytes:
            raise ConfigError(
                f"[retention] max_retained_bytes ({self.retention.max_retained_bytes}) must be "
                f"at least twice [wal] segment_bytes ({self.wal.segment_bytes}): the segment "
                "being written is never deleted"
            )


def metrics_address(address: str) -> str:
    """The metrics endpoint's HOST:PORT: a bare PORT means loopback only."""
    return f"127.0.0.1:{address}" if address.isdigit() else address


def parse_address(address: str, what: str = "address") -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT, not {address!r}")
    return host, int(port)


def load(path: str | Path | None = None) -> Config:
    """Defaults, overlaid with the TOML file at `path` when given."""
    cfg = Config()
    if path is None:
        return cfg
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return from_tables(data, f" in {path}")


def from_tables(data: dict[str, Any], origin: str = "") -> Config:
    """A Config from parsed TOML: each table checked against its section's schema."""
    sections = typing.get_type_hints(Config)
    unknown = sorted(name for name in data if name not in sections)
    if unknown:
        raise ConfigError(
            f"unknown section [{unknown[0]}]{origin}; valid sections: {', '.join(sections)}"
        )
    return Config(
        **{name: schema.convert(sections[name], table, f"[{name}]") for name, table in data.items()}
    )
