"""Typed result columns from a schema: a pydantic model, a dataclass, a TypedDict or a
JSON-schema dict describing an object.

The model is asked for JSON matching the schema (sent as `responseJsonSchema`); each
reply is validated (pydantic validates the three Python kinds; a dict schema is checked
field by field) and becomes one value per field. Column dtypes follow the JSON types:

    string -> string, string with enum (or a Literal / Enum) -> category of those values,
    string with format date-time -> datetime64[us, UTC], integer -> Int64,
    number -> Float64, boolean -> boolean, anything else (arrays, objects) -> object

All are nullable: rows without a valid reply hold <NA>. A reply that is not valid JSON,
or does not match, makes its row an error (`SchemaMismatch`, the reply's start quoted).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..errors import InvalidConfig

FieldKind = Literal["string", "category", "datetime", "integer", "number", "boolean", "object"]
RESERVED_COLUMNS = ("reply", "status", "error", "tokens_in", "tokens_out", "latency", "attempts")
"""Result columns a schema field may not be named after."""
TIMESTAMP = pd.DatetimeTZDtype("us", "UTC")
_DTYPES: dict[str, Any] = {
    "string": "string",
    "datetime": TIMESTAMP,
    "integer": "Int64",
    "number": "Float64",
    "boolean": "boolean",
    "object": object,
}
_QUOTED = 200


class SchemaMismatch(ValueError):
    """A reply that is not JSON matching the schema."""


@dataclass(frozen=True)
class Field:
    """One result column: its name, its JSON kind, and the categories of an enum."""

    name: str
    kind: FieldKind
    categories: tuple[str, ...] = ()
    required: bool = False

    @property
    def dtype(self) -> Any:
        if self.kind == "category":
            return pd.CategoricalDtype(list(self.categories))
        return _DTYPES[self.kind]


@dataclass(frozen=True)
class ResultSchema:
    """The fields of a schema, the JSON schema sent to the model, and the reply parser."""

    fields: tuple[Field, ...]
    json_schema: dict[str, Any]
    _validate: Callable[[str], dict[str, Any]]

    def parse(self, text: str) -> dict[str, Any]:
        """The reply's value per field (None where absent); SchemaMismatch if it is not one."""
        try:
            values = self._validate(text)
        except SchemaMismatch:
            raise
        except ValueError as exc:  # json and pydantic errors are ValueErrors
            raise SchemaMismatch(_mismatch(text, _explain(exc))) from None
        return {f.name: values.get(f.name) for f in self.fields}

    def column(self, field: Field, values: Sequence[Any]) -> Any:
        """`values` (None for missing) as the array of `field`'s column."""
        if field.kind == "datetime":
            parsed = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601")
            return parsed.dt.as_unit("us").array
        if field.kind == "category":
            return pd.Categorical(values, dtype=field.dtype)
        if field.kind == "object":
            column = np.empty(len(values), dtype=object)
            column[:] = list(values)
            return column
        return pd.array(list(values), dtype=field.dtype)


def result_schema(spec: object) -> ResultSchema:
    """The `ResultSchema` of a pydantic model, dataclass, TypedDict or JSON-schema dict."""
    if isinstance(spec, dict):
        return _from_json_schema(spec)
    if isinstance(spec, type) and (
        dataclasses.is_dataclass(spec) or _is_typeddict(spec) or _is_pydantic(spec)
    ):
        return _from_type(spec)
    raise InvalidConfig(
        f"expected a pydantic model, a dataclass, a TypedDict or a JSON-schema dict, got "
        f"{spec!r:.80}",
        field="schema",
    )


def _is_typeddict(spec: type) -> bool:
    """typing's and typing_extensions' TypedDicts (pydantic wants the latter before 3.12)."""
    try:
        import typing_extensions
    except ImportError:
        return typing.is_typeddict(spec)
    return typing.is_typeddict(spec) or typing_extensions.is_typeddict(spec)


def _is_pydantic(spec: type) -> bool:
    try:
        from pydantic import BaseModel
    except ImportError:
        return False
    return issubclass(spec, BaseModel)


def _from_type(spec: type) -> ResultSchema:
    from pydantic import TypeAdapter

    try:
        adapter: Any = TypeAdapter(spec)
        json_schema = adapter.json_schema()
    except Exception as exc:  # pydantic's errors for types it cannot describe
        raise InvalidConfig(
            f"{spec.__name__} cannot be described as JSON ({exc.__class__.__name__}: "
            f"{_first_line(str(exc))})",
            field="schema",
        ) from None

    def validate(text: str) -> dict[str, Any]:
        value = adapter.dump_python(adapter.validate_json(text), mode="json")
        if not isinstance(value, dict):
            raise SchemaMismatch(_mismatch(text, "not a JSON object"))
        return value

    return ResultSchema(_fields(json_schema), json_schema, validate)


def _from_json_schema(spec: dict[str, Any]) -> ResultSchema:
    try:
        json.dumps(spec, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidConfig(f"the schema dict must be plain JSON ({exc})", field="schema") from None
    fields = _fields(spec)
    by_name = {f.name: f for f in fields}

    def validate(text: str) -> dict[str, Any]:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise SchemaMismatch(_mismatch(text, "not a JSON object"))
        for name, field in by_name.items():
            if value.get(name) is None:
                if field.required:
                    raise SchemaMismatch(_mismatch(text, f"missing field {name!r}"))
                continue
            if not _fits(field, value[name]):
                raise SchemaMismatch(
                    _mismatch(
                        text, f"field {name!r} is not {_describe(field)}: {value[name]!r:.60}"
                    )
                )
        return value

    return ResultSchema(fields, spec, validate)


def _fields(json_schema: dict[str, Any]) -> tuple[Field, ...]:
    defs = {**json_schema.get("$defs", {}), **json_schema.get("definitions", {})}
    root = _resolve(json_schema, defs)
    properties = root.get("properties")
    if root.get("type", "object") != "object" or not isinstance(properties, dict) or not properties:
        raise InvalidConfig(
            "the schema must describe a JSON object with properties (one column each)",
            field="schema",
        )
    required = set(root.get("required") or ())
    fields = []
    for name, prop in properties.items():
        if name in RESERVED_COLUMNS:
            raise InvalidConfig(
                f"field {name!r} clashes with a result column ({', '.join(RESERVED_COLUMNS)}): "
                "rename it",
                field="schema",
            )
        kind, categories = _kind(prop, defs)
        fields.append(Field(str(name), kind, categories, name in required))
    return tuple(fields)


def _resolve(prop: Any, defs: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while isinstance(prop, dict) and isinstance(prop.get("$ref"), str) and seen < 32:
        prop = defs.get(prop["$ref"].rsplit("/", 1)[-1], {})
        seen += 1
    return prop if isinstance(prop, dict) else {}


def _kind(raw: Any, defs: dict[str, Any]) -> tuple[FieldKind, tuple[str, ...]]:
    prop = _resolve(raw, defs)
    options = prop.get("anyOf") or prop.get("oneOf")
    if isinstance(options, list):
        real = [o for o in (_resolve(o, defs) for o in options) if o.get("type") != "null"]
        return _kind(real[0], defs) if len(real) == 1 else ("object", ())
    enum = prop.get("enum")
    if "const" in prop:
        enum = [prop["const"]]
    if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
        return "category", tuple(dict.fromkeys(enum))
    kind = prop.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind == "string":
        return ("datetime" if prop.get("format") == "date-time" else "string"), ()
    if kind in ("integer", "number", "boolean"):
        return kind, ()
    return "object", ()


def _fits(field: Field, value: Any) -> bool:
    if field.kind == "integer":
        return (isinstance(value, int) or (isinstance(value, float) and value.is_integer())) and (
            not isinstance(value, bool)
        )
    if field.kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if field.kind == "boolean":
        return isinstance(value, bool)
    if field.kind == "category":
        return value in field.categories
    if field.kind == "datetime":
        try:
            datetime.fromisoformat(value)
        except (TypeError, ValueError):
            return False
        return True
    if field.kind == "string":
        return isinstance(value, str)
    return True


def _describe(field: Field) -> str:
    if field.kind == "category":
        return f"one of {list(field.categories)}"
    return {"datetime": "an ISO date-time", "integer": "an integer"}.get(
        field.kind, f"a {field.kind}"
    )


def _mismatch(text: str, why: str) -> str:
    shown = text if len(text) <= _QUOTED else text[: _QUOTED - 1] + "…"
    return f"the reply does not match the schema ({why}): {shown!r}"


def _explain(exc: ValueError) -> str:
    """The first problem pydantic found (`field: message`), else the error's first line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            first = errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "reply"
            return f"{where}: {first.get('msg', '')}"
    return _first_line(str(exc))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
