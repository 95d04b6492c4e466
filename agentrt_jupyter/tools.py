"""Plain Python callables as model tools: declarations from type hints and docstrings."""

from __future__ import annotations

import asyncio
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import InvalidConfig

_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


@dataclass(frozen=True)
class Tool:
    """A callable the model may call, with the declaration sent to it."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def declaration(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parameters_json_schema": self.parameters,
        }

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def as_tool(obj: Callable[..., Any] | Tool) -> Tool:
    """Build a `Tool` from a callable, or raise `InvalidConfig` naming what is wrong."""
    if isinstance(obj, Tool):
        return obj
    if not callable(obj):
        raise InvalidConfig(f"{obj!r} is not callable", field="tools")
    name = getattr(obj, "__name__", None)
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}", name):
        raise InvalidConfig(
            f"{obj!r} needs a name of letters, digits and _ (a def function, not a lambda)",
            field="tools",
        )
    doc = inspect.getdoc(obj) or ""
    summary, arg_docs = _parse_docstring(doc)
    try:
        hints = typing.get_type_hints(obj)
    except Exception as exc:
        raise InvalidConfig(
            f"tool {name!r}: cannot read its type hints ({exc})", field="tools"
        ) from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(obj).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise InvalidConfig(f"tool {name!r}: *args/**kwargs cannot be declared", field="tools")
        if param.name not in hints:
            raise InvalidConfig(
                f"tool {name!r}: parameter {param.name!r} needs a type hint", field="tools"
            )
        schema = _schema_for(hints[param.name], f"tool {name!r}, parameter {param.name!r}")
        if param.name in arg_docs:
            schema["description"] = arg_docs[param.name]
        properties[param.name] = schema
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return Tool(name=name, description=summary or name, parameters=parameters, fn=obj)


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary paragraph and the `Args:` entries of a Google-style docstring."""
    summary_lines: list[str] = []
    args: dict[str, str] = {}
    section = "summary"
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower() in {"args:", "arguments:", "parameters:"}:
            section = "args"
            continue
        if stripped.endswith(":") and stripped[:-1].isalpha() and section == "args":
            section = "other"
            continue
        if section == "summary":
            if not stripped and summary_lines:
                section = "body"
            elif stripped:
                summary_lines.append(stripped)
        elif section == "args" and (match := _ARG_LINE.match(line)):
            args[match.group(1)] = match.group(2).strip()
    return " ".join(summary_lines), args


def _schema_for(hint: Any, where: str) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if hint is Any:
        return {}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"type": "string", "enum": [str(m.value) for m in hint]}
    if origin is typing.Literal:
        return {"type": _JSON_TYPES.get(type(args[0]), "string"), "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            schema = _schema_for(options[0], where)
            if len(args) > len(options):
                schema["nullable"] = True
            return schema
        return {"anyOf": [_schema_for(a, where) for a in options]}
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set):
        item = args[0] if args else Any
        return {"type": "array", "items": _schema_for(item, where)}
    if origin is dict or hint is dict:
        return {"type": "object"}
    raise InvalidConfig(
        f"{where}: type {hint!r} is not supported (use str, int, float, bool, list, dict, "
        "Literal, Enum or Optional of those)",
        field="tools",
    )


async def call_tool(tool: Tool, args: dict[str, Any]) -> Any:
    """Run a tool: async ones on the loop, sync ones on a worker thread (never on the loop)."""
    if tool.is_async:
        return await tool.fn(**args)
    return await asyncio.to_thread(tool.fn, **args)
