"""`{expr}` interpolation of `%%agent` cells from the user namespace.

Prompts often hold JSON, code and directives with braces, so only text that looks meant
for interpolation is touched: `{` followed by a name (`{df}`, `{df.shape[0]}`,
`{Out[3]}`, `{pi:.2f}`, `{x!r}`). A name that is not defined leaves the braces as
written (and a bare `{name}` is reported in `missing`: most often a typo); an expression
that cannot be evaluated is a `UsageError`. `{{name}}` is a literal `{name}`; any other
brace (JSON, code) is left alone.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

from IPython.core.error import UsageError

_OPENING = re.compile(r"\{\{|\}\}|\{(?=[A-Za-z_])")
_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_HINT = "write {{ and }} for literal braces, or use %%agent --no-interpolate"


def interpolate(text: str, namespace: Mapping[str, Any], missing: list[str] | None = None) -> str:
    """`text` with each `{expr}` replaced by its value in `namespace`.

    Each `{name}` left as written because `name` is not defined is appended to `missing`
    (an expression, a format spec or a conversion around an undefined name is not: that
    is code or a template, not a typo)."""
    out: list[str] = []
    position = 0
    escaped = 0
    while True:
        match = _OPENING.search(text, position)
        if match is None:
            out.append(text[position:])
            return "".join(out)
        out.append(text[position : match.start()])
        token = match.group()
        if token == "{{" or (token == "}}" and escaped):
            escaped += 1 if token == "{{" else -1
            out.append(token[0])
            position = match.end()
            continue
        if token == "}}":
            out.append(token)
            position = match.end()
            continue
        end = _closing_brace(text, match.end())
        if end is None:
            out.append(text[match.start() :])
            return "".join(out)
        field = text[match.end() : end]
        value = _evaluate(field, namespace, text[match.start() : end + 1])
        if value is None:
            value = text[match.start() : end + 1]
            if missing is not None and field.isidentifier() and field not in missing:
                missing.append(field)
        out.append(value)
        position = end + 1


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the `}` closing a field that starts at `start`, skipping nested brackets
    and string literals; None if the field is not closed on this line."""
    stack: list[str] = []
    quote: str | None = None
    index = start
    while index < len(text):
        char = text[index]
        if quote is not None:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "\n":
            return None
        elif char in _CLOSERS:
            stack.append(_CLOSERS[char])
        elif char == "}" and not stack:
            return index
        elif stack and char == stack[-1]:
            stack.pop()
        index += 1
    return None


def _split_field(field: str) -> tuple[str, str, str] | None:
    """(expression, conversion, format spec) as in an f-string, or None if no split of
    `field` is a valid expression."""
    candidates = [(field, "", "")]
    depth = 0
    for index, char in enumerate(field):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and char in ":!" and not field[index:].startswith("!="):
            head, tail = field[:index], field[index + 1 :]
            if char == "!" and tail[:1] in ("r", "s", "a") and tail[1:2] in ("", ":"):
                candidates.append((head, tail[0], tail[2:]))
            elif char == ":":
                candidates.append((head, "", tail))
    for expression, conversion, spec in candidates:
        try:
            ast.parse(expression.strip(), mode="eval")
        except SyntaxError:
            continue
        return expression.strip(), conversion, spec
    return None


def _evaluate(field: str, namespace: Mapping[str, Any], original: str) -> str | None:
    """The field's text, or None when it names something not defined."""
    parts = _split_field(field)
    if parts is None:
        raise UsageError(f"cannot interpolate {original}: not a Python expression ({_HINT})")
    expression, conversion, spec = parts
    try:
        value = eval(expression, dict(namespace))
    except NameError:
        return None
    except Exception as exc:
        raise UsageError(
            f"cannot interpolate {original}: {type(exc).__name__}: {exc} ({_HINT})"
        ) from None
    if conversion == "r":
        value = repr(value)
    elif conversion == "a":
        value = ascii(value)
    elif conversion == "s":
        value = str(value)
    try:
        return format(value, spec)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"cannot interpolate {original}: {exc} ({_HINT})") from None


def note_missing(names: list[str]) -> None:
    """One line when `{name}` braces went out as written: usually a typo, costing a call."""
    if not names:
        return
    braces = ", ".join(f"{{{name}}}" for name in names)
    were, variables = ("was", "variable") if len(names) == 1 else ("were", "variables")
    print(
        f"agentrt: {braces} {were} sent as written: no {variables} {', '.join(names)} "
        "defined (write {{ and }} to send braces without this note)"
    )
