"""Structured output: a schema for the request, the reply parsed and checked against it.

A schema is a pydantic model, a dataclass, a TypedDict, `list[...]` of one of those, or a
JSON-schema dict. `json_schema(S)` is the dict to request the reply with
(`AgentConfig(response_schema=json_schema(S))`): a dict works for every kind, where the
SDK's own conversion of a type refuses `typing.TypedDict` on Python 3.11 and
`AgentConfig` refuses `list[...]`. `parse_reply(text, S)` returns what the reply holds
(model or dataclass instances, dicts, lists of them) or raises `ReplyInvalid`, which
keeps the raw text and says what failed. `to_frame(rows)` makes a DataFrame of them.

Types are checked by pydantic. A JSON-schema dict is checked here, for the keywords
structured output uses: type (and `nullable`), properties, required,
additionalProperties, items, enum, const, anyOf/oneOf/allOf (oneOf as anyOf), $ref to
$defs (each must name something: `check_refs`), min/max length, items and values, and
pattern.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import re
import sys
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import InvalidConfig, ReplyInvalid

if TYPE_CHECKING:
    import pandas
    import pydantic

JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
SCHEMA_KEYWORDS = frozenset(
    {"type", "properties", "items", "anyOf", "oneOf", "allOf", "enum", "const", "$ref"}
)
"""A dict with none of these says nothing about the reply: it is not taken for a schema."""
MAX_DEPTH = 64
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
"""Keywords whose values are JSON data, not schemas: a `$ref` inside them is just data."""
_NAMED_SCHEMAS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
"""Keywords whose values map names (any string, `enum` too) to schemas."""
EXCERPT_CHARS = 300
_KINDS = "a pydantic model, a dataclass, a TypedDict, list[...] of one, or a JSON-schema dict"
_REQUIRED_MARKS = (typing.Required, typing.NotRequired)
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n(.*?)\n?```$", re.DOTALL)


def json_schema(schema: Any) -> dict[str, Any]:
    """The JSON schema to request a reply with; `InvalidConfig` if `schema` is none of the kinds."""
    if isinstance(schema, dict):
        check_schema_dict(schema)
        return schema
    adapter = _adapter(schema)
    try:
        return adapter.json_schema()
    except Exception as exc:  # pydantic's schema errors have no common base
        raise InvalidConfig(
            f"cannot make a JSON schema of {_name(schema)}: {exc}", field="response_schema"
        ) from None


def parse_reply(text: str, schema: Any) -> Any:
    """The reply as `schema` says: instances for types, plain JSON for a dict schema.

    A ```json fence around the reply is accepted. A reply that is not JSON, or not what
    the schema asks for, raises `ReplyInvalid` with the raw text and the problem.
    """
    if not isinstance(text, str):
        raise InvalidConfig(f"must be the reply's text, got {type(text).__name__}", field="text")
    adapter = None if isinstance(schema, dict) else _adapter(schema)
    if adapter is None:
        check_schema_dict(schema)
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if not body:
        raise _invalid(text, schema, "the reply is empty")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise _invalid(
            text, schema, f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if adapter is None:
        problem = _violation(data, schema, schema, "$", 0)
        if problem is not None:
            raise _invalid(text, schema, problem)
        return data
    import pydantic

    try:
        return adapter.validate_python(data)
    except pydantic.ValidationError as exc:
        raise _invalid(text, schema, _pydantic_problem(exc)) from None


def reply_data(text: str, schema: Any) -> Any:
    """The reply checked as `parse_reply` does, as plain JSON data (dicts, lists, strings,
    numbers): what a column per field is made from (`runtime.map`)."""
    value = parse_reply(text, schema)
    return value if isinstance(schema, dict) else _adapter(schema).dump_python(value, mode="json")


def to_frame(value: Any, schema: Any = None) -> pandas.DataFrame:
    """A DataFrame of parsed rows (models, dataclasses, dicts; one value is one row).

    Columns keep the fields' order; each column gets a nullable dtype when all its values
    are of one kind (Int64, Float64, boolean, string, datetime64), else stays object.
    `schema` gives the columns of an empty list.
    """
    import pandas as pd

    items = list(value) if isinstance(value, list | tuple) else [value]
    rows = [_row(item) for item in items]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    if not rows and schema is not None:
        columns = dict.fromkeys(_field_names(schema))
    data = {column: [row.get(column) for row in rows] for column in columns}
    frame = pd.DataFrame(data, columns=list(columns), dtype=object)
    for column in frame.columns:
        frame[column] = _typed(frame[column])
    return frame


def check_schema_dict(schema: Any, path: str = "$", depth: int = 0) -> None:
    """`InvalidConfig` unless `schema` is a plausible JSON schema (plain JSON, known shapes)."""
    if depth == 0:
        try:
            json.dumps(schema, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidConfig(
                f"the schema must be plain JSON ({exc})", field="response_schema"
            ) from None
    if depth > MAX_DEPTH:
        raise InvalidConfig(f"{path}: the schema nests too deeply", field="response_schema")
    if not isinstance(schema, dict):
        raise InvalidConfig(
            f"{path}: a schema is a dict, got {_shown(schema)}", field="response_schema"
        )
    if depth == 0 and not SCHEMA_KEYWORDS & schema.keys():
        raise InvalidConfig(
            f"{_shown(schema)} does not look like a JSON schema: it has none of "
            f"{', '.join(sorted(SCHEMA_KEYWORDS))}",
            field="response_schema",
        )
    kind = schema.get("type")
    for name in (kind if isinstance(kind, list) else [kind]) if kind is not None else []:
        if name not in JSON_TYPES:
            lower = f" (JSON Schema writes {name.lower()!r})" if isinstance(name, str) else ""
            raise InvalidConfig(
                f"{path}.type: {name!r} is not one of {sorted(JSON_TYPES)}{lower}",
                field="response_schema",
            )

    def sub(key: str, value: Any) -> None:
        check_schema_dict(value, f"{path}.{key}", depth + 1)

    properties = schema.get("properties")
    if properties is not None:
        if not isinstance(properties, dict):
            raise InvalidConfig(f"{path}.properties must be a dict", field="response_schema")
        for name, value in properties.items():
            sub(f"properties.{name}", value)
    required = schema.get("required")
    if required is not None:
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise InvalidConfig(f"{path}.required must be a list of names", field="response_schema")
        missing = [r for r in required if isinstance(properties, dict) and r not in properties]
        if missing:
            raise InvalidConfig(
                f"{path}.required names {missing}, which are not in properties",
                field="response_schema",
            )
    if isinstance(schema.get("items"), dict):
        sub("items", schema["items"])
    elif "items" in schema and not isinstance(schema["items"], bool):
        raise InvalidConfig(f"{path}.items must be a schema (a dict)", field="response_schema")
    if isinstance(schema.get("additionalProperties"), dict):
        sub("additionalProperties", schema["additionalProperties"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = schema[key]
            if not isinstance(options, list) or not options:
                raise InvalidConfig(
                    f"{path}.{key} must be a non-empty list", field="response_schema"
                )
            for index, option in enumerate(options):
                sub(f"{key}[{index}]", option)
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            for name, value in schema[key].items():
                sub(f"{key}.{name}", value)
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise InvalidConfig(f"{path}.enum must be a non-empty list", field="response_schema")
    ref = schema.get("$ref")
    if ref is not None and (not isinstance(ref, str) or not ref.startswith("#/")):
        raise InvalidConfig(
            f"{path}.$ref: only local references ('#/$defs/Name') are supported",
            field="response_schema",
        )
    if depth == 0:
        check_refs(schema)


def check_refs(schema: dict[str, Any]) -> None:
    """`InvalidConfig` naming the first JSON-pointer `$ref` ('#/...') that points at nothing.

    Run before the call, so a dangling reference is the caller's mistake, not a failed
    reply. `schema` is plain JSON (no cycles); `enum`, `const`, `default` and `examples`
    hold data, not schemas, and are not searched. Other references are left to the service.
    """
    stack: list[tuple[Any, str, bool]] = [(schema, "$", False)]
    while stack:
        node, path, names = stack.pop()
        if isinstance(node, list):
            items = [(item, f"{path}[{index}]", False) for index, item in enumerate(node)]
            stack.extend(reversed(items))
            continue
        if not isinstance(node, dict):
            continue
        if names:  # `properties`, `$defs`: any key is a name, each value a schema
            stack.extend(reversed([(v, f"{path}.{k}", False) for k, v in node.items()]))
            continue
        ref = node.get("$ref")
        if isinstance(ref, str) and ref[:2] in ("#", "#/") and _resolve(ref, schema) is None:
            defined = [
                f"#/{key}/{name}"
                for key in ("$defs", "definitions")
                if isinstance(schema.get(key), dict)
                for name in schema[key]
            ]
            known = f"; defined: {', '.join(defined[:10])}" if defined else "; it has no $defs"
            raise InvalidConfig(
                f"{path}.$ref: {ref!r} names nothing in the schema{known}",
                field="response_schema",
            )
        children = [
            (value, f"{path}.{key}", key in _NAMED_SCHEMAS)
            for key, value in node.items()
            if key not in _DATA_KEYWORDS
        ]
        stack.extend(reversed(children))


def _invalid(text: str, schema: Any, problem: str) -> ReplyInvalid:
    excerpt = text if len(text) <= EXCERPT_CHARS else f"{text[: EXCERPT_CHARS - 1]}…"
    return ReplyInvalid(
        f"the reply does not match {_name(schema)}: {problem}. The reply was: {excerpt!r}",
        raw_text=text,
        problem=problem,
    )


def _name(schema: Any) -> str:
    if isinstance(schema, dict):
        title = schema.get("title")
        return f"the JSON schema {title!r}" if isinstance(title, str) else "the JSON schema"
    return f"the schema {getattr(schema, '__name__', None) or _shown(schema)}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _pydantic_problem(exc: pydantic.ValidationError) -> str:
    errors = exc.errors(include_url=False)
    shown = [
        f"{'.'.join(str(part) for part in error['loc']) or '(the whole reply)'}: {error['msg']}"
        for error in errors[:5]
    ]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(shown) + more


def _adapter(schema: Any) -> pydantic.TypeAdapter[Any]:
    """The pydantic adapter of a schema type, or `InvalidConfig` naming what was given."""
    if not _is_schema_type(schema):
        raise InvalidConfig(f"must be {_KINDS}; got {_shown(schema)}", field="response_schema")
    return _cached_adapter(schema)


@functools.lru_cache(maxsize=64)
def _cached_adapter(schema: Any) -> pydantic.TypeAdapter[Any]:
    import pydantic

    try:
        return pydantic.TypeAdapter(_modern(schema))
    except Exception as exc:  # PydanticSchemaGenerationError, PydanticUserError, NameError...
        raise InvalidConfig(
            f"pydantic cannot check {_name(schema)}: {exc}", field="response_schema"
        ) from None


def _is_schema_type(schema: Any) -> bool:
    if typing.get_origin(schema) is list:
        args = typing.get_args(schema)
        return len(args) == 1 and _is_schema_type(args[0])
    if not isinstance(schema, type):
        return False
    if dataclasses.is_dataclass(schema) or _is_typeddict(schema):
        return True
    model = sys.modules.get("pydantic")
    return model is not None and issubclass(schema, model.BaseModel)


def _is_typeddict(schema: Any) -> bool:
    import typing_extensions

    return typing.is_typeddict(schema) or typing_extensions.is_typeddict(schema)


def _modern(hint: Any) -> Any:
    """`hint` with each `typing.TypedDict` in it rebuilt as pydantic needs it before 3.12."""
    if sys.version_info >= (3, 12):
        return hint
    import typing_extensions as te

    if isinstance(hint, type) and _is_typeddict(hint) and type(hint).__module__ == "typing":
        fields: dict[str, Any] = {}
        for key, value in typing.get_type_hints(hint, include_extras=True).items():
            # With postponed annotations, 3.11 cannot see NotRequired[...] when it builds
            # __required_keys__: the evaluated hint decides, then the class's own sets.
            required = key in hint.__required_keys__  # type: ignore[attr-defined]
            while (origin := typing.get_origin(value)) in _REQUIRED_MARKS:
                required = origin is typing.Required
                value = typing.get_args(value)[0]
            value = _modern(value)
            fields[key] = te.Required[value] if required else te.NotRequired[value]
        rebuilt: Any = te.TypedDict(hint.__name__, fields)  # type: ignore[misc]
        rebuilt.__module__ = hint.__module__
        rebuilt.__doc__ = hint.__doc__
        return rebuilt
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is None or origin is typing.Literal or not args:
        return hint
    new_args = tuple(_modern(arg) for arg in args)
    if new_args == args:
        return hint
    if origin in (typing.Union, types.UnionType):
        return typing.Union[new_args]  # noqa: UP007 - built from a tuple
    if origin is typing.Annotated:
        return typing.Annotated[(new_args[0], *hint.__metadata__)]
    return origin[new_args]


def _violation(value: Any, schema: Any, root: dict[str, Any], path: str, depth: int) -> str | None:
    """The first way `value` breaks `schema`, or None."""
    if schema is False:
        return f"{path} is not allowed by the schema"
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):  # check_refs found each one before the call
        problem = _violation(value, _resolve(ref, root), root, path, depth + 1)
        if problem is not None:
            return problem
    if value is None and schema.get("nullable") is True:
        return None
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            found = [_violation(value, o, root, path, depth + 1) for o in options]
            if all(found):
                return f"{path} matches none of the {key} choices (first: {found[0]})"
    for option in schema.get("allOf") or []:
        problem = _violation(value, option, root, path, depth + 1)
        if problem is not None:
            return problem
    problem = _type_violation(value, schema.get("type"), path)
    if problem is not None:
        return problem
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        return f"{path} is {_shown(value)}, not one of {schema['enum']}"
    if "const" in schema and not _same(value, schema["const"]):
        return f"{path} must be {schema['const']!r}, got {_shown(value)}"
    if isinstance(value, dict):
        return _object_violation(value, schema, root, path, depth)
    if isinstance(value, list):
        return _array_violation(value, schema, root, path, depth)
    if isinstance(value, str):
        return _string_violation(value, schema, path)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number_violation(value, schema, path)
    return None


def _type_violation(value: Any, kind: Any, path: str) -> str | None:
    if kind is None:
        return None
    kinds = kind if isinstance(kind, list) else [kind]
    if any(_is_json_type(value, k) for k in kinds):
        return None
    expected = " or ".join(str(k) for k in kinds)
    return f"{path} should be {expected}, got {_json_type(value)} {_shown(value)}"


def _object_violation(
    value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any], path: str, depth: int
) -> str | None:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    for name in schema.get("required") or []:
        if name not in value:
            return f"{path}.{name} is required but missing"
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            problem = _violation(item, properties[key], root, f"{path}.{key}", depth + 1)
        elif extra is False:
            problem = f"{path}.{key} is not a field of the schema"
        else:
            problem = _violation(item, extra, root, f"{path}.{key}", depth + 1)
        if problem is not None:
            return problem
    return None


def _array_violation(
    value: list[Any], schema: dict[str, Any], root: dict[str, Any], path: str, depth: int
) -> str | None:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if isinstance(low, int) and len(value) < low:
        return f"{path} has {len(value)} items, fewer than minItems={low}"
    if isinstance(high, int) and len(value) > high:
        return f"{path} has {len(value)} items, more than maxItems={high}"
    items = schema.get("items")
    for index, item in enumerate(value):
        problem = _violation(item, items, root, f"{path}[{index}]", depth + 1)
        if problem is not None:
            return problem
    return None


def _string_violation(value: str, schema: dict[str, Any], path: str) -> str | None:
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(value) < low:
        return f"{path} is shorter than minLength={low}"
    if isinstance(high, int) and len(value) > high:
        return f"{path} is longer than maxLength={high}"
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            matched = re.search(pattern, value) is not None
        except re.error:
            return None  # a pattern Python cannot read is not the reply's fault
        if not matched:
            return f"{path} {_shown(value)} does not match the pattern {pattern!r}"
    return None


def _number_violation(value: float, schema: dict[str, Any], path: str) -> str | None:
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = schema.get(key)
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            continue
        broken = {
            "minimum": value < bound,
            "maximum": value > bound,
            "exclusiveMinimum": value <= bound,
            "exclusiveMaximum": value >= bound,
        }[key]
        if broken:
            return f"{path} is {value!r}, outside {key}={bound}"
    return None


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any] | bool | None:
    """The schema a local JSON pointer ('#', '#/$defs/Name') names, None if nothing."""
    node: Any = root
    for part in ref[2:].split("/") if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict | bool) else None


def _is_json_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer()
        )
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    kinds: dict[str, type | tuple[type, ...]] = {
        "string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)
    }  # fmt: skip
    wanted = kinds.get(kind)
    return wanted is not None and isinstance(value, wanted)


def _json_type(value: Any) -> str:
    for kind in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_json_type(value, kind):
            return kind
    return type(value).__name__


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _row(item: Any) -> dict[str, Any]:
    model = sys.modules.get("pydantic")
    if model is not None and isinstance(item, model.BaseModel):
        row = item.model_dump(mode="python")
    elif dataclasses.is_dataclass(item) and not isinstance(item, type):
        row = dataclasses.asdict(item)
    elif isinstance(item, Mapping):
        row = dict(item)
    else:
        row = {"value": item}
    return {str(k): v.value if isinstance(v, enum.Enum) else v for k, v in row.items()}


def _field_names(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        inner = schema.get("items") if schema.get("type") == "array" else schema
        properties = inner.get("properties") if isinstance(inner, dict) else None
        return list(properties) if isinstance(properties, dict) else []
    if typing.get_origin(schema) is list:
        return _field_names(typing.get_args(schema)[0])
    if dataclasses.is_dataclass(schema):
        return [f.name for f in dataclasses.fields(schema)]
    model_fields = getattr(schema, "model_fields", None)
    if isinstance(model_fields, dict):
        return list(model_fields)
    return list(getattr(schema, "__annotations__", {}))


def _typed(column: pandas.Series) -> pandas.Series:
    """The column in the nullable dtype its values share, else unchanged (object)."""
    import datetime

    import pandas as pd

    values = [v for v in column if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return column
    dtype: Any = None
    if all(isinstance(v, bool) for v in values):
        dtype = "boolean"
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        dtype = "Int64"
    elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        dtype = "Float64"
    elif all(isinstance(v, str) for v in values):
        dtype = pd.StringDtype()
    try:
        if dtype is not None:
            return column.astype(dtype)
        if all(isinstance(v, datetime.datetime) for v in values):
            return pd.to_datetime(column)
    except (TypeError, ValueError, OverflowError):
        pass
    return column
