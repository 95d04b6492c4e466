"""What a `%%agent` flag names in the namespace is read before anything runs, and a
mistake there is a `UsageError` naming it: a property that raises anything (SystemExit
included) while `--tools a.b` is looked up, a `--schema` whose `$ref` names nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.shell_helpers import module_shell, run, usage_error

DEFINITIONS = '''
import sys

def weather(city: str) -> dict:
    """The weather in a city."""
    return {"city": city}

class Toolbox:
    @property
    def exits(self):
        sys.exit(3)

    @property
    def breaks(self):
        raise GeneratorExit

    @property
    def fails(self):
        raise ValueError("not today")

    weather = staticmethod(weather)

box = Toolbox()
DANGLING = {
    "type": "object",
    "properties": {"city": {"$ref": "#/$defs/City"}},
    "$defs": {"Town": {"type": "string"}},
}
'''


ip = module_shell(DEFINITIONS)


@pytest.mark.parametrize(
    ("name", "raised"),
    [("exits", "SystemExit"), ("breaks", "GeneratorExit"), ("fails", "ValueError")],
)
def test_a_property_raising_anything_during_the_tools_lookup_is_a_usage_error_naming_it(
    ip: Any, name: str, raised: str
) -> None:
    error = usage_error(ip, f"%%agent --tools box.{name}\nhello")
    assert f"--tools: reading box.{name} raised {raised}" in error
    assert run(ip, "%%agent --tools box.weather\n@@reply fine\nhello") is None


def test_a_missing_attribute_still_says_it_does_not_exist(ip: Any) -> None:
    assert "--tools: box.nope does not exist" in usage_error(ip, "%%agent --tools box.nope\nhello")


def test_a_schema_whose_ref_names_nothing_is_refused_before_the_call(ip: Any) -> None:
    error = usage_error(ip, "%%agent --schema DANGLING --out never_set\n@@reply {}\nhello")
    assert "$.properties.city.$ref: '#/$defs/City' names nothing" in error
    assert "defined: #/$defs/Town" in str(error)
    assert "never_set" not in ip.user_ns
