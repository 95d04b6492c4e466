"""`@data`: read-only tools over a live namespace (the notebook's variables).

The model may look (list the variables, describe a DataFrame, sample rows, count the
values of a column, query) but never change anything: every tool reads, returns plain
JSON, and bounds what it returns in rows and characters. A query is checked before
pandas sees it, because `DataFrame.query` evaluates attribute chains (dunders included)
and `@` names from the caller's scope: only column names, literals, comparisons,
arithmetic and a short list of read-only methods pass; no `@name`, no `_`-attributes,
no `inplace`. pandas is never imported here: the tools use it only through the frames
they find, and a namespace in which pandas was never imported holds none.

A mistake of the model's (an unknown name, not a DataFrame, a bad column, a refused or
failing query) is a `ToolError` whose message names the problem and what to do instead;
the agent hands it to the model, which can correct itself.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import io
import json
import re
import sys
import tokenize
import types
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .errors import InvalidConfig, ToolError
from .tools import Tool, as_tool

HIDDEN_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython"})
"""IPython's own entries in the user namespace: never listed, never reachable."""
MAX_VARIABLES = 200
MAX_COLUMNS_LISTED = 200
MAX_COLUMNS_DESCRIBED = 50
MAX_CELL_CHARS = 200
MAX_QUERY_CHARS = 2_000
HEAD_ROWS = 5
_BACKTICKED = re.compile(r"`([^`]*)`")
_SCALARS = (bool, int, float, complex, str, bytes, type(None))
_QUERY_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Name, ast.Load,
    ast.Constant, ast.List, ast.Tuple, ast.Attribute, ast.Call, ast.Subscript, ast.Slice,
    ast.keyword, ast.And, ast.Or, ast.Not, ast.Invert, ast.USub, ast.UAdd,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd,
    ast.BitOr, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
)  # fmt: skip
_QUERY_METHODS = frozenset(
    {
        "contains", "startswith", "endswith", "match", "fullmatch", "len", "lower", "upper",
        "strip", "lstrip", "rstrip", "isdigit", "isalpha", "isalnum", "isnumeric", "isspace",
        "isna", "notna", "isnull", "notnull", "isin", "between", "abs", "round", "astype",
        "strftime", "normalize", "duplicated",
    }
)  # fmt: skip
"""Methods a query may call: all return new values and none takes `inplace`."""
_QUERY_FUNCTIONS = frozenset({"abs", "sqrt", "log", "log10", "exp", "floor", "ceil"})
"""pandas' math functions a query may call by name."""


TOOL_NAMES = (
    "list_variables",
    "describe_dataframe",
    "sample_rows",
    "value_counts",
    "query_dataframe",
)
"""The `@data` tools, as the model calls them (methods of `_Reader`)."""


def data_tools(
    namespace: Mapping[str, Any], *, max_rows: int = 50, max_chars: int = 20_000
) -> list[Tool]:
    """The `@data` toolset over `namespace` (read live at each call, never written).

    `max_rows` bounds the rows any tool returns, `max_chars` the JSON it returns.
    """
    if not isinstance(namespace, Mapping):
        raise InvalidConfig(
            f"the namespace must be a mapping of names to values, got {type(namespace).__name__}",
            field="tools",
        )
    for name, value, low, high in (
        ("max_rows", max_rows, 1, 10_000),
        ("max_chars", max_chars, 1_000, 10_000_000),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidConfig(f"must be an integer from {low} to {high}", field=name)
    reader = _Reader(namespace, max_rows, max_chars)
    return [as_tool(getattr(reader, name)) for name in TOOL_NAMES]


_F = TypeVar("_F", bound=Callable[..., Any])


def _named_as_the_tool(method: _F) -> _F:
    """Python names a function by its qualified name when a call of it fails
    ("_Reader.list_variables() got an unexpected keyword argument 'x'"), an error the
    model and the user see: they know the tool as "list_variables"."""
    method.__qualname__ = method.__name__
    return method


class _Reader:
    """The tools' shared state: the namespace and the bounds. Methods are the tools."""

    def __init__(self, namespace: Mapping[str, Any], max_rows: int, max_chars: int) -> None:
        self.namespace = namespace
        self.max_rows = max_rows
        self.max_chars = max_chars

    @_named_as_the_tool
    def list_variables(self) -> dict[str, Any]:
        """List the notebook's variables: name, type, and shape or length.

        Modules, functions, classes and private names are left out.
        """
        entries = [_summary(name, value) for name, value in _visible(self.namespace)]
        shown = entries[:MAX_VARIABLES]
        result: dict[str, Any] = {"variables": shown}
        if len(entries) > len(shown):
            result["not_shown"] = len(entries) - len(shown)
        return self._bounded(result)

    @_named_as_the_tool
    def describe_dataframe(self, name: str) -> dict[str, Any]:
        """Describe a DataFrame: shape, column dtypes and null counts, describe(), first rows.

        Args:
            name: The variable holding the DataFrame.
        """
        frame = self._frame(name)
        listed, described = MAX_COLUMNS_LISTED, MAX_COLUMNS_DESCRIBED
        while True:
            result = _description(name, frame, listed, described, min(HEAD_ROWS, self.max_rows))
            if described == 1 or len(_dumps(result)) <= self.max_chars:
                return self._bounded(result)
            listed, described = max(1, listed // 2), max(1, described // 2)

    @_named_as_the_tool
    def sample_rows(self, name: str, n: int = 5, seed: int = 0) -> dict[str, Any]:
        """A random sample of rows of a DataFrame (or Series).

        Args:
            name: The variable holding the DataFrame.
            n: How many rows.
            seed: The random seed; the same seed gives the same rows.
        """
        frame = self._frame(name, series_too=True)
        count = _count("n", n, self.max_rows)
        sample = frame.sample(n=min(count, len(frame)), random_state=seed)
        return self._rows({"name": name, "rows_total": len(frame)}, sample)

    @_named_as_the_tool
    def value_counts(
        self, name: str, column: str | None = None, top: int = 20, dropna: bool = False
    ) -> dict[str, Any]:
        """How often each value occurs in a column, most frequent first.

        Args:
            name: The variable holding the DataFrame (or Series).
            column: The column to count (leave out for a Series).
            top: How many of the most frequent values to return.
            dropna: Leave missing values out of the counts.
        """
        frame = self._frame(name, series_too=True)
        pandas = sys.modules["pandas"]
        if isinstance(frame, pandas.Series):
            series = frame
        elif column is None:
            raise ToolError(f"{name} is a DataFrame: say which column to count")
        else:
            series = frame[self._column(name, frame, column)]
            if isinstance(series, pandas.DataFrame):
                raise ToolError(f"{name} has several columns named {column!r}; rename them first")
        limit = _count("top", top, self.max_rows)
        try:
            counts = series.value_counts(dropna=dropna)
        except TypeError as exc:
            raise ToolError(f"cannot count the values of {column or name}: {exc}") from None
        shown = counts.head(limit)
        split = json.loads(shown.to_json(orient="split", date_format="iso", default_handler=str))
        result: dict[str, Any] = {
            "name": name,
            "column": column,
            "dtype": str(series.dtype),
            "rows": len(series),
            "nulls": int(series.isna().sum()),
            "distinct": int(counts.size),
            "top": [
                {"value": _cut(value), "count": count}
                for value, count in zip(split["index"], split["data"], strict=True)
            ],
        }
        others = int(counts.sum()) - int(shown.sum())
        if others:
            result["other_rows"] = others
        return self._bounded(result)

    @_named_as_the_tool
    def query_dataframe(
        self,
        name: str,
        expr: str = "",
        columns: list[str] | None = None,
        sort_by: str | None = None,
        descending: bool = False,
        limit: int = 20,
    ) -> dict[str, Any]:
        """Rows of a DataFrame that match a pandas query, optionally some columns, sorted.

        Backticks quote column names that are not identifiers. Leave expr empty for all rows.

        Args:
            name: The variable holding the DataFrame.
            expr: A DataFrame.query condition, e.g. "price > 10 and `unit name` == 'kg'".
            columns: The columns to return (all if left out).
            sort_by: A column to sort the result by.
            descending: Sort from largest to smallest.
            limit: How many rows to return at most.
        """
        frame = self._frame(name)
        count = _count("limit", limit, self.max_rows)
        picked = [self._column(name, frame, c) for c in columns or []]
        order = None if sort_by is None else self._column(name, frame, sort_by)
        result = frame
        if expr.strip():
            _check_query(expr, frame)
            try:
                result = frame.query(expr, engine="python", local_dict={}, global_dict={})
            except Exception as exc:
                raise ToolError(
                    f"the query {_cut(expr)!r} failed: {type(exc).__name__}: {_cut(str(exc))}"
                ) from None
            if not isinstance(result, type(frame)):
                raise ToolError(f"the query {_cut(expr)!r} must select rows (a condition)")
        if order is not None:
            result = result.sort_values(by=order, ascending=not descending)
        if picked:
            result = result[picked]
        return self._rows({"name": name, "rows_matched": len(result)}, result.head(count))

    def _frame(self, name: str, *, series_too: bool = False) -> Any:
        """The DataFrame (or Series) called `name`, or a `ToolError` saying what is there."""
        if not isinstance(name, str) or name.startswith("_") or name in HIDDEN_NAMES:
            raise ToolError(f"{name!r} is not a variable you can read; call list_variables")
        try:
            value = self.namespace[name]
        except KeyError:
            value = _MISSING
        pandas = sys.modules.get("pandas")
        kinds: tuple[type, ...] = ()
        if pandas is not None:
            kinds = (pandas.DataFrame, pandas.Series) if series_too else (pandas.DataFrame,)
        if kinds and isinstance(value, kinds):
            return value
        frames = [n for n, v in _visible(self.namespace) if kinds and isinstance(v, kinds)]
        wanted = "DataFrame or Series" if series_too else "DataFrame"
        have = f"the {wanted}s here: {', '.join(frames[:30])}" if frames else f"no {wanted} here"
        if value is _MISSING:
            close = difflib.get_close_matches(name, frames, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ToolError(f"no variable {name!r}; {hint}{have}")
        raise ToolError(f"{name!r} is of type {_type_name(value)}, not a {wanted}; {have}")

    def _column(self, name: str, frame: Any, column: str) -> Any:
        """The column label the model means (labels that are not strings match by str())."""
        if isinstance(column, str):
            labels = list(frame.columns)
            if column in labels:
                return column
            same = [label for label in labels if _label(label) == column]
            if len(same) == 1:
                return same[0]
        names = [_label(label) for label in frame.columns]
        close = difflib.get_close_matches(str(column), names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        shown = ", ".join(repr(n) for n in names[:50])
        raise ToolError(f"no column {column!r} in {name}; {hint}the columns are {shown}")

    def _rows(self, head: dict[str, Any], rows: Any) -> dict[str, Any]:
        """`head` plus a table of `rows`, halving the rows until the JSON fits."""
        count = len(rows)
        while True:
            result = {**head, "rows_shown": count, "table": _table(rows.iloc[:count])}
            if count == 0 or len(_dumps(result)) <= self.max_chars:
                return self._bounded(result)
            count //= 2

    def _bounded(self, result: dict[str, Any]) -> dict[str, Any]:
        """`result`, or its JSON cut to `max_chars` with a note when even that is too long."""
        text = _dumps(result)
        if len(text) <= self.max_chars:
            return result
        shown = self.max_chars
        while True:
            cut = {
                "truncated": f"the result was {len(text):,} characters of JSON; the start is "
                "shown: ask for fewer rows or columns",
                "partial_result": text[:shown],
            }
            over = len(_dumps(cut)) - self.max_chars
            if over <= 0:
                return cut
            shown -= over


_MISSING = object()


def _description(name: str, frame: Any, listed: int, described: int, rows: int) -> dict[str, Any]:
    """What describe_dataframe returns, for the first `listed` and `described` columns."""
    width = frame.shape[1]
    columns = [
        {"name": _label(column), "dtype": str(dtype), "nulls": int(nulls)}
        for column, dtype, nulls in zip(
            frame.columns[:listed],
            frame.dtypes.iloc[:listed],
            frame.iloc[:, :listed].isna().sum(),
            strict=True,
        )
    ]
    result: dict[str, Any] = {
        "name": name,
        "type": _type_name(frame),
        "shape": list(frame.shape),
        "columns": columns,
    }
    if width > listed:
        result["columns_not_listed"] = width - listed
    part = frame.iloc[:, :described]
    try:
        result["describe"] = _table(part.describe(include="all"))
    except ValueError as exc:  # no columns, or none pandas can describe
        result["describe"] = f"not available: {exc}"
    result["head"] = _table(part.head(rows))
    if width > described:
        result["note"] = f"describe and head show the first {described} of {width} columns"
    return result


def _visible(namespace: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The namespace's user variables, copied first (the kernel may change it meanwhile)."""
    items: list[tuple[str, Any]] = []
    for _attempt in range(3):
        try:
            items = list(namespace.items())
            break
        except RuntimeError:  # changed size during iteration: try again
            continue
    return [
        (name, value)
        for name, value in items
        if isinstance(name, str)
        and not name.startswith("_")
        and name not in HIDDEN_NAMES
        and not isinstance(value, types.ModuleType)
        and not callable(value)
    ]


def _summary(name: str, value: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "type": _type_name(value)}
    shape = _attribute(value, "shape")
    if isinstance(shape, tuple) and all(isinstance(n, int) for n in shape):
        entry["shape"] = list(shape)
    elif not isinstance(value, str | bytes):
        with contextlib.suppress(Exception):
            entry["len"] = len(value)
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, pandas.DataFrame):
        entry["columns"] = [_label(c) for c in value.columns[:30]]
    elif (dtype := _attribute(value, "dtype")) is not None:
        entry["dtype"] = str(dtype)
    if isinstance(value, _SCALARS):
        entry["value"] = _cut(repr(value), 80)
    return entry


def _attribute(value: Any, name: str) -> Any:
    try:
        return getattr(value, name, None)
    except Exception:  # a property that raises
        return None


def _type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__.split(".")[0]
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _label(label: Any) -> str:
    if isinstance(label, tuple):
        return " / ".join(str(part) for part in label)
    return str(label)


def _cut(value: Any, limit: int = MAX_CELL_CHARS) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return f"{value[: limit - 1]}…"
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _count(name: str, value: object, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ToolError(f"{name} must be a whole number from 0 to {most}, got {value!r}")
    return min(value, most)


def _table(frame: Any) -> dict[str, Any]:
    """Columns, index and rows as JSON (dates ISO, missing values null, long cells cut)."""
    pandas = sys.modules["pandas"]
    if isinstance(frame, pandas.Series):
        frame = frame.to_frame()
    split = json.loads(frame.to_json(orient="split", date_format="iso", default_handler=str))
    return {
        "columns": [_label(c) for c in frame.columns],
        "index": [_cut(label) for label in split["index"]],
        "rows": [[_cut(cell) for cell in row] for row in split["data"]],
    }


def _check_query(expr: str, frame: Any) -> None:
    """Refuse a query that could do more than read `frame`'s columns (see the module doc)."""
    if not isinstance(expr, str) or len(expr) > MAX_QUERY_CHARS:
        raise ToolError(f"a query is a string of at most {MAX_QUERY_CHARS} characters")
    names = {_label(c) for c in frame.columns} | {"index"}
    names |= {str(level) for level in frame.index.names if level is not None}
    quoted: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            raise ToolError(f"no column `{match.group(1)}` in the frame")
        quoted.append(match.group(1))
        return f"backticked_{len(quoted)}"

    plain = _BACKTICKED.sub(placeholder, expr)
    if _has_at_operator(plain):
        raise ToolError(
            "`@name` (a local variable) is not allowed in a query: write the value itself"
        )
    try:
        tree = ast.parse(plain.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"the query {_cut(expr)!r} is not an expression: {exc.msg}") from None
    allowed_names = names | {f"backticked_{n}" for n in range(1, len(quoted) + 1)}
    for node in ast.walk(tree):
        problem = _query_problem(node, allowed_names)
        if problem:
            raise ToolError(f"the query {_cut(expr)!r} is refused: {problem}")


def _has_at_operator(text: str) -> bool:
    with contextlib.suppress(tokenize.TokenError, SyntaxError):
        tokens = tokenize.generate_tokens(io.StringIO(text).readline)
        return any(t.type == tokenize.OP and t.string == "@" for t in tokens)
    return "@" in text


def _query_problem(node: ast.AST, names: set[str]) -> str | None:
    if not isinstance(node, _QUERY_NODES):
        return f"{type(node).__name__} is not allowed (only comparisons, arithmetic, literals)"
    if isinstance(node, ast.Name) and node.id not in names and node.id not in _QUERY_FUNCTIONS:
        close = difflib.get_close_matches(node.id, sorted(names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{node.id!r} is not a column{hint}; quote odd names with backticks"
    if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
        return f"the attribute {node.attr!r} is private"
    if isinstance(node, ast.Call):
        func = node.func
        method = isinstance(func, ast.Attribute) and func.attr in _QUERY_METHODS
        function = isinstance(func, ast.Name) and func.id in _QUERY_FUNCTIONS
        if not (method or function):
            allowed = ", ".join(sorted(_QUERY_METHODS | _QUERY_FUNCTIONS))
            return f"only these calls are allowed: {allowed}"
    if isinstance(node, ast.keyword) and node.arg in (None, "inplace"):
        return "inplace and **arguments are not allowed"
    return None
