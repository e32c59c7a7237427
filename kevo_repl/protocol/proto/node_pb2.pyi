from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OP_UNSPECIFIED: _ClassVar[Op]
    PUT: _ClassVar[Op]
    DELETE: _ClassVar[Op]
    MERGE: _ClassVar[Op]

class AckLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_DURABLE: _ClassVar[AckLevel]
    ACK_RECEIVED: _ClassVar[AckLevel]

class TimeoutPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ON_TIMEOUT_RAISE: _ClassVar[TimeoutPolicy]
    ON_TIMEOUT_DEGRADE: _ClassVar[TimeoutPolicy]
OP_UNSPECIFIED: Op
PUT: Op
DELETE: Op
MERGE: Op
ACK_DURABLE: AckLevel
ACK_RECEIVED: AckLevel
ON_TIMEOUT_RAISE: TimeoutPolicy
ON_TIMEOUT_DEGRADE: TimeoutPolicy

class Mutation(_message.Message):
    __slots__ = ("op", "key", "value")
    OP_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    op: Op
    key: bytes
    value: bytes
    def __init__(self, op: _Optional[_Union[Op, str]] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("mutations", "wait_for", "level", "timeout_s", "on_timeout", "request_id", "idempotency_key")
    MUTATIONS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    ON_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    mutations: _containers.RepeatedCompositeFieldContainer[Mutation]
    wait_for: int
    level: AckLevel
    timeout_s: float
    on_timeout: TimeoutPolicy
    request_id: int
    idempotency_key: bytes
    def __init__(self, mutations: _Optional[_Iterable[_Union[Mutation, _Mapping]]] = ..., wait_for: _Optional[int] = ..., level: _Optional[_Union[AckLevel, str]] = ..., timeout_s: _Optional[float] = ..., on_timeout: _Optional[_Union[TimeoutPolicy, str]] = ..., request_id: _Optional[int] = ..., idempotency_key: _Optional[bytes] = ...) -> None: ...

class WriteBatch(_message.Message):
    __slots__ = ("writes",)
    WRITES_FIELD_NUMBER: _ClassVar[int]
    writes: _containers.RepeatedCompositeFieldContainer[WriteRequest]
    def __init__(self, writes: _Optional[_Iterable[_Union[WriteRequest, _Mapping]]] = ...) -> None: ...

class WriteResults(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[WriteResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[WriteResponse, _Mapping]]] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("first_sequence", "last_sequence", "acked_by", "degraded", "request_id", "error_code", "error", "duplicate", "epoch")
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACKED_BY_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    first_sequence: int
    last_sequence: int
    acked_by: _containers.RepeatedScalarFieldContainer[str]
    degraded: bool
    request_id: int
    error_code: int
    error: str
    duplicate: bool
    epoch: int
    def __init__(self, first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., acked_by: _Optional[_Iterable[str]] = ..., degraded: _Optional[bool] = ..., request_id: _Optional[int] = ..., error_code: _Optional[int] = ..., error: _Optional[str] = ..., duplicate: _Optional[bool] = ..., epoch: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key", "min_sequence")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MIN_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    min_sequence: int
    def __init__(self, key: _Optional[bytes] = ..., min_sequence: _Optional[int] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("found", "value", "sequence")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: bytes
    sequence: int
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[bytes] = ..., sequence: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaSlot(_message.Message):
    __slots__ = ("replica_id", "acked_sequence", "connected", "session_id", "peer", "last_ack_age_s", "lag_entries", "stalled", "slot_state", "lag_bytes", "holds_oldest_segment", "inactive_s", "lost_age_s", "never_acks", "sent_sequence")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    LAST_ACK_AGE_S_FIELD_NUMBER: _ClassVar[int]
    LAG_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    STALLED_FIELD_NUMBER: _ClassVar[int]
    SLOT_STATE_FIELD_NUMBER: _ClassVar[int]
    LAG_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOLDS_OLDEST_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    INACTIVE_S_FIELD_NUMBER: _ClassVar[int]
    LOST_AGE_S_FIELD_NUMBER: _ClassVar[int]
    NEVER_ACKS_FIELD_NUMBER: _ClassVar[int]
    SENT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    acked_sequence: int
    connected: bool
    session_id: str
    peer: str
    last_ack_age_s: float
    lag_entries: int
    stalled: bool
    slot_state: str
    lag_bytes: int
    holds_oldest_segment: bool
    inactive_s: float
    lost_age_s: float
    never_acks: bool
    sent_sequence: int
    def __init__(self, replica_id: _Optional[str] = ..., acked_sequence: _Optional[int] = ..., connected: _Optional[bool] = ..., session_id: _Optional[str] = ..., peer: _Optional[str] = ..., last_ack_age_s: _Optional[float] = ..., lag_entries: _Optional[int] = ..., stalled: _Optional[bool] = ..., slot_state: _Optional[str] = ..., lag_bytes: _Optional[int] = ..., holds_oldest_segment: _Optional[bool] = ..., inactive_s: _Optional[float] = ..., lost_age_s: _Optional[float] = ..., never_acks: _Optional[bool] = ..., sent_sequence: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("role", "state", "last_applied", "head_sequence", "first_sequence", "history_id", "applier", "applied_entries", "replicas", "primary", "replica_id", "last_error", "reconnects", "corrupt_entries", "gaps", "duplicates_skipped", "lag_entries", "lag_seconds", "stalled", "connected", "last_message_age_s", "backoff_history_s", "semisync_degraded", "received_sequence", "apply_rate", "bootstrap_state", "bootstrap_snapshot_id", "bootstrap_sequence", "bootstrap_chunks", "bootstrap_keys", "bootstrap_bytes", "bootstrap_total_keys", "bootstrap_total_bytes", "bootstrap_percent", "bootstraps", "wal_bytes", "wal_segments", "max_retained_bytes", "oldest_segment_held_by", "oldest_segment_age_s", "snapshots_held", "lost_slots", "primary_protocol", "mislabelled_payloads", "primary_lacks", "divergence_detection", "rss_bytes", "max_rss_bytes", "memory_guard_trips", "store_damage_events", "last_verified_sequence", "last_verified_age_s", "divergent_ranges", "divergent_range_count", "verify_runs", "verify_failures", "verify_error", "discarded_entries")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIER_FIELD_NUMBER: _ClassVar[int]
    APPLIED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    RECONNECTS_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    GAPS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    LAG_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STALLED_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_MESSAGE_AGE_S_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_HISTORY_S_FIELD_NUMBER: _ClassVar[int]
    SEMISYNC_DEGRADED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    APPLY_RATE_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_STATE_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_KEYS_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_TOTAL_KEYS_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_PERCENT_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAPS_FIELD_NUMBER: _ClassVar[int]
    WAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    WAL_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_RETAINED_BYTES_FIELD_NUMBER: _ClassVar[int]
    OLDEST_SEGMENT_HELD_BY_FIELD_NUMBER: _ClassVar[int]
    OLDEST_SEGMENT_AGE_S_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_HELD_FIELD_NUMBER: _ClassVar[int]
    LOST_SLOTS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    MISLABELLED_PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_LACKS_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCE_DETECTION_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_GUARD_TRIPS_FIELD_NUMBER: _ClassVar[int]
    STORE_DAMAGE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_VERIFIED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_VERIFIED_AGE_S_FIELD_NUMBER: _ClassVar[int]
    DIVERGENT_RANGES_FIELD_NUMBER: _ClassVar[int]
    DIVERGENT_RANGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    VERIFY_RUNS_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FAILURES_FIELD_NUMBER: _ClassVar[int]
    VERIFY_ERROR_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    role: str
    state: str
    last_applied: int
    head_sequence: int
    first_sequence: int
    history_id: str
    applier: str
    applied_entries: int
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaSlot]
    primary: str
    replica_id: str
    last_error: str
    reconnects: int
    corrupt_entries: int
    gaps: int
    duplicates_skipped: int
    lag_entries: int
    lag_seconds: float
    stalled: bool
    connected: bool
    last_message_age_s: float
    backoff_history_s: _containers.RepeatedScalarFieldContainer[float]
    semisync_degraded: int
    received_sequence: int
    apply_rate: float
    bootstrap_state: str
    bootstrap_snapshot_id: str
    bootstrap_sequence: int
    bootstrap_chunks: int
    bootstrap_keys: int
    bootstrap_bytes: int
    bootstrap_total_keys: int
    bootstrap_total_bytes: int
    bootstrap_percent: float
    bootstraps: int
    wal_bytes: int
    wal_segments: int
    max_retained_bytes: int
    oldest_segment_held_by: str
    oldest_segment_age_s: float
    snapshots_held: int
    lost_slots: int
    primary_protocol: int
    mislabelled_payloads: int
    primary_lacks: _containers.RepeatedScalarFieldContainer[str]
    divergence_detection: bool
    rss_bytes: int
    max_rss_bytes: int
    memory_guard_trips: int
    store_damage_events: int
    last_verified_sequence: int
    last_verified_age_s: float
    divergent_ranges: _containers.RepeatedScalarFieldContainer[str]
    divergent_range_count: int
    verify_runs: int
    verify_failures: int
    verify_error: str
    discarded_entries: int
    def __init__(self, role: _Optional[str] = ..., state: _Optional[str] = ..., last_applied: _Optional[int] = ..., head_sequence: _Optional[int] = ..., first_sequence: _Optional[int] = ..., history_id: _Optional[str] = ..., applier: _Optional[str] = ..., applied_entries: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ReplicaSlot, _Mapping]]] = ..., primary: _Optional[str] = ..., replica_id: _Optional[str] = ..., last_error: _Optional[str] = ..., reconnects: _Optional[int] = ..., corrupt_entries: _Optional[int] = ..., gaps: _Optional[int] = ..., duplicates_skipped: _Optional[int] = ..., lag_entries: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., stalled: _Optional[bool] = ..., connected: _Optional[bool] = ..., last_message_age_s: _Optional[float] = ..., backoff_history_s: _Optional[_Iterable[float]] = ..., semisync_degraded: _Optional[int] = ..., received_sequence: _Optional[int] = ..., apply_rate: _Optional[float] = ..., bootstrap_state: _Optional[str] = ..., bootstrap_snapshot_id: _Optional[str] = ..., bootstrap_sequence: _Optional[int] = ..., bootstrap_chunks: _Optional[int] = ..., bootstrap_keys: _Optional[int] = ..., bootstrap_bytes: _Optional[int] = ..., bootstrap_total_keys: _Optional[int] = ..., bootstrap_total_bytes: _Optional[int] = ..., bootstrap_percent: _Optional[float] = ..., bootstraps: _Optional[int] = ..., wal_bytes: _Optional[int] = ..., wal_segments: _Optional[int] = ..., max_retained_bytes: _Optional[int] = ..., oldest_segment_held_by: _Optional[str] = ..., oldest_segment_age_s: _Optional[float] = ..., snapshots_held: _Optional[int] = ..., lost_slots: _Optional[int] = ..., primary_protocol: _Optional[int] = ..., mislabelled_payloads: _Optional[int] = ..., primary_lacks: _Optional[_Iterable[str]] = ..., divergence_detection: _Optional[bool] = ..., rss_bytes: _Optional[int] = ..., max_rss_bytes: _Optional[int] = ..., memory_guard_trips: _Optional[int] = ..., store_damage_events: _Optional[int] = ..., last_verified_sequence: _Optional[int] = ..., last_verified_age_s: _Optional[float] = ..., divergent_ranges: _Optional[_Iterable[str]] = ..., divergent_range_count: _Optional[int] = ..., verify_runs: _Optional[int] = ..., verify_failures: _Optional[int] = ..., verify_error: _Optional[str] = ..., discarded_entries: _Optional[int] = ...) -> None: ...

class DigestRequest(_message.Message):
    __slots__ = ("prefix", "split", "at_sequence", "hold_replica", "hold_s")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    AT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HOLD_REPLICA_FIELD_NUMBER: _ClassVar[int]
    HOLD_S_FIELD_NUMBER: _ClassVar[int]
    prefix: bytes
    split: bool
    at_sequence: int
    hold_replica: str
    hold_s: float
    def __init__(self, prefix: _Optional[bytes] = ..., split: _Optional[bool] = ..., at_sequence: _Optional[int] = ..., hold_replica: _Optional[str] = ..., hold_s: _Optional[float] = ...) -> None: ...

class ReleaseDigestHoldRequest(_message.Message):
    __slots__ = ("replica_id", "sequence")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    sequence: int
    def __init__(self, replica_id: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class ReleaseDigestHoldResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class DigestBucket(_message.Message):
    __slots__ = ("prefix", "keys", "digest", "first_key", "last_key", "exact")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FIRST_KEY_FIELD_NUMBER: _ClassVar[int]
    LAST_KEY_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    prefix: bytes
    keys: int
    digest: str
    first_key: bytes
    last_key: bytes
    exact: bool
    def __init__(self, prefix: _Optional[bytes] = ..., keys: _Optional[int] = ..., digest: _Optional[str] = ..., first_key: _Optional[bytes] = ..., last_key: _Optional[bytes] = ..., exact: _Optional[bool] = ...) -> None: ...

class DigestResponse(_message.Message):
    __slots__ = ("sequence", "keys", "digest", "buckets")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    keys: int
    digest: str
    buckets: _containers.RepeatedCompositeFieldContainer[DigestBucket]
    def __init__(self, sequence: _Optional[int] = ..., keys: _Optional[int] = ..., digest: _Optional[str] = ..., buckets: _Optional[_Iterable[_Union[DigestBucket, _Mapping]]] = ...) -> None: ...

class DropSlotRequest(_message.Message):
    __slots__ = ("replica_id",)
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    def __init__(self, replica_id: _Optional[str] = ...) -> None: ...

class DropSlotResponse(_message.Message):
    __slots__ = ("acked_sequence",)
    ACKED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    acked_sequence: int
    def __init__(self, acked_sequence: _Optional[int] = ...) -> None: ...

class RepointRequest(_message.Message):
    __slots__ = ("primary",)
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    primary: str
    def __init__(self, primary: _Optional[str] = ...) -> None: ...

class RepointResponse(_message.Message):
    __slots__ = ("previous",)
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    previous: str
    def __init__(self, previous: _Optional[str] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class PromoteResponse(_message.Message):
    __slots__ = ("epoch", "position", "history_id")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ID_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    position: int
    history_id: str
    def __init__(self, epoch: _Optional[int] = ..., position: _Optional[int] = ..., history_id: _Optional[str] = ...) -> None: ...
