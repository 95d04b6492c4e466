"""Typed result columns from a schema: a pydantic model, a dataclass, a TypedDict or a
JSON-schema dict describing an object.

The model is asked for JSON matching the schema (sent as `responseJsonSchema`); each
reply is checked as a `--schema` cell's is (`agentrt_jupyter.schema`: pydantic for the
three Python kinds, the JSON schema itself for a dict) and becomes one value per field.
Column dtypes follow the JSON types:

    string -> string, string with enum (or a Literal / Enum) -> category of those values,
    string with format date-time -> datetime64[us, UTC], integer -> Int64,
    number -> Float64, boolean -> boolean, anything else (arrays, objects) -> object

All are nullable: rows without a valid reply hold <NA>. A reply that is not valid JSON,
or does not match, makes its row an error (`SchemaMismatch`, the reply's start quoted).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..errors import InvalidConfig, ReplyInvalid
from ..schema import json_schema, reply_data

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
    """A reply that is not JSON matching the schema (a row's error, not the run's)."""


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
    """The fields of a schema (one column each) and the JSON schema sent to the model;
    replies are checked by `agentrt_jupyter.schema`, as `--schema` cells are."""

    fields: tuple[Field, ...]
    json_schema: dict[str, Any]
    spec: Any

    def parse(self, text: str) -> dict[str, Any]:
        """The reply's value per field (None where absent); SchemaMismatch if it is not one."""
        try:
            value = reply_data(text, self.spec)
        except ReplyInvalid as exc:
            raise SchemaMismatch(_mismatch(text, exc.problem)) from None
        if not isinstance(value, dict):
            raise SchemaMismatch(_mismatch(text, "not a JSON object"))
        return {f.name: value.get(f.name) for f in self.fields}

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
    if isinstance(spec, list | tuple) or typing.get_origin(spec) is list:
        raise InvalidConfig(
            "a map's schema describes one row (a JSON object), not a list of them",
            field="schema",
        )
    try:
        sent = json_schema(spec)
    except InvalidConfig as exc:
        raise InvalidConfig(str(exc).removeprefix(f"{exc.field}: "), field="schema") from None
    return ResultSchema(_fields(sent), sent, spec)


def yes_no_schema(name: str) -> dict[str, Any]:
    """The JSON schema of a yes/no reply: an object of one required boolean `name`."""
    return {"type": "object", "properties": {name: {"type": "boolean"}}, "required": [name]}


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


def _mismatch(text: str, why: str) -> str:
    shown = text if len(text) <= _QUOTED else text[: _QUOTED - 1] + "…"
    return f"the reply does not match the schema ({why}): {shown!r}"
