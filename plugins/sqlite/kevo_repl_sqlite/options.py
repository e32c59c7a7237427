"""`[applier.options]` of the SQLite engine: a msgspec-checked schema."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from msgspec import Meta

from kevo_repl.plugin.options import parse_applier_options

_KIB = 1024


@dataclass(frozen=True)
class SQLiteOptions:
    """`[applier.options]` when `[applier] name = "sqlite"`."""

    cache_size: Annotated[
        int, Meta(ge=_KIB, description="bytes of page cache of the writing connection")
    ] = 64 * _KIB * _KIB
    wal_autocheckpoint: Annotated[
        int, Meta(ge=1, description="WAL pages (of 4 KiB) after which a commit copies the WAL "
                  "into the database file: the WAL's size while no snapshot is open")
    ] = 1000
    max_readers: Annotated[
        int, Meta(ge=1, le=1024, description="read connections (concurrent gets and "
                  "snapshots); a read waits while all are busy")
    ] = 16
    reader_wait_s: Annotated[
        float, Meta(gt=0, description="seconds a read waits for a free read connection "
                    "before it fails")
    ] = 30.0

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> SQLiteOptions:
        """From the table; ConfigError for an unknown key or a wrong value."""
        return parse_applier_options(cls, options, "sqlite")
