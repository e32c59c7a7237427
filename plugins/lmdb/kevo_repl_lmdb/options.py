"""The `[applier.options]` of the LMDB applier, declared as a schema the host checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from msgspec import Meta

from kevo_repl.plugin.options import parse_applier_options

#: 64 GiB. The map is only reserved address space and the file grows sparsely, so a large
#: default costs nothing on 64-bit Linux and saves users from MapFullError.
DEFAULT_MAP_SIZE = 64 * 1024**3
#: LMDB's own default reader-slot count.
DEFAULT_MAX_READERS = 126


@dataclass(frozen=True)
class LMDBOptions:
    """`[applier.options]` when `[applier] name = "lmdb"`."""

    map_size: Annotated[
        int,
        Meta(ge=1, description="bytes of address space the store may grow into (reserved, "
             "not allocated: the file grows sparsely)"),
    ] = DEFAULT_MAP_SIZE
    max_readers: Annotated[
        int, Meta(ge=1, description="reader slots: most concurrent read transactions")
    ] = DEFAULT_MAX_READERS


def parse_options(options: Mapping[str, Any]) -> LMDBOptions:
    """LMDBOptions from the table; ConfigError for an unknown key or a wrong value."""
    return parse_applier_options(LMDBOptions, options, "lmdb")
