"""`@data` reads the namespace and never changes it; `@python` runs code only once approved."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrt_jupyter import AgentConfig, AgentRuntime, InvalidConfig, ToolError, ToolResult
from agentrt_jupyter.datatools import data_tools
from agentrt_jupyter.pythontool import python_tool
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with


def sales() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "city": pd.array(["Paris", "Lyon", "Paris", None, "Nice"], dtype="string"),
            "price": [10.5, 3.0, 12.0, np.nan, 7.25],
            "units": pd.array([1, 2, None, 4, 5], dtype="Int64"),
            "when": pd.to_datetime(["2024-01-01", "2024-01-02", None, "2024-02-01", "2024-03-01"]),
            "unit name": ["kg", "g", "kg", "kg", "g"],
            "kind": pd.Categorical(["a", "b", "a", "a", "b"]),
        },
        index=pd.Index([10, 11, 12, 13, 14], name="row"),
    )


@pytest.fixture
def namespace() -> dict[str, Any]:
    frame = sales()
    return {
        "df": frame,
        "prices": frame["price"],
        "names": ["a", "b", "c"],
        "answer": 42,
        "title": "Q1 sales",
        "matrix": np.zeros((3, 4)),
        "_private": frame,
        "In": ["cell"],
        "Out": {},
        "exit": object(),
        "get_ipython": lambda: None,
        "np": np,
        "helper": len,
        "Model": type("Model", (), {}),
    }


def tools_of(namespace: dict[str, Any], **bounds: int) -> dict[str, Callable[..., Any]]:
    return {t.name: t.fn for t in data_tools(namespace, **bounds)}


def test_the_toolset_declares_five_read_only_tools(namespace: dict[str, Any]) -> None:
    tools = data_tools(namespace)
    assert [t.name for t in tools] == [
        "list_variables",
        "describe_dataframe",
        "sample_rows",
        "value_counts",
        "query_dataframe",
    ]
    for tool in tools:
        assert tool.description and not tool.is_async and not tool.requires_approval
        json.dumps(tool.declaration())
    query = next(t for t in tools if t.name == "query_dataframe")
    assert query.parameters["required"] == ["name"]
    assert set(query.parameters["properties"]) == {
        "name", "expr", "columns", "sort_by", "descending", "limit"
    }  # fmt: skip
    AgentConfig(tools=tools)


def test_list_variables_shows_data_and_hides_the_rest(namespace: dict[str, Any]) -> None:
    listed = tools_of(namespace)["list_variables"]()["variables"]
    by_name = {v["name"]: v for v in listed}
    assert list(by_name) == ["df", "prices", "names", "answer", "title", "matrix"]
    assert by_name["df"] == {
        "name": "df",
        "type": "pandas.DataFrame",
        "shape": [5, 6],
        "columns": ["city", "price", "units", "when", "unit name", "kind"],
    }
    assert by_name["prices"]["shape"] == [5] and by_name["prices"]["dtype"] == "float64"
    assert by_name["names"] == {"name": "names", "type": "list", "len": 3}
    assert by_name["answer"]["value"] == "42"
    assert by_name["matrix"]["shape"] == [3, 4]


def test_describe_gives_dtypes_nulls_statistics_and_rows(namespace: dict[str, Any]) -> None:
    described = tools_of(namespace)["describe_dataframe"]("df")
    json.dumps(described)
    assert described["shape"] == [5, 6]
    columns = {c["name"]: c for c in described["columns"]}
    assert columns["units"] == {"name": "units", "dtype": "Int64", "nulls": 1}
    assert columns["when"]["nulls"] == 1 and columns["kind"]["dtype"] == "category"
    statistics = described["describe"]
    assert "mean" in statistics["index"] and statistics["columns"][1] == "price"
    head = described["head"]
    assert head["index"] == [10, 11, 12, 13, 14]
    assert head["rows"][0][:3] == ["Paris", 10.5, 1]
    assert head["rows"][3][0] is None and head["rows"][2][3] is None
    assert head["rows"][0][3].startswith("2024-01-01")


def test_sample_value_counts_and_query(namespace: dict[str, Any]) -> None:
    tools = tools_of(namespace)
    sample = tools["sample_rows"]("df", n=3, seed=1)
    assert sample["rows_total"] == 5 and sample["rows_shown"] == 3
    assert sample == tools["sample_rows"]("df", n=3, seed=1)
    assert tools["sample_rows"]("prices", n=2)["table"]["columns"] == ["price"]
    counts = tools["value_counts"]("df", "city")
    assert counts["top"][0] == {"value": "Paris", "count": 2}
    assert {"value": None, "count": 1} in counts["top"]
    assert counts["distinct"] == 4 and counts["nulls"] == 1
    assert tools["value_counts"]("df", "city", top=1, dropna=True)["other_rows"] == 2
    assert tools["value_counts"]("prices")["rows"] == 5
    found = tools["query_dataframe"](
        "df",
        "price > 5 and `unit name` == 'kg' and city.str.startswith('P')",
        columns=["city", "price"],
        sort_by="price",
        descending=True,
    )
    assert found["rows_matched"] == 2
    assert found["table"] == {
        "columns": ["city", "price"],
        "index": [12, 10],
        "rows": [["Paris", 12.0], ["Paris", 10.5]],
    }
    assert tools["query_dataframe"]("df", "index >= 13 and units.notna()")["rows_matched"] == 2
    assert tools["query_dataframe"]("df", "kind.isin(['b'])", limit=1)["rows_shown"] == 1
    assert tools["query_dataframe"]("df")["rows_matched"] == 5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (("describe_dataframe", "dff"), "no variable 'dff'; did you mean 'df'?"),
        (("describe_dataframe", "answer"), "'answer' is of type int, not a DataFrame"),
        (("describe_dataframe", "prices"), "not a DataFrame; the DataFrames here: df"),
        (("describe_dataframe", "_private"), "not a variable you can read"),
        (("describe_dataframe", "In"), "not a variable you can read"),
        (("value_counts", "df", "cty"), "no column 'cty' in df; did you mean 'city'?"),
        (("value_counts", "df"), "say which column"),
        (("sample_rows", "df", -1), "n must be a whole number"),
        (("query_dataframe", "df", "price >"), "is not an expression"),
        (("query_dataframe", "df", "prize > 3"), "'prize' is not a column (did you mean 'price'"),
        (("query_dataframe", "df", "city > 3"), "failed: TypeError"),
        (("query_dataframe", "df", "price + 1"), "failed"),
        (("query_dataframe", "df", "", ["city", "nope"]), "no column 'nope'"),
        (("query_dataframe", "df", "", None, "nope"), "no column 'nope'"),
    ],
)
def test_mistakes_are_tool_errors_that_say_what_to_do(
    namespace: dict[str, Any], call: tuple[Any, ...], message: str
) -> None:
    name, *args = call
    with pytest.raises(ToolError) as caught:
        tools_of(namespace)[name](*args)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("price > @limit", "`@name` (a local variable) is not allowed"),
        ("index.__class__.__name__ == 'x'", "the attribute '__name__' is private"),
        ("price.__init__.__globals__['sys'] == 1", "private"),
        ("units.fillna(0, inplace=True) > 0", "only these calls are allowed"),
        ("units.round(inplace=True) > 0", "inplace"),
        ("price.clip(**kw) > 0", "only these calls"),
        ("units.pop(10) > 0", "only these calls"),
        ("city.str.contains('a', **{'inplace': True})", "inplace and **arguments"),
        ("__import__('os').system('true') == 0", "only these calls"),
        ("(x := 1) > 0", "NamedExpr is not allowed"),
        ("[p for p in price]", "ListComp is not allowed"),
        ("lambda: price", "Lambda is not allowed"),
        ("`no such` > 1", "no column `no such`"),
        ("price > 1 " * 300, "at most 2000 characters"),
    ],
)
def test_a_query_that_could_do_more_than_read_is_refused(
    namespace: dict[str, Any], expr: str, message: str
) -> None:
    limit = 1  # what `@limit` would have reached
    with pytest.raises(ToolError) as caught:
        tools_of(namespace)["query_dataframe"]("df", expr)
    assert message in str(caught.value)
    assert limit == 1


def test_no_tool_changes_the_frame_or_the_namespace(namespace: dict[str, Any]) -> None:
    frame = namespace["df"]
    snapshot = frame.copy(deep=True)
    names = dict(namespace)
    tools = tools_of(namespace)
    calls: list[tuple[str, tuple[Any, ...]]] = [
        ("list_variables", ()),
        ("describe_dataframe", ("df",)),
        ("sample_rows", ("df", 5)),
        ("value_counts", ("df", "kind")),
        ("value_counts", ("df", "units", 2, True)),
        ("query_dataframe", ("df", "units > 1", ["units"], "price", True)),
        ("query_dataframe", ("df", "units.fillna(0) > 1")),
        ("query_dataframe", ("df", "units.astype('float') > 1")),
        ("query_dataframe", ("df", "units.round(inplace=True) > 0")),
        ("query_dataframe", ("df", "price.clip(upper=1, inplace=True) > 0")),
    ]
    for name, args in calls:
        with contextlib.suppress(ToolError):
            tools[name](*args)
        pd.testing.assert_frame_equal(frame, snapshot)
        assert namespace == names and namespace["df"] is frame
        assert frame.attrs == {} and frame.flags.allows_duplicate_labels


QUERY_TOKENS = [
    "price", "units", "city", "`unit name`", "index", "kind", ">", "<", "==", "!=", "and", "or",
    "not", "(", ")", "1", "2.5", "'Paris'", "+", "*", "-", ".", "str", "contains", "isna",
    "__class__", "@answer", "inplace=True", ",", "[", "]", "in", "abs", "astype", "drop",
]  # fmt: skip


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(QUERY_TOKENS), min_size=1, max_size=8))
def test_fuzzed_queries_give_rows_or_tool_errors_and_change_nothing(
    namespace: dict[str, Any], tokens: list[str]
) -> None:
    frame = namespace["df"]
    snapshot = frame.copy(deep=True)
    try:
        result = tools_of(namespace)["query_dataframe"]("df", " ".join(tokens))
    except ToolError:
        pass
    else:
        assert result["rows_shown"] <= result["rows_matched"] <= 5
    pd.testing.assert_frame_equal(frame, snapshot)


def test_results_are_bounded_in_rows_and_characters() -> None:
    big = pd.DataFrame({"n": range(100_000), "text": ["x" * 1_000] * 100_000})
    wide = pd.DataFrame(np.zeros((3, 600)), columns=[f"column_{i}" for i in range(600)])
    tools = tools_of({"big": big, "wide": wide}, max_rows=40, max_chars=5_000)
    found = tools["query_dataframe"]("big", "n >= 10", limit=1_000)
    assert found["rows_matched"] == 99_990
    assert 0 < found["rows_shown"] <= 40
    assert len(json.dumps(found)) <= 5_000
    assert all(len(row[1]) <= 200 for row in found["table"]["rows"])
    assert tools["sample_rows"]("big", n=10_000)["rows_shown"] <= 40
    described = tools["describe_dataframe"]("wide")
    assert len(json.dumps(described, ensure_ascii=False)) <= 5_000
    assert described["shape"] == [3, 600] and described["columns_not_listed"] > 0
    assert "of 600 columns" in described["note"]
    assert len(described["head"]["columns"]) == len(described["describe"]["columns"]) < 50
    assert len(json.dumps(tools["list_variables"]())) <= 5_000
    with pytest.raises(InvalidConfig, match="max_rows"):
        data_tools({}, max_rows=0)


def test_pandas_is_imported_only_when_a_tool_reaches_a_frame() -> None:
    code = (
        "import sys\n"
        "from agentrt_jupyter.datatools import data_tools\n"
        "tools = {t.name: t.fn for t in data_tools({'x': 1, 'names': ['a']})}\n"
        "assert tools['list_variables']()['variables'][0]['name'] == 'x'\n"
        "try:\n"
        "    tools['describe_dataframe']('x')\n"
        "except Exception as exc:\n"
        "    assert 'no DataFrame here' in str(exc), exc\n"
        "assert 'pandas' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_data_tools_through_a_turn(rt: AgentRuntime, server: LocalServer, tag: str) -> None:
    namespace = {"df": sales()}
    agent = rt.create_agent(tools=data_tools(namespace))
    handle = agent.chat(
        '@@call query_dataframe {"name": "df", "expr": "price > 10", "columns": ["city"]}\n'
        '@@call value_counts {"name": "df", "column": "cty"}\n'
        f"{tag}"
    )
    text = handle.text(timeout=20)
    results = [e for e in handle if isinstance(e, ToolResult)]
    assert results[0].error is None and results[0].result["rows_matched"] == 2
    assert results[1].error is not None and "ToolError: no column 'cty'" in results[1].error
    assert '"rows_matched":2' in text and "did you mean 'city'?" in text
    first = requests_with(server, tag)[0]
    declared = [d["name"] for d in first["body"]["tools"][0]["functionDeclarations"]]
    assert "describe_dataframe" in declared


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_the_python_tool_cannot_be_built_without_approval() -> None:
    with pytest.raises(TypeError):
        python_tool({})  # type: ignore[call-arg]
    with pytest.raises(InvalidConfig, match="only behind approval"):
        python_tool({}, approve=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig, match="must be a dict"):
        python_tool(types.MappingProxyType({}), approve=lambda n, a: True)  # type: ignore[arg-type]
    tool = python_tool({}, approve=lambda name, args: True)
    assert tool.requires_approval and tool.is_async and tool.name == "python"


@pytest.mark.parametrize("answer", [False, None, "yes", 1, [True]])
def test_only_an_answer_of_true_runs_the_code(answer: Any) -> None:
    namespace: dict[str, Any] = {}
    asked: list[tuple[str, dict[str, Any]]] = []

    def approve(name: str, args: dict[str, Any]) -> Any:
        asked.append((name, args))
        return answer

    with pytest.raises(ToolError, match="declined"):
        run(python_tool(namespace, approve=approve).fn(code="ran = True"))
    assert asked == [("python", {"code": "ran = True"})]
    assert "ran" not in namespace


def test_an_approval_that_fails_is_a_refusal() -> None:
    namespace: dict[str, Any] = {}

    async def approve(name: str, args: dict[str, Any]) -> bool:
        raise RuntimeError("the widget is gone")

    with pytest.raises(ToolError, match="asking for approval failed"):
        run(python_tool(namespace, approve=approve).fn(code="ran = True"))
    assert "ran" not in namespace


def test_approved_code_runs_in_the_namespace_and_returns_value_and_output() -> None:
    namespace: dict[str, Any] = {"df": sales()}

    async def approve(name: str, args: dict[str, Any]) -> bool:
        return True

    tool = python_tool(namespace, approve=approve)
    code = (
        "import sys\n"
        "print('rows', len(df))\n"
        "print('careful', file=sys.stderr)\n"
        "total = df.price.sum()\n"
        "total * 2"
    )
    assert run(tool.fn(code=code)) == {
        "value": repr(np.float64(65.5)),
        "stdout": "rows 5\n",
        "stderr": "careful\n",
    }
    assert namespace["total"] == 32.75
    assert run(tool.fn(code="x = 1")) == {}
    assert run(tool.fn(code="None")) == {"value": "None"}


def test_code_that_raises_reports_the_traceback_and_what_it_printed() -> None:
    tool = python_tool({}, approve=lambda name, args: True)
    with pytest.raises(ToolError) as caught:
        run(tool.fn(code="print('before')\n1 / 0"))
    message = str(caught.value)
    assert 'File "<agent python>", line 2' in message
    assert "ZeroDivisionError: division by zero" in message and "stdout: before" in message
    assert "pythontool.py" not in message
    with pytest.raises(ToolError, match="SyntaxError"):
        run(tool.fn(code="def ("))
    with pytest.raises(ToolError, match="SystemExit"):
        run(tool.fn(code="raise SystemExit(3)"))


def test_output_is_bounded_and_other_threads_output_is_not_captured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    started, proceed = threading.Event(), threading.Event()
    namespace: dict[str, Any] = {"started": started, "proceed": proceed}
    tool = python_tool(namespace, approve=lambda name, args: True, max_chars=100)
    outcome: list[Any] = []
    code = "started.set()\nassert proceed.wait(10)\nprint('inside')\nprint('y' * 500)"
    runner = threading.Thread(target=lambda: outcome.append(run(tool.fn(code=code))))
    runner.start()
    assert started.wait(10)
    print("outside")
    proceed.set()
    runner.join(10)
    (result,) = outcome
    assert result["stdout"].startswith("inside\nyyy") and "more characters" in result["stdout"]
    assert len(result["stdout"]) < 200
    assert capsys.readouterr().out == "outside\n"
    assert type(sys.stdout).__name__ != "_Routed", "the capture was not undone"


def test_the_python_tool_through_a_turn_asks_with_the_code(rt: AgentRuntime, tag: str) -> None:
    namespace: dict[str, Any] = {"df": sales()}
    asked: list[str] = []

    async def approve(name: str, args: dict[str, Any]) -> bool:
        asked.append(args["code"])
        return "drop" not in args["code"]

    agent = rt.create_agent(tools=[python_tool(namespace, approve=approve)])
    handle = agent.chat(
        '@@call python {"code": "len(df)"}\n'
        '@@call python {"code": "df.drop(columns=[\\"city\\"], inplace=True)"}\n'
        f"{tag}"
    )
    text = handle.text(timeout=20)
    assert asked == ["len(df)", 'df.drop(columns=["city"], inplace=True)']
    results = [e for e in handle if isinstance(e, ToolResult)]
    assert results[0].result == {"value": "5"}
    assert results[1].error == "ToolError: the user declined to run this code"
    assert "declined" in text
    assert "city" in namespace["df"].columns


def test_a_wrong_argument_names_the_tool_as_the_model_knows_it(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent(tools=data_tools({"df": sales()}))
    handle = agent.chat(f'@@call list_variables {{"name": "df"}}\n{tag}')
    handle.text(timeout=20)
    [result] = [e for e in handle if isinstance(e, ToolResult)]
    assert result.error is not None
    assert "list_variables() got an unexpected keyword argument 'name'" in result.error
    assert "_Reader" not in result.error
