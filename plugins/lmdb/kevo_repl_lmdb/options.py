"""The `[applier.options]` table of the LMDB applier, checked strictly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kevo_repl.errors import ConfigError
from kevo_repl.plugin.engine import reject_unknown_options

#: 64 GiB. The map is only reserved address space and the file grows sparsely, so a large
#: default costs nothing on 64-bit Linux and saves users from MapFullError.
DEFAULT_MAP_SIZE = 64 * 1024**3
#: LMDB's own default reader-slot count.
DEFAULT_MAX_READERS = 126


@dataclass(frozen=True)
class LMDBOptions:
    map_size: int = DEFAULT_MAP_SIZE
    max_readers: int = DEFAULT_MAX_READERS


_VALID = ("map_size", "max_readers")
_DESCRIPTION = {
    "map_size": "a positive integer (bytes)",
    "max_readers": "a positive integer",
}


def parse_options(options: Mapping[str, Any]) -> LMDBOptions:
    """Build LMDBOptions, raising ConfigError for unknown names or wrong types."""
    reject_unknown_options(options, _VALID, "lmdb")
    valid = ", ".join(_VALID)
    values: dict[str, int] = {}
    for name in _VALID:
        if name not in options:
            continue
        value = options[name]
        # bool is an int subclass, but `map_size = true` is certainly a mistake.
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(
                f"lmdb applier option {name!r} must be {_DESCRIPTION[name]}, "
                f"not {value!r} ({type(value).__name__}); valid options: {valid}"
            )
        values[name] = value
    return LMDBOptions(**values)
