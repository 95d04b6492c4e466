"""Structured output: every schema kind requested, parsed and checked; DataFrames of results."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
from typing import Any, Literal, NotRequired, TypedDict

import pandas as pd
import pydantic
import pytest
import typing_extensions

from agentrt_jupyter import AgentRuntime, InvalidConfig, ReplyInvalid, TurnError
from agentrt_jupyter.schema import json_schema, parse_reply, to_frame
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with


class Size(enum.Enum):
    SMALL = "small"
    LARGE = "large"


class Item(pydantic.BaseModel):
    name: str
    price: float
    quantity: int | None = None
    size: Size = Size.SMALL


@dataclasses.dataclass
class Visit:
    city: str
    when: datetime.datetime
    nights: int = 1


class Tag(TypedDict):
    label: str


class Note(TypedDict):
    """A typing.TypedDict, which pydantic refuses before Python 3.12 unless rebuilt."""

    title: str
    tags: list[Tag]
    stars: NotRequired[int]


class ModernNote(typing_extensions.TypedDict):
    title: str
    stars: typing_extensions.NotRequired[int]


CITY = {
    "title": "City",
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "population": {"type": "integer", "minimum": 0},
        "kind": {"enum": ["capital", "town"]},
        "coast": {"type": "boolean", "nullable": True},
        "districts": {"type": "array", "items": {"$ref": "#/$defs/District"}, "maxItems": 3},
    },
    "required": ["name", "population"],
    "additionalProperties": False,
    "$defs": {"District": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
}


def test_json_schema_of_each_kind_names_its_fields() -> None:
    kinds: list[tuple[Any, set[str], set[str]]] = [
        (Item, {"name", "price", "quantity", "size"}, {"name", "price"}),
        (Visit, {"city", "when", "nights"}, {"city", "when"}),
        (Note, {"title", "tags", "stars"}, {"title", "tags"}),
        (ModernNote, {"title", "stars"}, {"title"}),
        (CITY, {"name", "population", "kind", "coast", "districts"}, {"name", "population"}),
    ]
    for schema, fields, required in kinds:
        made = json_schema(schema)
        json.dumps(made)
        assert made["type"] == "object"
        assert set(made["properties"]) == fields, schema
        assert set(made["required"]) == required, schema
    listed = json_schema(list[Item])
    assert listed["type"] == "array"
    assert listed["items"] == {"$ref": "#/$defs/Item"} and "Item" in listed["$defs"]


@pytest.mark.parametrize(
    "bad",
    [
        42,
        "Item",
        float,
        list[int],
        dict[str, Item],
        {"foo": 1},
        {"type": "OBJECT"},
        {"type": "object", "properties": []},
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]},
        {"type": "array", "items": "string"},
        {"anyOf": []},
        {"$ref": "https://example.com/schema.json"},
        {"type": "number", "maximum": float("nan")},
    ],
)
def test_what_is_not_a_schema_is_refused_saying_why(bad: Any) -> None:
    with pytest.raises(InvalidConfig) as caught:
        json_schema(bad)
    assert caught.value.field == "response_schema"
    with pytest.raises(InvalidConfig):
        parse_reply("{}", bad)


def test_an_uppercase_type_gets_a_hint() -> None:
    with pytest.raises(InvalidConfig, match="JSON Schema writes 'object'"):
        json_schema({"type": "OBJECT", "properties": {}})


def test_every_kind_round_trips_through_json() -> None:
    item = Item(name="lamp", price=12.5, quantity=2, size=Size.LARGE)
    assert parse_reply(item.model_dump_json(), Item) == item
    visit = Visit("Lyon", datetime.datetime(2024, 5, 1, 9, 30), 3)
    text = json.dumps({**dataclasses.asdict(visit), "when": visit.when.isoformat()})
    assert parse_reply(text, Visit) == visit
    note: Note = {"title": "t", "tags": [{"label": "a"}], "stars": 4}
    assert parse_reply(json.dumps(note), Note) == note
    assert parse_reply('{"title": "x"}', ModernNote) == {"title": "x"}
    items = [item, Item(name="cup", price=3)]
    reply = json.dumps([i.model_dump(mode="json") for i in items])
    assert parse_reply(reply, list[Item]) == items
    city = {"name": "Oslo", "population": 700000, "kind": "capital", "coast": None}
    assert parse_reply(json.dumps(city), CITY) == city


def test_a_fenced_reply_is_accepted() -> None:
    text = '```json\n{"name": "lamp", "price": 1}\n```'
    assert parse_reply(text, Item) == Item(name="lamp", price=1)
    assert parse_reply('  \n```\n{"title": "x"}\n```\n', ModernNote) == {"title": "x"}


@pytest.mark.parametrize(
    ("schema", "text", "problem"),
    [
        (Item, "", "empty"),
        (Item, "The lamp costs 12 euros.", "not JSON"),
        (Item, '{"name": "lamp", "price": 1', "not JSON"),
        (Item, '{"name": "lamp"}', "price: Field required"),
        (Item, '{"name": "lamp", "price": "cheap"}', "price: Input should be a valid number"),
        (Item, '{"name": "lamp", "price": 1, "size": "huge"}', "size"),
        (Visit, '{"city": "Lyon", "when": "someday"}', "when"),
        (Note, '{"title": "t", "tags": [{"name": "a"}]}', "tags.0.label: Field required"),
        (list[Item], '{"name": "lamp", "price": 1}', "list"),
        (CITY, '{"name": "Oslo"}', "$.population is required"),
        (CITY, '{"name": "", "population": 1}', "minLength"),
        (CITY, '{"name": "Oslo", "population": -1}', "minimum=0"),
        (CITY, '{"name": "Oslo", "population": 1.5}', "should be integer"),
        (CITY, '{"name": "Oslo", "population": true}', "should be integer, got boolean"),
        (CITY, '{"name": "Oslo", "population": 1, "kind": "city"}', "not one of"),
        (CITY, '{"name": "Oslo", "population": 1, "mayor": "x"}', "$.mayor is not a field"),
        (CITY, '{"name": "Oslo", "population": 1, "districts": [1, 2, 3, 4]}', "maxItems"),
        (CITY, '{"name": "Oslo", "population": 1, "districts": [1.5]}', "anyOf"),
        (CITY, "[1, 2]", "should be object"),
    ],
)
def test_an_invalid_reply_raises_reply_invalid_with_the_raw_text(
    schema: Any, text: str, problem: str
) -> None:
    with pytest.raises(ReplyInvalid) as caught:
        parse_reply(text, schema)
    error = caught.value
    assert isinstance(error, TurnError)
    assert error.raw_text == text and error.partial_text == text
    assert problem in error.problem, error.problem
    assert problem in str(error)


def test_the_dict_checker_follows_refs_and_accepts_integral_floats() -> None:
    schema = {
        "type": "array",
        "items": {"$ref": "#/$defs/P"},
        "$defs": {"P": {"type": "object", "properties": {"n": {"type": "integer"}}}},
    }
    assert parse_reply('[{"n": 1}, {"n": 2.0}]', schema) == [{"n": 1}, {"n": 2.0}]
    with pytest.raises(ReplyInvalid, match=r"\$\[1\]\.n should be integer"):
        parse_reply('[{"n": 1}, {"n": "2"}]', schema)
    broken = {"$ref": "#/$defs/Missing"}
    with pytest.raises(InvalidConfig, match="names nothing"):  # the caller's, before a call
        parse_reply("{}", broken)


def test_to_frame_gives_nullable_dtypes_in_field_order() -> None:
    items = parse_reply(
        '[{"name": "lamp", "price": 12, "quantity": 2, "size": "large"},'
        ' {"name": "cup", "price": 3.5}]',
        list[Item],
    )
    frame = to_frame(items)
    assert list(frame.columns) == ["name", "price", "quantity", "size"]
    assert {c: str(t) for c, t in frame.dtypes.items()} == {
        "name": "string",
        "price": "Float64",
        "quantity": "Int64",
        "size": "string",
    }
    assert frame["quantity"].isna().tolist() == [False, True]
    assert frame["size"].tolist() == ["large", "small"]
    assert frame["price"].tolist() == [12.0, 3.5]


def test_to_frame_of_dataclasses_dicts_and_single_values() -> None:
    visits = [
        Visit("Lyon", datetime.datetime(2024, 5, 1), 2),
        Visit("Oslo", datetime.datetime(2024, 6, 1)),
    ]
    frame = to_frame(visits)
    assert str(frame["when"].dtype).startswith("datetime64")
    assert str(frame["nights"].dtype) == "Int64"
    rows = to_frame([{"a": True, "b": [1, 2]}, {"a": None, "c": "x"}])
    assert list(rows.columns) == ["a", "b", "c"]
    assert str(rows["a"].dtype) == "boolean" and rows["b"].dtype == object
    one = to_frame(Item(name="lamp", price=1))
    assert one.shape == (1, 4)
    assert to_frame([1, 2, None])["value"].tolist()[:2] == [1, 2]


def test_to_frame_of_nothing_has_the_schemas_columns() -> None:
    assert list(to_frame([], list[Item]).columns) == ["name", "price", "quantity", "size"]
    assert list(to_frame([], Visit).columns) == ["city", "when", "nights"]
    assert list(to_frame([], CITY).columns)[:2] == ["name", "population"]
    assert to_frame([]).empty


def test_to_frame_keeps_python_ints_too_large_for_int64() -> None:
    frame = to_frame([{"n": 2**70}, {"n": 1}])
    assert frame["n"].tolist() == [2**70, 1]
    assert isinstance(frame, pd.DataFrame)


@pytest.mark.parametrize(
    ("schema", "reply", "expected"),
    [
        (
            list[Item],
            '[{"name": "lamp", "price": 12, "quantity": 2}, {"name": "cup", "price": 3}]',
            [Item(name="lamp", price=12, quantity=2), Item(name="cup", price=3)],
        ),
        (
            Note,
            '{"title": "trip", "tags": [{"label": "fun"}]}',
            {"title": "trip", "tags": [{"label": "fun"}]},
        ),
        (
            Visit,
            '{"city": "Lyon", "when": "2024-05-01T09:30:00", "nights": 2}',
            Visit("Lyon", datetime.datetime(2024, 5, 1, 9, 30), 2),
        ),
        (CITY, '{"name": "Oslo", "population": 700000}', {"name": "Oslo", "population": 700000}),
    ],
    ids=["list-of-models", "typeddict", "dataclass", "json-schema"],
)
def test_structured_output_end_to_end_through_the_runtime(
    rt: AgentRuntime, server: LocalServer, tag: str, schema: Any, reply: str, expected: Any
) -> None:
    agent = rt.create_agent(response_schema=json_schema(schema))
    text = agent.chat(f"@@reply {reply}\n{tag}").text(timeout=10)
    assert parse_reply(text, schema) == expected
    (request,) = requests_with(server, tag)
    generation = request["body"]["generationConfig"]
    assert generation["responseMimeType"] == "application/json"
    assert generation["responseJsonSchema"] == json_schema(schema)


def test_an_invalid_reply_through_the_runtime_keeps_the_raw_text(
    rt: AgentRuntime, tag: str
) -> None:
    agent = rt.create_agent(response_schema=json_schema(Item))
    text = agent.chat(f'@@reply {{"name": 42, "colour": "red"}}\n{tag}').text(timeout=10)
    with pytest.raises(ReplyInvalid) as caught:
        parse_reply(text, Item)
    assert caught.value.raw_text == '{"name": 42, "colour": "red"}'
    assert "name: Input should be a valid string" in caught.value.problem
    assert "price: Field required" in caught.value.problem


def test_a_literal_field_is_checked() -> None:
    class Verdict(pydantic.BaseModel):
        answer: Literal["yes", "no"]

    assert parse_reply('{"answer": "yes"}', Verdict).answer == "yes"
    with pytest.raises(ReplyInvalid, match="answer"):
        parse_reply('{"answer": "maybe"}', Verdict)


def test_a_schema_turn_that_calls_a_tool_leaves_no_sdk_warning(
    rt: AgentRuntime, tag: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK warns (once per process) when it reads the text of a function-call chunk to
    parse a schema; we read the parts ourselves, so the warning is dropped, not shown."""
    from google.genai import types

    def lookup(city: str) -> str:
        """The country of a city."""
        return "Norway"

    types._response_text_non_text_warning_logged = False  # the SDK's once-only flag
    agent = rt.create_agent(response_schema=json_schema(CITY), tools=[lookup])
    with caplog.at_level("WARNING"):
        handle = agent.chat(f'@@call lookup {{"city": "Oslo"}}\n{tag}')
        assert handle.result(timeout=10).tool_calls == 1
    assert types._response_text_non_text_warning_logged  # the SDK did try to warn
    assert not [r for r in caplog.records if "non-text parts" in r.getMessage()]
