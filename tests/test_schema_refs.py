"""A `$ref` that names nothing is the caller's mistake, refused before any call with
`InvalidConfig` naming the ref: in `json_schema` / `parse_reply` (so `--schema`) and in
`AgentConfig(response_schema=...)`; references that do resolve keep working."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from agentrt_jupyter import AgentConfig, AgentRuntime, FakeBackend, InvalidConfig, RuntimeConfig
from agentrt_jupyter.backends.base import ModelRequest
from agentrt_jupyter.schema import check_refs, json_schema, parse_reply

DEFS = {"Town": {"type": "string"}}


def dangling(where: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"city": {"$ref": where}},
        "$defs": DEFS,
    }


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        (dangling("#/$defs/City"), "$.properties.city.$ref: '#/$defs/City'"),
        (dangling("#/$defs/Town/extra"), "$.properties.city.$ref: '#/$defs/Town/extra'"),
        (
            {"type": "array", "items": {"anyOf": [{"type": "null"}, {"$ref": "#/nowhere"}]}},
            "$.items.anyOf[1].$ref: '#/nowhere'",
        ),
        ({"$ref": "#/definitions/A", "definitions": {}}, "$.$ref: '#/definitions/A'"),
        (
            {"type": "object", "properties": {"enum": {"$ref": "#/$defs/E"}}},
            "$.properties.enum.$ref: '#/$defs/E'",
        ),
    ],
)
def test_a_dangling_ref_is_refused_up_front_naming_it(schema: dict[str, Any], named: str) -> None:
    for check in (json_schema, lambda s: AgentConfig(response_schema=s), check_refs):
        with pytest.raises(InvalidConfig) as caught:
            check(schema)
        assert caught.value.field == "response_schema"
        assert f"{named} names nothing in the schema" in str(caught.value)
    with pytest.raises(InvalidConfig, match="names nothing"):
        parse_reply('{"city": "Oslo"}', schema)


def test_the_error_lists_what_the_schema_defines() -> None:
    with pytest.raises(InvalidConfig, match=r"defined: #/\$defs/Town$"):
        json_schema(dangling("#/$defs/City"))
    with pytest.raises(InvalidConfig, match=r"it has no \$defs$"):
        json_schema({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}})


@pytest.mark.parametrize(
    "where",
    ["#/$defs/Town", "#/properties/name", "#/anyOf/0", "#/$defs/a~1b", "#/$defs/t~0c"],
)
def test_a_ref_that_resolves_is_accepted_and_followed(where: str) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "city": {"$ref": where}},
        "anyOf": [{"type": "object"}],
        "$defs": {**DEFS, "a/b": {"type": "string"}, "t~c": {"type": "string"}},
    }
    assert json_schema(schema) is schema
    assert AgentConfig(response_schema=schema).response_schema == schema
    if where != "#/anyOf/0":
        assert parse_reply('{"city": "Oslo"}', schema) == {"city": "Oslo"}


def test_refs_inside_data_and_non_local_refs_are_not_checked_here() -> None:
    data = {"type": "object", "enum": [{"$ref": "#/nowhere"}], "const": {"$ref": "#/x"}}
    check_refs(data)
    remote = {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}
    assert AgentConfig(response_schema=remote).response_schema == remote  # the service's call


def test_a_pydantic_schema_with_nested_models_keeps_working() -> None:
    class Town(BaseModel):
        name: str

    class Trip(BaseModel):
        stops: list[Town]

    schema = json_schema(Trip)
    assert "$defs" in schema
    check_refs(schema)
    assert parse_reply('{"stops": [{"name": "Oslo"}]}', Trip) == Trip(stops=[Town(name="Oslo")])


def test_an_agent_with_a_dangling_ref_sends_nothing() -> None:
    requests: list[ModelRequest] = []

    def handler(request: ModelRequest) -> str:
        requests.append(request)
        return "{}"

    with AgentRuntime(
        RuntimeConfig(store_path=None), backend_factory=lambda endpoint: FakeBackend(handler)
    ) as runtime:
        with pytest.raises(InvalidConfig, match=r"'#/\$defs/City' names nothing"):
            runtime.create_agent(response_schema=dangling("#/$defs/City"))
        assert runtime.agents() == []
    assert requests == []
