"""The `[applier.options]` of the example memory applier, declared as a schema the host
checks: the way a plugin states what options it takes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from msgspec import Meta

from kevo_repl.plugin.options import parse_applier_options

#: the same limit as the shipped appliers, so a memory node can replicate to or from them
DEFAULT_MAX_KEY_SIZE = 511


@dataclass(frozen=True)
class MemoryOptions:
    """`[applier.options]` when `[applier] name = "memory"`."""

    max_key_size: Annotated[
        int, Meta(ge=1, description="longest key the store accepts, in bytes")
    ] = DEFAULT_MAX_KEY_SIZE


def parse_options(options: Mapping[str, Any]) -> MemoryOptions:
    """MemoryOptions from the table; ConfigError for an unknown key or a wrong value."""
    return parse_applier_options(MemoryOptions, options, "memory")
