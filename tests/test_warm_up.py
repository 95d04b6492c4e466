"""The warm-up at `%load_ext` and what a first plain cell imports (benchmark figure 5).

Each first-turn test runs in a fresh interpreter: in this one, earlier tests have long
imported the SDK and built its models.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from agentrt_jupyter.notebook import approval, datacell, magics
from agentrt_jupyter.server.process import LocalServer

FIRST_TURN = """
import json, sys
from agentrt_jupyter import AgentRuntime, RuntimeConfig

def unbuilt():
    from google.genai import _common, types

    return {
        name for name, value in vars(types).items()
        if isinstance(value, type) and issubclass(value, _common.BaseModel)
        and not value.__pydantic_complete__
    }

config = RuntimeConfig(base_url=sys.argv[1], api_key=sys.argv[2], api_version="v1beta",
                       store_path=None)
with AgentRuntime(config) as rt:
    imported_before = "google.genai" in sys.modules
    warmed = rt.start_warm_up().result(timeout=120)
    again = rt.start_warm_up().result(timeout=120)
    models = unbuilt()
    modules = set(sys.modules)
    reply = rt.create_agent().chat(sys.argv[3] + "\\n@@reply first words").result(timeout=60)
    print(json.dumps({
        "sdk_before_warm_up": imported_before, "results": [warmed, again], "text": reply.text,
        "imported": sorted(set(sys.modules) - modules), "built": sorted(models - unbuilt()),
    }))
"""

PLAIN_CELL = """
import sys
from traitlets.config import Config
from IPython.core.interactiveshell import InteractiveShell

config = Config()
config.AgentMagics.base_url = sys.argv[1]
ip = InteractiveShell.instance(config=config)
ip.run_line_magic("load_ext", "agentrt_jupyter")
DATACELL = "agentrt_jupyter.notebook.datacell"
seen = ["load", DATACELL in sys.modules]
ip.run_cell("%%agent plain\\n" + sys.argv[3] + "\\n@@reply plain words")
ip.run_line_magic("agent", "list")
seen += ["plain cell", DATACELL in sys.modules]
ip.run_line_magic("agent", "tools plain")
seen += ["%agent tools", DATACELL in sys.modules]
ip.run_line_magic("unload_ext", "agentrt_jupyter")
print("SEEN", *seen)
"""

SDK_PACKAGES = {"google", "aiohttp", "pydantic", "pydantic_core", "httpx", "httpx2", "httpcore2"}


def run_fresh(script: str, server: LocalServer, tag: str, home: Path) -> str:
    """`script` in a new interpreter, with the server's URL, token and `tag` as arguments."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRT_")}
    env.update(GOOGLE_API_KEY=server.token, AGENTRT_HOME=str(home))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), server.url, server.token, tag],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_after_the_warm_up_the_first_turn_imports_and_builds_nothing_of_the_sdk(
    server: LocalServer, tag: str, tmp_path: Path
) -> None:
    out: dict[str, Any] = json.loads(run_fresh(FIRST_TURN, server, tag, tmp_path).splitlines()[-1])
    assert out["sdk_before_warm_up"] is False
    assert out["results"] == [None, None]
    assert out["text"] == "first words"
    assert [m for m in out["imported"] if m.split(".")[0] in SDK_PACKAGES] == []
    assert out["built"] == []


def test_a_plain_cell_leaves_the_data_flags_module_unimported(
    server: LocalServer, tag: str, tmp_path: Path
) -> None:
    out = run_fresh(PLAIN_CELL, server, tag, tmp_path)
    assert "plain words" in out
    seen = out.split("SEEN", 1)[1].split()
    assert seen == ["load", "False", "plain", "cell", "False", "%agent", "tools", "True"]


def test_the_magics_name_the_data_flags_and_commands_datacell_handles() -> None:
    """The magics declare them without importing `datacell`: the same names and values."""
    assert set(magics.DATA_FLAGS) == {f.name for f in dataclasses.fields(datacell.DataOptions)}
    assert magics.APPROVAL_TIMEOUT == approval.APPROVAL_TIMEOUT
