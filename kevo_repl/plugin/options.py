"""Applier options declared as a schema: how a plugin states what `[applier.options]` takes.

A plugin declares its options as a frozen dataclass whose fields carry type, range and meaning
(``Annotated[int, Meta(ge=1, description=...)]``, as in kevo_repl.config) and lets the host
check the table against it with `parse_applier_options`; it writes no checks of its own. The
errors name the applier, the key and what it accepts, and docs/configuration.md documents the
built-in appliers' options from the same declarations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from kevo_repl import schema

OptionsT = TypeVar("OptionsT")


def where(applier: str) -> str:
    """How errors name an applier's options table."""
    return f"[applier.options] ({applier} applier)"


def parse_applier_options(
    options_schema: type[OptionsT], options: Mapping[str, Any], applier: str
) -> OptionsT:
    """`options` checked against `options_schema`; ConfigError naming the key otherwise."""
    return schema.convert(options_schema, options, where(applier))
