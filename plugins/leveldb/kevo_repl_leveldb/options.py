"""The `[applier.options]` table of the LevelDB applier, checked strictly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kevo_repl.errors import ConfigError
from kevo_repl.plugin.engine import reject_unknown_options

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
    write_buffer_size: int = DEFAULT_WRITE_BUFFER_SIZE
    lru_cache_size: int = DEFAULT_LRU_CACHE_SIZE
    max_open_files: int = DEFAULT_MAX_OPEN_FILES
    block_size: int = DEFAULT_BLOCK_SIZE
    bloom_filter_bits: int = DEFAULT_BLOOM_FILTER_BITS
    compression: str = "snappy"
    paranoid_checks: bool = False

    def plyvel_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``plyvel.DB``."""
        return {
            "write_buffer_size": self.write_buffer_size,
            "lru_cache_size": self.lru_cache_size,
            "max_open_files": self.max_open_files,
            "block_size": self.block_size,
            "bloom_filter_bits": self.bloom_filter_bits,
            "compression": None if self.compression == "none" else self.compression,
            "paranoid_checks": self.paranoid_checks,
        }


_POSITIVE_INTS = ("write_buffer_size", "lru_cache_size", "max_open_files", "block_size")
_VALID = (*_POSITIVE_INTS, "bloom_filter_bits", "compression", "paranoid_checks")


def _is_int(value: object) -> bool:
    # bool is an int subclass, but `block_size = true` is certainly a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


def parse_options(options: Mapping[str, Any]) -> LevelDBOptions:
    """Build LevelDBOptions, raising ConfigError for unknown names or wrong values."""
    reject_unknown_options(options, _VALID, "leveldb")
    valid = ", ".join(_VALID)

    def bad(name: str, wanted: str) -> ConfigError:
        value = options[name]
        return ConfigError(
            f"leveldb applier option {name!r} must be {wanted}, "
            f"not {value!r} ({type(value).__name__}); valid options: {valid}"
        )

    values: dict[str, Any] = {}
    for name in _POSITIVE_INTS:
        if name in options:
            if not _is_int(options[name]) or options[name] <= 0:
                raise bad(name, "a positive integer")
            values[name] = options[name]
    if "bloom_filter_bits" in options:
        bits = options["bloom_filter_bits"]
        if not _is_int(bits) or not 0 <= bits <= 64:
            raise bad("bloom_filter_bits", "an integer from 0 (no filter) to 64")
        values["bloom_filter_bits"] = bits
    if "compression" in options:
        compression = options["compression"]
        if compression is None:  # from Python callers; TOML has no null
            compression = "none"
        if compression not in COMPRESSIONS:
            raise bad("compression", " or ".join(repr(c) for c in COMPRESSIONS))
        values["compression"] = compression
    if "paranoid_checks" in options:
        if not isinstance(options["paranoid_checks"], bool):
            raise bad("paranoid_checks", "true or false")
        values["paranoid_checks"] = options["paranoid_checks"]
    return LevelDBOptions(**values)
