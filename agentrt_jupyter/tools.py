"""Plain Python callables as model tools: declarations from type hints and docstrings."""

from __future__ import annotations

import enum
import inspect
import json
import logging
import math
import re
import types
import typing
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import InvalidConfig

_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARRAYS: tuple[Any, ...] = (list, tuple, set, frozenset)
_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")
_WRAP_IT = "wrap it in a def function whose parameters have type hints"
_SUPPORTED = "use str, int, float, bool, list, dict, Literal, Enum or Optional of those"
_MAX_DEPTH = 16
"""How deeply type hints may nest (list[list[...]]) before a tool is refused."""
TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
"""What Gemini accepts as a function name."""

log = logging.getLogger("agentrt_jupyter")


@dataclass(frozen=True)
class Tool:
    """A callable the model may call, with the declaration sent to it."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    requires_approval: bool = False
    """The tool asks the user before each run itself (`@python`): a confirm policy that
    asks for every call should skip it rather than ask twice."""

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
        raise InvalidConfig(f"{_shown(obj)} is not callable: pass a function", field="tools")
    name = getattr(obj, "__name__", None)
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise InvalidConfig(
            f"{_shown(obj)} needs a name of letters, digits and _ (a def function, not a lambda)",
            field="tools",
        )
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError) as exc:
        raise InvalidConfig(
            f"tool {name!r}: cannot read its parameters ({exc}); {_WRAP_IT}", field="tools"
        ) from None
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception as exc:
        raise InvalidConfig(
            f"tool {name!r}: cannot read its type hints ({type(exc).__name__}: {exc}); {_WRAP_IT}",
            field="tools",
        ) from None
    summary, arg_docs = _parse_docstring(inspect.getdoc(obj) or "")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in signature.parameters.values():
        where = f"tool {name!r}, parameter {param.name!r}"
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise InvalidConfig(f"{where}: *args/**kwargs cannot be declared", field="tools")
        if param.kind is param.POSITIONAL_ONLY:
            raise InvalidConfig(
                f"{where} is positional-only, but the model passes arguments by name", field="tools"
            )
        if param.name not in hints:
            raise InvalidConfig(f"{where} needs a type hint", field="tools")
        schema = _schema_for(hints[param.name], where)
        if param.name in arg_docs:
            schema["description"] = arg_docs[param.name]
        properties[param.name] = schema
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return Tool(name=name, description=summary or name, parameters=parameters, fn=obj)


def tool_from_schema(
    name: str,
    description: str,
    parameters: dict[str, Any],
    fn: Callable[..., Any],
    *,
    requires_approval: bool = False,
) -> Tool:
    """A `Tool` whose declaration is a given JSON schema (an MCP tool's), not type hints.

    `fn` is called with the model's arguments as keywords. `InvalidConfig` names what
    is wrong: a name Gemini refuses, a schema that is not a plain-JSON object schema.
    """
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise InvalidConfig(
            f"tool name {_shown(name)} must be 1-64 letters, digits, _ . or -, not starting "
            "with a digit",
            field="tools",
        )
    if not callable(fn):
        raise InvalidConfig(f"tool {name!r}: {_shown(fn)} is not callable", field="tools")
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise InvalidConfig(
            f"tool {name!r}: parameters must be a JSON schema of type 'object'", field="tools"
        )
    try:
        json.dumps(parameters, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidConfig(
            f"tool {name!r}: parameters must be plain JSON ({exc})", field="tools"
        ) from None
    return Tool(
        name=name,
        description=description if isinstance(description, str) and description else name,
        parameters={"type": "object", **parameters},
        fn=fn,
        requires_approval=requires_approval,
    )


def approves(answer: object, *, asker: Callable[..., Any], role: str, tool: str) -> bool:
    """Whether an approval callable's `answer` runs a call of `tool`: only `True` does.

    The one rule of every approval path (`confirm_tool`, `@python`'s `approve`, the
    notebook's buttons, which answer through them). Anything else is a refusal; an answer
    that is not a bool ("deny", 1, None) is likely a mistake, so it is logged, once per
    `asker` (`role` names the setting it came from).
    """
    if answer is True:
        return True
    if not isinstance(answer, bool) and _first_odd_answer(asker):
        name = getattr(asker, "__qualname__", None) or _shown(asker)
        log.warning(
            "%s (%s) answered %s (a %s, not a bool) for a call of %r: only True runs a call, "
            "so this and every other answer is a refusal; return True or False "
            "(said once per callable)",
            role,
            name,
            _shown(answer),
            type(answer).__name__,
            tool,
        )
    return False


_odd_answerers: weakref.WeakSet[Any] = weakref.WeakSet()
_odd_answerer_ids: set[int] = set()
"""The approval callables already reported (by id where they take no weak reference)."""


def _first_odd_answer(asker: Callable[..., Any]) -> bool:
    """True the first time `asker` (a bound method: its function) gives a non-bool answer."""
    key = getattr(asker, "__func__", asker)
    try:
        if key in _odd_answerers:
            return False
        _odd_answerers.add(key)
    except TypeError:
        if id(key) in _odd_answerer_ids:
            return False
        _odd_answerer_ids.add(id(key))
    return True


def _shown(obj: object) -> str:
    """A short repr for an error message (a broken `__repr__` does not hide the error)."""
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__} object>"
    return text if len(text) <= 80 else f"{text[:77]}..."


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


def _schema_for(hint: Any, where: str, depth: int = 0) -> dict[str, Any]:
    """The JSON schema of one type hint, or `InvalidConfig` saying what to use instead."""
    if depth > _MAX_DEPTH:
        raise InvalidConfig(f"{where}: the type is nested too deeply", field="tools")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Literal:
        return _literal_schema(args, where)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            schema = _schema_for(options[0], where, depth + 1)
            if len(args) > len(options):
                schema["nullable"] = True
            return schema
        return {"anyOf": [_schema_for(a, where, depth + 1) for a in options]}
    if origin in (list, tuple, set, frozenset) or any(hint is kind for kind in _ARRAYS):
        item = args[0] if args and args[0] is not Ellipsis else Any
        return {"type": "array", "items": _schema_for(item, where, depth + 1)}
    if origin is dict or hint is dict:
        return {"type": "object"}
    if hint is Any:
        return {}
    if isinstance(hint, type) and hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [str(member.value) for member in hint]
        if not values:
            raise InvalidConfig(f"{where}: the Enum {hint.__name__} has no members", field="tools")
        return {"type": "string", "enum": values}
    raise InvalidConfig(
        f"{where}: type {_shown(hint)} is not supported ({_SUPPORTED})", field="tools"
    )


def _literal_schema(values: tuple[Any, ...], where: str) -> dict[str, Any]:
    kinds = {type(value) for value in values}
    finite = all(math.isfinite(value) for value in values if isinstance(value, float))
    if len(kinds) != 1 or not kinds <= set(_JSON_TYPES) or not finite:
        raise InvalidConfig(
            f"{where}: Literal values must be all str, all int, all (finite) float or all bool, "
            f"got {_shown(values)}",
            field="tools",
        )
    return {"type": _JSON_TYPES[kinds.pop()], "enum": list(values)}
