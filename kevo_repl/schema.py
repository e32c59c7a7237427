"""Declared schemas for configuration tables, checked with msgspec.

A schema is a dataclass whose fields carry their type, bounds and meaning:
``Annotated[int, Meta(ge=1, description="...")]``. `convert` builds one from a TOML table:
msgspec checks each value against its declared type (strictly: no bool for an int, no string
for a number), and errors name the table, the key and what it accepts. `describe` renders a
field's accepted values for errors and docs/configuration.md, so both come from one source.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

from kevo_repl.errors import ConfigError

T = TypeVar("T")

_TYPE_NAMES: dict[type[mi.Type], str] = {
    mi.IntType: "int",
    mi.FloatType: "float",
    mi.BoolType: "bool",
    mi.StrType: "str",
    mi.DictType: "table",
}


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One key of a schema, as docs and errors show it."""

    name: str
    annotation: Any
    type: mi.Type
    default: Any
    description: str


def fields(schema: type[Any]) -> dict[str, FieldInfo]:
    """The declared keys of `schema`, in declaration order."""
    info = mi.type_info(schema)
    if not isinstance(info, mi.DataclassType | mi.StructType):
        raise TypeError(f"{schema!r} is not a dataclass or msgspec.Struct schema")
    hints = typing.get_type_hints(schema, include_extras=True)
    out: dict[str, FieldInfo] = {}
    for f in info.fields:
        ftype, description = f.type, ""
        if isinstance(ftype, mi.Metadata):
            description = str((ftype.extra_json_schema or {}).get("description", ""))
            ftype = ftype.type
        default = f.default_factory() if f.default is msgspec.NODEFAULT else f.default
        out[f.name] = FieldInfo(f.name, hints[f.name], ftype, default, description)
    return out


def bounds(t: mi.Type) -> str:
    """The range of a number type in words ("positive", "from 1 to 64"), or ""."""
    if isinstance(t, mi.StrType):
        return "non-empty" if t.min_length == 1 and t.max_length is None else ""
    if not isinstance(t, mi.IntType | mi.FloatType):
        return ""
    low = t.ge if t.ge is not None else t.gt
    exclusive_low = t.ge is None and t.gt is not None
    high = t.le if t.le is not None else t.lt
    exclusive_high = t.le is None and t.lt is not None
    positive = (low == 0 and exclusive_low) or (
        isinstance(t, mi.IntType) and low == 1 and not exclusive_low
    )
    if high is None:
        if low is None:
            return ""
        if positive:
            return "positive"
        if low == 0:
            return "0 or positive"
        return f"{'more than' if exclusive_low else 'at least'} {low}"
    if low is None or exclusive_low or exclusive_high:
        lo = "" if low is None else f"{'>' if exclusive_low else '>='} {low}, "
        return f"{lo}{'<' if exclusive_high else '<='} {high}"
    return f"from {low} to {high}"


def describe(t: mi.Type) -> str:
    """What a key accepts, in words: "int, positive", "one of "a", "b"", "bool"."""
    if isinstance(t, mi.Metadata):
        return describe(t.type)
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(_show(v) for v in t.values)
    if isinstance(t, mi.UnionType):
        return " or ".join(describe(u) for u in t.types if not isinstance(u, mi.NoneType))
    name = _TYPE_NAMES.get(type(t), type(t).__name__)
    rng = bounds(t)
    return f"{name}, {rng}" if rng else name


def _show(value: Any) -> str:
    """A value as it is written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict) and not value:
        return "{}"
    return msgspec.json.encode(value).decode()


def show_default(value: Any) -> str:
    return _show(value)


def _base_ok(t: mi.Type, value: Any) -> bool:
    """Whether `value` has the right type for `t`, bounds aside."""
    if isinstance(t, mi.IntType):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(t, mi.FloatType):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(t, mi.StrType) and isinstance(value, str)


def convert_value(field: FieldInfo, value: Any, where: str) -> Any:
    """`value` checked against `field`'s declared type, or a ConfigError naming the key."""
    try:
        return msgspec.convert(value, field.annotation, strict=True)
    except msgspec.ValidationError:
        pass
    t, rng = field.type, bounds(field.type)
    if isinstance(t, mi.LiteralType | mi.UnionType) or (rng and _base_ok(t, value)):
        # the right type out of range, or not one of the choices
        wanted = rng or describe(t)
        raise ConfigError(f"{where} {field.name} must be {wanted}, not {_show_any(value)}")
    wanted = _TYPE_NAMES.get(type(t), describe(t)) + (f" ({rng})" if rng else "")
    raise ConfigError(
        f"{where} {field.name} must be {wanted}, not {type(value).__name__} ({_show_any(value)})"
    )


#: longest rendering of a bad value an error quotes
MAX_SHOWN = 80


def _show_any(value: Any) -> str:
    try:
        shown = _show(value)
    except (TypeError, msgspec.EncodeError):
        shown = repr(value)
    return shown if len(shown) <= MAX_SHOWN else shown[: MAX_SHOWN - 3] + "..."


def convert(schema: type[T], table: Any, where: str) -> T:
    """Build `schema` from `table`, a TOML table: every key must be declared and every value
    of its declared type and range. `where` names the table in errors ("[node]")."""
    if not isinstance(table, Mapping):
        raise ConfigError(
            f"{where} must be a table, not {type(table).__name__} ({_show_any(table)})"
        )
    declared = fields(schema)
    unknown = sorted(str(k) for k in table if k not in declared)
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {names} in {where}; "
            f"valid keys: {', '.join(declared)}"
        )
    values = {key: convert_value(declared[key], value, where) for key, value in table.items()}
    return schema(**values)


def check(section: Any, where: str) -> None:
    """Check an already built dataclass `section` against its schema (after code or flags
    changed it): the same errors as `convert`."""
    table = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    convert(type(section), table, where)
