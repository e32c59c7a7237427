"""The `[applier.options]` of the LevelDB applier, declared as a schema the host checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from msgspec import Meta

from kevo_repl.plugin.options import parse_applier_options

#: 32 MiB memtable (LevelDB's own default is 4 MiB): fewer, larger level-0 files keep
#: compaction from throttling a replica that catches up a long backlog.
DEFAULT_WRITE_BUFFER_SIZE = 32 * 1024**2
#: LevelDB's defaults for the rest.
DEFAULT_LRU_CACHE_SIZE = 8 * 1024**2
DEFAULT_MAX_OPEN_FILES = 1000
DEFAULT_BLOCK_SIZE = 4096
#: bits per key of the bloom filter that spares point reads of absent keys a disk seek
DEFAULT_BLOOM_FILTER_BITS = 10
COMPRESSIONS = ("snappy", "none")


@dataclass(frozen=True)
class LevelDBOptions:
    """`[applier.options]` when `[applier] name = "leveldb"`."""

    write_buffer_size: Annotated[
        int, Meta(ge=1, description="bytes of the memtable before it is written to a file")
    ] = DEFAULT_WRITE_BUFFER_SIZE
    lru_cache_size: Annotated[
        int, Meta(ge=1, description="bytes of the cache of uncompressed blocks")
    ] = DEFAULT_LRU_CACHE_SIZE
    max_open_files: Annotated[
        int, Meta(ge=1, description="most table files LevelDB keeps open")
    ] = DEFAULT_MAX_OPEN_FILES
    block_size: Annotated[
        int, Meta(ge=1, description="bytes of user data per block")
    ] = DEFAULT_BLOCK_SIZE
    bloom_filter_bits: Annotated[
        int, Meta(ge=0, le=64, description="bloom filter bits per key; 0 = no filter")
    ] = DEFAULT_BLOOM_FILTER_BITS
    # None: what Python callers may pass for "none" (TOML has no null)
    compression: Annotated[
        Literal["snappy", "none"] | None, Meta(description="block compression")
    ] = "snappy"
    paranoid_checks: Annotated[
        bool, Meta(description="check every read aggressively and stop on any corruption")
    ] = False

    def plyvel_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``plyvel.DB``."""
        return {
            "write_buffer_size": self.write_buffer_size,
            "lru_cache_size": self.lru_cache_size,
            "max_open_files": self.max_open_files,
            "block_size": self.block_size,
            "bloom_filter_bits": self.bloom_filter_bits,
            "compression": None if self.compression in (None, "none") else self.compression,
            "paranoid_checks": self.paranoid_checks,
        }


def parse_options(options: Mapping[str, Any]) -> LevelDBOptions:
    """LevelDBOptions from the table; ConfigError for an unknown key or a wrong value."""
    return parse_applier_options(LevelDBOptions, options, "leveldb")
