"""Frozen dataclasses that round-trip through plain JSON, with a one-line description per field.

`Record` is the base of every result type: `to_dict()` gives builtins (tuples as lists, NaN kept as a
float), `from_dict()` rebuilds the nested dataclasses from their type hints and refuses anything that
does not fit (a missing or unknown field, a string where a number belongs), so a hand-edited or
truncated cache entry never passes as a result. `describe(name)` returns a field's description, as
SAEBench's metric records carry one (`metric(...)` below sets it).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

R = TypeVar("R", bound="Record")
_DOC = "doc"


def metric(doc: str, **kwargs: Any) -> Any:
    """A dataclass field with a one-line description (shown in the report beside the value)."""
    return dataclasses.field(metadata={_DOC: doc}, **kwargs)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _fail(where: str, expected: Any, value: Any) -> TypeError:
    return TypeError(f"{where}: expected {expected}, got {type(value).__name__} {str(value)[:60]!r}")


def _decode(kind: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(kind), get_args(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _decode(option, value, where)
            except TypeError as err:
                errors.append(str(err))
        raise TypeError(errors[0] if errors else f"{where}: None is not allowed")
    if origin is Literal:
        if value not in args:
            raise _fail(where, f"one of {list(args)}", value)
        return value
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise _fail(where, kind.__name__, value)
        return _decode_dataclass(kind, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _fail(where, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise _fail(where, f"{len(args)} items", value)
        return tuple(_decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, "an object", value)
        return {k: _decode(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(where, "a number", value)
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, "an integer", value)
        return value
    if kind in (str, bool):
        if not isinstance(value, kind):
            raise _fail(where, kind.__name__, value)
        return value
    raise TypeError(f"{where}: no decoder for {kind!r}")


def _decode_dataclass(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TypeError(f"{where}: unknown field(s) {unknown} for {cls.__name__}")
    values = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise TypeError(f"{where}: missing field {name!r} of {cls.__name__}")
            continue
        values[name] = _decode(hints[name], data[name], f"{where}.{name}")
    return cls(**values)


class Record:
    """Mixin for frozen result dataclasses: JSON-ready dicts both ways, field descriptions."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return _encode(self)

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        """Rebuild from `to_dict()` output; TypeError names the first field that does not fit."""
        if not isinstance(data, dict):
            raise _fail(cls.__name__, "an object", data)
        return _decode_dataclass(cls, data, cls.__name__)

    @classmethod
    def describe(cls, name: str) -> str:
        """The field's one-line description ('' when it has none)."""
        return str(cls.__dataclass_fields__[name].metadata.get(_DOC, ""))

