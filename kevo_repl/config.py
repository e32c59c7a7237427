"""One TOML file of configuration; every option has a default, and CLI flags override it."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kevo_repl.errors import ConfigError
from kevo_repl.identity import replica_id_problem

ROLES = ("primary", "replica")
#: the largest gRPC message either side accepts (kevo_repl.protocol.transport uses it)
MESSAGE_LIMIT = 256 * 1024 * 1024


@dataclass
class NodeConfig:
    """What this node is and where it lives."""

    #: "primary" or "replica" (the `kevo-repl primary|replica` subcommand sets it)
    role: str = "primary"
    #: the node's directory: its store, and on a primary its WAL and slots
    data_dir: str = "./data"
    #: HOST:PORT to serve on; port 0 picks a free one (written to DATA_DIR/node.addr)
    listen: str = "127.0.0.1:50052"
    #: HOST:PORT for a Prometheus /metrics endpoint; empty = none
    metrics: str = ""


@dataclass
class ReplicaConfig:
    """How a replica follows its primary."""

    #: the primary's HOST:PORT
    primary: str = "127.0.0.1:50052"
    #: this replica's name (1 to 128 of A-Z a-z 0-9 . _ -); the primary keeps a durable slot
    #: (acked position) per name. Empty: an id derived once (host name plus a random suffix)
    #: and kept in DATA_DIR/replica_id
    replica_id: str = ""
    #: the primary's [server] replication_token, sent instead of [connector] token on
    #: replication calls; empty = send [connector] token
    replication_token: str = ""
    #: responses buffered between receive and apply; bounds replica memory (flow control)
    queue_batches: int = 8
    #: most entries applied in one store transaction when batches queue up
    max_apply_entries: int = 50_000
    #: first reconnect delay; it doubles per failed attempt, with jitter (x0.5..1)...
    backoff_initial_s: float = 0.05
    #: ...up to this; it resets once a connection makes progress
    backoff_max_s: float = 5.0
    #: how often to re-request the same corrupt sequence before giving up in ERROR
    max_corrupt_retries: int = 5
    #: when the primary no longer retains our position (OUT_OF_RANGE), install a snapshot
    #: of its store into a fresh store and switch to it; false: stop with an error instead
    bootstrap: bool = True
    #: largest snapshot chunk to ask for (the primary caps it at [snapshot] max_chunk_bytes)
    snapshot_chunk_bytes: int = 1024 * 1024


@dataclass
class ApplierConfig:
    """The store this node applies entries into."""

    #: a registered applier name: "lmdb", "leveldb", or a plugin's (`kevo-repl plugins`)
    name: str = "lmdb"
    #: the `[applier.options]` table, passed to the applier, which validates it (lmdb:
    #: map_size, max_readers; leveldb: write_buffer_size, lru_cache_size, max_open_files,
    #: block_size, bloom_filter_bits, compression, paranoid_checks)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompressorConfig:
    """Replica: the codec it asks its primary to compress the stream with."""

    #: a registered compressor: "none", "zstd" or "snappy" (block format); the primary
    #: falls back to none when it does not know the codec
    name: str = "none"
    #: compression level, for codecs that have levels
    level: int = 1


@dataclass
class ConnectorConfig:
    """How this node (a replica) or a CLI client reaches a server."""

    #: a registered connector; "grpc" is built in
    name: str = "grpc"
    #: CA file that verifies the server's certificate; empty means plaintext
    tls_ca: str = ""
    #: client certificate, for servers that require one (mutual TLS)
    tls_cert: str = ""
    #: the client certificate's private key
    tls_key: str = ""
    #: name to check in the server's certificate instead of the address's host
    tls_server_name: str = ""
    #: shared token sent with every call
    token: str = ""
    #: gRPC keepalive ping interval; a peer that does not answer within keepalive_timeout_s
    #: is dead
    keepalive_s: float = 10.0
    #: how long a keepalive ping may go unanswered
    keepalive_timeout_s: float = 5.0


@dataclass
class ServerConfig:
    """How this node serves (both the replication service and the node API)."""

    #: server certificate; empty means plaintext
    tls_cert: str = ""
    #: the server certificate's private key
    tls_key: str = ""
    #: when set, clients must present a certificate signed by this CA (mutual TLS)
    tls_client_ca: str = ""
    #: when set, every client-API call must carry this token (and every replication call,
    #: unless replication_token is set)
    token: str = ""
    #: when set, replication calls (StreamWAL, Acknowledge, NegativeAcknowledge, Snapshot)
    #: must carry this token; [server] token does not grant them (PERMISSION_DENIED)
    replication_token: str = ""
    #: with mutual TLS: a replica's id must be its client certificate's common name or one of
    #: its subject alternative names (PERMISSION_DENIED otherwise)
    replica_id_from_cert: bool = False
    #: the server pings idle clients this often, so a vanished replica's session is freed
    keepalive_s: float = 10.0
    #: how long a ping may go unanswered before the connection is closed
    keepalive_timeout_s: float = 5.0


@dataclass
class WALConfig:
    """The primary's write-ahead log."""

    #: a new segment file is started after this many bytes; retention deletes whole segments
    segment_bytes: int = 64 * 1024 * 1024


@dataclass
class StreamConfig:
    """How the primary streams its WAL."""

    #: a response carries whole write batches up to this many bytes; a bigger batch is split
    #: over several responses, and an entry bigger than this travels as fragments
    max_batch_bytes: int = 1024 * 1024
    #: the largest entry (key, value and framing) a write may carry, and the largest write
    #: batch; bigger writes are refused with a clear error
    max_entry_bytes: int = 128 * 1024 * 1024
    #: an idle stream gets an empty heartbeat response this often
    heartbeat_s: float = 1.0
    #: a replica that is behind and has not advanced for this long is reported as stalled
    stall_after_s: float = 5.0


@dataclass
class SemiSyncConfig:
    """Writes that wait for replicas (WriteRequest.wait_for > 0)."""

    #: how long such a write waits when the request names no timeout
    default_timeout_s: float = 5.0


@dataclass
class RetentionConfig:
    """How much WAL the primary keeps for its replicas' slots (see docs/retention.md)."""

    #: cap on WAL bytes on disk: past it the oldest segments are deleted even when a slot
    #: still needs them (the slot is marked lost; its replica bootstraps from a snapshot)
    max_retained_bytes: int = 64 * 1024**3
    #: cap on the age of a full segment (seconds since its last write); 0 = no age cap
    max_retained_age_s: float = 0.0
    #: forget a slot whose replica has not been connected for this long; 0 = never
    drop_inactive_after_s: float = 0.0
    #: how often the age cap and inactive slots are checked (only when one of them is set)
    check_interval_s: float = 5.0


@dataclass
class SnapshotConfig:
    """Snapshots of its store the primary serves to bootstrapping replicas."""

    #: largest chunk of snapshot data in one message
    max_chunk_bytes: int = 4 * 1024 * 1024
    #: a snapshot nobody streams is kept this long for a replica to resume it, then released
    hold_s: float = 60.0
    #: most snapshots held at once (each one is an open read transaction / LevelDB snapshot)
    max_held: int = 4


@dataclass
class HAConfig:
    """Automatic failover through etcd (`kevo-repl ha`; see README, "High availability")."""

    #: etcd's HOST:PORT; empty = no automatic failover
    etcd: str = ""
    #: the cluster's name: its keys in etcd live under /kevo-repl/NAME/
    cluster: str = "kevo"
    #: this node's name in the cluster (1 to 128 of A-Z a-z 0-9 . _ -; its replica id too)
    name: str = ""
    #: the primary's lease in etcd, in whole seconds: a primary that cannot renew it stops
    #: taking writes well within it, and replicas elect a new primary once it expired
    ttl_s: int = 5


#: bounds of a snapshot chunk's size, on either side
MIN_CHUNK_BYTES = 1024
MAX_CHUNK_BYTES = 64 * 1024 * 1024


@dataclass
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    replica: ReplicaConfig = field(default_factory=ReplicaConfig)
    applier: ApplierConfig = field(default_factory=ApplierConfig)
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
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
        if self.node.role not in ROLES:
            raise ConfigError(
                f"[node] role must be one of {', '.join(ROLES)}, not {self.node.role!r}"
            )
        parse_address(self.node.listen, "[node] listen")
        if self.node.metrics:
            parse_address(self.node.metrics, "[node] metrics")
        if self.node.role == "replica":
            parse_address(self.replica.primary, "[replica] primary")
            if self.replica.replica_id:
                problem = replica_id_problem(self.replica.replica_id)
                if problem is not None:
                    raise ConfigError(f"[replica] replica_id: {problem}")
        for name, value in (
            ("[wal] segment_bytes", self.wal.segment_bytes),
            ("[stream] max_batch_bytes", self.stream.max_batch_bytes),
            ("[stream] max_entry_bytes", self.stream.max_entry_bytes),
            ("[replica] queue_batches", self.replica.queue_batches),
            ("[replica] max_apply_entries", self.replica.max_apply_entries),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be positive, not {value}")
        # responses and writes must fit the gRPC message limit that both sides set
        limit = MESSAGE_LIMIT - 1024 * 1024
        for name, value in (
            ("[stream] max_batch_bytes", self.stream.max_batch_bytes),
            ("[stream] max_entry_bytes", self.stream.max_entry_bytes),
        ):
            if value > limit:
                raise ConfigError(f"{name} must be at most {limit} (the gRPC message limit)")
        for name, fvalue in (
            ("[stream] heartbeat_s", self.stream.heartbeat_s),
            ("[stream] stall_after_s", self.stream.stall_after_s),
            ("[semisync] default_timeout_s", self.semisync.default_timeout_s),
            ("[connector] keepalive_s", self.connector.keepalive_s),
            ("[connector] keepalive_timeout_s", self.connector.keepalive_timeout_s),
            ("[server] keepalive_s", self.server.keepalive_s),
            ("[server] keepalive_timeout_s", self.server.keepalive_timeout_s),
        ):
            if fvalue <= 0:
                raise ConfigError(f"{name} must be positive, not {fvalue}")
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
        self._validate_retention()
        if self.ha.etcd:
            parse_address(self.ha.etcd, "[ha] etcd")
            if self.ha.ttl_s < 2:
                raise ConfigError(f"[ha] ttl_s must be at least 2, not {self.ha.ttl_s}")
            for what, text in (("name", self.ha.name), ("cluster", self.ha.cluster)):
                problem = replica_id_problem(text)
                if problem is not None:
                    raise ConfigError(f"[ha] {what}: {problem}")

    def _validate_retention(self) -> None:
        ret, snap = self.retention, self.snapshot
        if ret.max_retained_bytes < 2 * self.wal.segment_bytes:
            raise ConfigError(
                f"[retention] max_retained_bytes ({ret.max_retained_bytes}) must be at least "
                f"twice [wal] segment_bytes ({self.wal.segment_bytes}): the segment being "
                "written is never deleted"
            )
        for name, fvalue in (
            ("[retention] max_retained_age_s", ret.max_retained_age_s),
            ("[retention] drop_inactive_after_s", ret.drop_inactive_after_s),
        ):
            if fvalue < 0:
                raise ConfigError(f"{name} must be 0 (off) or positive, not {fvalue}")
        for name, fvalue in (
            ("[retention] check_interval_s", ret.check_interval_s),
            ("[snapshot] hold_s", snap.hold_s),
        ):
            if fvalue <= 0:
                raise ConfigError(f"{name} must be positive, not {fvalue}")
        if snap.max_held < 1:
            raise ConfigError(f"[snapshot] max_held must be at least 1, not {snap.max_held}")
        for name, value in (
            ("[snapshot] max_chunk_bytes", snap.max_chunk_bytes),
            ("[replica] snapshot_chunk_bytes", self.replica.snapshot_chunk_bytes),
        ):
            if not MIN_CHUNK_BYTES <= value <= MAX_CHUNK_BYTES:
                raise ConfigError(
                    f"{name} must be from {MIN_CHUNK_BYTES} to {MAX_CHUNK_BYTES}, not {value}"
                )


def parse_address(address: str, what: str = "address") -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT, not {address!r}")
    return host, int(port)


def _fill(section: Any, table: dict[str, Any], where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(section)}
    for key, value in table.items():
        f = fields.get(key)
        if f is None:
            raise ConfigError(
                f"unknown key {key!r} in [{where}]; valid keys: {', '.join(sorted(fields))}"
            )
        current = getattr(section, key)
        if isinstance(current, bool) or not isinstance(current, int | float | str | dict):
            ok = isinstance(value, type(current))
        elif isinstance(current, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(current)) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(
                f"[{where}] {key} must be {type(current).__name__}, not {type(value).__name__}"
            )
        setattr(section, key, float(value) if isinstance(current, float) else value)


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
    sections = {f.name for f in dataclasses.fields(cfg)}
    for name, table in data.items():
        if name not in sections:
            raise ConfigError(
                f"unknown section [{name}] in {path}; valid sections: {', '.join(sorted(sections))}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] in {path} must be a table")
        _fill(getattr(cfg, name), table, name)
    return cfg
