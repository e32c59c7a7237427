from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FragmentType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FULL: _ClassVar[FragmentType]
    FIRST: _ClassVar[FragmentType]
    MIDDLE: _ClassVar[FragmentType]
    LAST: _ClassVar[FragmentType]

class CompressionCodec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NONE: _ClassVar[CompressionCodec]
    ZSTD: _ClassVar[CompressionCodec]
    SNAPPY: _ClassVar[CompressionCodec]
FULL: FragmentType
FIRST: FragmentType
MIDDLE: FragmentType
LAST: FragmentType
NONE: CompressionCodec
ZSTD: CompressionCodec
SNAPPY: CompressionCodec

class WALStreamRequest(_message.Message):
    __slots__ = ("start_sequence", "protocol_version", "compression_supported", "preferred_codec", "listener_address", "replica_id", "history_id", "block_compression", "chain", "column_blocks")
    START_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_CODEC_FIELD_NUMBER: _ClassVar[int]
    LISTENER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    COLUMN_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    start_sequence: int
    protocol_version: int
    compression_supported: bool
    preferred_codec: CompressionCodec
    listener_address: str
    replica_id: str
    history_id: str
    block_compression: bool
    chain: int
    column_blocks: bool
    def __init__(self, start_sequence: _Optional[int] = ..., protocol_version: _Optional[int] = ..., compression_supported: _Optional[bool] = ..., preferred_codec: _Optional[_Union[CompressionCodec, str]] = ..., listener_address: _Optional[str] = ..., replica_id: _Optional[str] = ..., history_id: _Optional[str] = ..., block_compression: _Optional[bool] = ..., chain: _Optional[int] = ..., column_blocks: _Optional[bool] = ...) -> None: ...

class WALStreamResponse(_message.Message):
    __slots__ = ("entries", "compressed", "codec", "head_sequence", "primary_time_ns", "history_id", "compressed_entries", "partial_batch", "chain", "want_received_acks", "blocks", "idempotency_key")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ID_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_BATCH_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    WANT_RECEIVED_ACKS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[WALEntry]
    compressed: bool
    codec: CompressionCodec
    head_sequence: int
    primary_time_ns: int
    history_id: str
    compressed_entries: bytes
    partial_batch: bool
    chain: int
    want_received_acks: bool
    blocks: _containers.RepeatedCompositeFieldContainer[ColumnBlock]
    idempotency_key: bytes
    def __init__(self, entries: _Optional[_Iterable[_Union[WALEntry, _Mapping]]] = ..., compressed: _Optional[bool] = ..., codec: _Optional[_Union[CompressionCodec, str]] = ..., head_sequence: _Optional[int] = ..., primary_time_ns: _Optional[int] = ..., history_id: _Optional[str] = ..., compressed_entries: _Optional[bytes] = ..., partial_batch: _Optional[bool] = ..., chain: _Optional[int] = ..., want_received_acks: _Optional[bool] = ..., blocks: _Optional[_Iterable[_Union[ColumnBlock, _Mapping]]] = ..., idempotency_key: _Optional[bytes] = ...) -> None: ...

class ColumnBlock(_message.Message):
    __slots__ = ("first_sequence", "ops", "key_lengths", "value_lengths", "keys", "values", "chain_before", "chain_after", "crc")
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    KEY_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    VALUE_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    CHAIN_BEFORE_FIELD_NUMBER: _ClassVar[int]
    CHAIN_AFTER_FIELD_NUMBER: _ClassVar[int]
    CRC_FIELD_NUMBER: _ClassVar[int]
    first_sequence: int
    ops: bytes
    key_lengths: bytes
    value_lengths: bytes
    keys: bytes
    values: bytes
    chain_before: int
    chain_after: int
    crc: int
    def __init__(self, first_sequence: _Optional[int] = ..., ops: _Optional[bytes] = ..., key_lengths: _Optional[bytes] = ..., value_lengths: _Optional[bytes] = ..., keys: _Optional[bytes] = ..., values: _Optional[bytes] = ..., chain_before: _Optional[int] = ..., chain_after: _Optional[int] = ..., crc: _Optional[int] = ...) -> None: ...

class WALEntry(_message.Message):
    __slots__ = ("sequence_number", "payload", "fragment_type", "checksum")
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    FRAGMENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    sequence_number: int
    payload: bytes
    fragment_type: FragmentType
    checksum: int
    def __init__(self, sequence_number: _Optional[int] = ..., payload: _Optional[bytes] = ..., fragment_type: _Optional[_Union[FragmentType, str]] = ..., checksum: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("acknowledged_up_to", "received_up_to")
    ACKNOWLEDGED_UP_TO_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_UP_TO_FIELD_NUMBER: _ClassVar[int]
    acknowledged_up_to: int
    received_up_to: int
    def __init__(self, acknowledged_up_to: _Optional[int] = ..., received_up_to: _Optional[int] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("missing_from_sequence",)
    MISSING_FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    missing_from_sequence: int
    def __init__(self, missing_from_sequence: _Optional[int] = ...) -> None: ...

class NackResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("replica_id", "snapshot_id", "next_index", "after_key", "max_chunk_bytes")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    AFTER_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    snapshot_id: str
    next_index: int
    after_key: bytes
    max_chunk_bytes: int
    def __init__(self, replica_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., next_index: _Optional[int] = ..., after_key: _Optional[bytes] = ..., max_chunk_bytes: _Optional[int] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("snapshot_id", "sequence", "history_id", "index", "data", "checksum", "count", "last", "total_keys", "total_bytes")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_KEYS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    sequence: int
    history_id: str
    index: int
    data: bytes
    checksum: int
    count: int
    last: bool
    total_keys: int
    total_bytes: int
    def __init__(self, snapshot_id: _Optional[str] = ..., sequence: _Optional[int] = ..., history_id: _Optional[str] = ..., index: _Optional[int] = ..., data: _Optional[bytes] = ..., checksum: _Optional[int] = ..., count: _Optional[int] = ..., last: _Optional[bool] = ..., total_keys: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...
