"""MCP servers as tool sources: a real server over stdio (and HTTP), real turns, bad days."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentrt_jupyter import (
    AgentRuntime,
    InvalidConfig,
    McpServerError,
    StoreError,
    ToolResult,
    TurnCancelled,
    WrongThread,
)
from agentrt_jupyter.mcp_tools import (
    McpServerSpec,
    McpSource,
    add_server,
    close_source,
    declared_servers,
    load_tools,
    remove_server,
    server_spec,
    settings_path,
)
from agentrt_jupyter.server.process import LocalServer
from agentrt_jupyter.tools import Tool, tool_from_schema

from .conftest import assert_valid_conversation, requests_with, runtime_config

SERVER_SCRIPT = str(Path(__file__).with_name("mcp_server.py"))
SECRET = "s3cr3t-token-value"
SPEC = McpServerSpec(command=sys.executable, args=(SERVER_SCRIPT,), env={"TEST_SECRET": SECRET})


@pytest.fixture(scope="module")
def shared_rt(server: LocalServer) -> Iterator[AgentRuntime]:
    """One runtime for the tests that leave the server running (each server costs ~1 s)."""
    runtime = AgentRuntime(runtime_config(server))
    yield runtime
    runtime.shutdown(10.0)


@pytest.fixture(scope="module")
def shared(shared_rt: AgentRuntime) -> Iterator[McpSource]:
    opened = McpSource("test", SPEC, call_timeout=20.0)
    yield opened
    close_source(opened, shared_rt, timeout=30)


@pytest.fixture
def source(rt: AgentRuntime) -> Iterator[McpSource]:
    """A source of its own, for a test that breaks or closes its server."""
    opened = McpSource("test", SPEC, call_timeout=20.0)
    yield opened
    close_source(opened, rt, timeout=30)


def chat_result(agent: Any, prompt: str) -> ToolResult:
    handle = agent.chat(prompt)
    handle.text(timeout=30)
    (result,) = [e for e in handle if isinstance(e, ToolResult)]
    return result


def test_tools_are_listed_with_the_servers_declarations(
    shared_rt: AgentRuntime, shared: McpSource
) -> None:
    tools = {t.name: t for t in load_tools(shared, shared_rt, timeout=30)}
    assert set(tools) == {"add", "environment", "fail", "picture", "die", "hang", "wait_connected"}
    add = tools["add"]
    assert add.is_async and add.description == "Add two integers."
    assert add.parameters["type"] == "object" and add.parameters["required"] == ["a", "b"]
    assert add.parameters["properties"]["a"]["type"] == "integer"
    assert shared.connected
    assert SECRET not in repr(shared) and "TEST_SECRET" in repr(shared)


def test_a_tool_is_called_through_a_real_turn(
    shared_rt: AgentRuntime, server: LocalServer, shared: McpSource, tag: str
) -> None:
    agent = shared_rt.create_agent(tools=load_tools(shared, shared_rt, timeout=30))
    handle = agent.chat(
        f'@@call add {{"a": 2, "b": 40}}\n@@call environment {{"name": "TEST_SECRET"}}\n{tag}'
    )
    text = handle.text(timeout=30)
    results = [(e.name, e.result, e.error) for e in handle if isinstance(e, ToolResult)]
    assert results == [("add", {"result": 42}, None), ("environment", {"result": SECRET}, None)]
    assert text.startswith("Tool results: ") and '"add":{"result":42}' in text
    first, second = requests_with(server, tag)
    declared = {d["name"]: d for d in first["body"]["tools"][0]["functionDeclarations"]}
    schema = (
        declared["add"].get("parametersJsonSchema") or declared["add"]["parameters_json_schema"]
    )
    assert (
        schema["required"] == ["a", "b"] and declared["add"]["description"] == "Add two integers."
    )
    assert_valid_conversation(second["body"]["contents"])


def test_errors_of_the_tool_reach_the_model(
    shared_rt: AgentRuntime, shared: McpSource, tag: str
) -> None:
    agent = shared_rt.create_agent(tools=load_tools(shared, shared_rt, timeout=30))
    failed = chat_result(agent, f'@@call fail {{"message": "no such city"}}\n{tag}')
    assert failed.error is not None and failed.error.startswith("ToolError: ")
    assert "no such city" in failed.error
    wrong = chat_result(agent, f'@@call add {{"a": "two"}}\n{tag}')
    assert wrong.error is not None and "validation error" in wrong.error
    picture = chat_result(agent, f"@@call picture {{}}\n{tag}")
    assert picture.error is None
    caption, image = picture.result["content"]
    assert caption == "a red dot"
    assert image["type"] == "image" and image["mime_type"] == "image/png"
    assert image["data"].endswith(" bytes, not shown>")


def test_a_server_that_exits_mid_session_is_a_tool_error_and_comes_back(
    rt: AgentRuntime, server: LocalServer, source: McpSource, tag: str
) -> None:
    agent = rt.create_agent(tools=load_tools(source, rt, timeout=30))
    died = chat_result(agent, f"@@call die {{}}\n{tag}")
    assert died.error is not None and died.error.startswith("McpServerError: MCP server 'test'")
    assert "connection closed during tool 'die'" in died.error
    assert "the test server exits on request" in died.error  # the end of its stderr
    again = chat_result(agent, f'@@call add {{"a": 1, "b": 1}}\n{tag}')
    assert again.result == {"result": 2}
    assert_valid_conversation(requests_with(server, tag)[-1]["body"]["contents"])


def test_a_server_that_hangs_is_cut_off_by_the_call_timeout(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    hanging = McpSource("hangs", SPEC, call_timeout=1.0)
    try:
        agent = rt.create_agent(tools=load_tools(hanging, rt, timeout=30))
        hung = chat_result(agent, f"@@call hang {{}}\n{tag}")
        assert hung.error is not None and "got no answer within 1 s (call_timeout)" in hung.error
        assert not hanging.connected
        again = chat_result(agent, f'@@call add {{"a": 2, "b": 2}}\n{tag}')
        assert again.result == {"result": 4}
        assert_valid_conversation(requests_with(server, tag)[-1]["body"]["contents"])
    finally:
        close_source(hanging, rt, timeout=30)


def test_cancel_during_an_mcp_call_ends_the_turn_and_keeps_the_session(
    shared_rt: AgentRuntime, server: LocalServer, shared: McpSource, tag: str
) -> None:
    agent = shared_rt.create_agent(tools=load_tools(shared, shared_rt, timeout=30))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(30)
        port = listener.getsockname()[1]
        handle = agent.chat(f'@@call wait_connected {{"port": {port}}}\n{tag}')
        connection, _ = listener.accept()  # the server is running the call now
        with connection:
            assert connection.recv(16) == b"running\n"
            handle.cancel()
            with pytest.raises(TurnCancelled):
                handle.text(timeout=10)
    assert agent.history()[-1].status == "cancelled"
    assert shared.connected
    after = chat_result(agent, f'@@call add {{"a": 3, "b": 4}}\n{tag}')
    assert after.result == {"result": 7}
    assert_valid_conversation(requests_with(server, tag)[-1]["body"]["contents"])


def test_a_server_that_does_not_start_says_why(rt: AgentRuntime) -> None:
    missing = McpSource("missing", McpServerSpec(command="/nonexistent/mcp-server"))
    with pytest.raises(McpServerError, match="MCP server 'missing': could not be reached"):
        load_tools(missing, rt, timeout=30)
    script = "import sys; print('bad configuration: no API key', file=sys.stderr); sys.exit(2)"
    broken = McpSource("broken", McpServerSpec(command=sys.executable, args=("-c", script)))
    with pytest.raises(McpServerError, match="stderr ends with: bad configuration: no API key"):
        load_tools(broken, rt, timeout=30)
    silent = McpSource(
        "silent",
        McpServerSpec(command=sys.executable, args=("-c", "import time; time.sleep(600)")),
        start_timeout=1.0,
    )
    with pytest.raises(McpServerError, match=r"did not start within 1 s \(start_timeout\)"):
        load_tools(silent, rt, timeout=30)
    for each in (missing, broken, silent):
        close_source(each, rt, timeout=30)
        assert not each.connected


def test_a_source_lives_on_the_loop_that_first_used_it(
    shared_rt: AgentRuntime, shared: McpSource
) -> None:
    load_tools(shared, shared_rt, timeout=30)
    with pytest.raises(WrongThread, match="lives on the loop that first used it"):
        asyncio.run(shared.list_tools())

    async def from_the_loop() -> None:
        with pytest.raises(WrongThread, match="would deadlock"):
            load_tools(shared, shared_rt, timeout=1)

    shared_rt.start_task_soon(from_the_loop).result(10)


def test_aclose_ends_the_session_and_a_later_call_reopens_even_on_another_runtime(
    server: LocalServer, rt: AgentRuntime, source: McpSource
) -> None:
    with AgentRuntime(runtime_config(server)) as first:  # shut down without aclose
        assert len(load_tools(source, first, timeout=30)) == 7
    tools = {t.name: t for t in load_tools(source, rt, timeout=30)}
    assert call_on(rt, tools["add"], a=1, b=2) == {"result": 3}
    close_source(source, rt, timeout=30)
    assert not source.connected
    assert call_on(rt, tools["add"], a=5, b=5) == {"result": 10}
    assert source.connected


def call_on(rt: AgentRuntime, tool: Tool, **arguments: Any) -> Any:
    return rt.start_task_soon(tool.fn, **arguments).result(30)


def test_streamable_http_servers_work_too(rt: AgentRuntime, tag: str) -> None:
    process = subprocess.Popen(
        [sys.executable, SERVER_SCRIPT, "--http"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("PORT "), line
        url = f"http://127.0.0.1:{int(line.split()[1])}/mcp"
        remote = McpSource("remote", McpServerSpec(url=url, headers={"Authorization": SECRET}))
        assert SECRET not in repr(remote)
        agent = rt.create_agent(tools=load_tools(remote, rt, timeout=30))
        assert chat_result(agent, f'@@call add {{"a": 20, "b": 3}}\n{tag}').result == {"result": 23}
        close_source(remote, rt, timeout=30)
    finally:
        process.kill()
        process.wait(10)


def test_declared_servers_are_kept_in_a_private_json_file(tmp_path: Path) -> None:
    path = tmp_path / "settings" / "mcp.json"
    assert declared_servers(path) == {}
    add_server("files", McpServerSpec.parse(["npx", "-y", "files-server", "/data"]), path)
    add_server("remote", McpServerSpec.parse(["https://example.com/mcp"]), path)
    add_server("files", McpServerSpec.parse(["npx", "files-server"], env={"TOKEN": SECRET}), path)
    servers = declared_servers(path)
    assert list(servers) == ["files", "remote"]
    assert servers["files"] == McpServerSpec(
        command="npx", args=("files-server",), env={"TOKEN": SECRET}
    )
    assert servers["remote"].url == "https://example.com/mcp"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text())["mcpServers"]["files"]["args"] == ["files-server"]
    assert SECRET not in repr(servers)
    assert remove_server("remote", path).url == "https://example.com/mcp"
    with pytest.raises(InvalidConfig, match=r"no MCP server named 'remote' .*declared: files"):
        server_spec("remote", path)
    with pytest.raises(InvalidConfig, match="declared: files"):
        remove_server("remote", path)
    assert settings_path().name == "mcp.json"


def test_other_clients_config_files_are_read_and_bad_ones_are_store_errors(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "fs": {"command": "npx", "args": ["-y", "fs"], "env": {"KEY": "v"}},
                    "web": {"type": "http", "url": "http://127.0.0.1:9/mcp"},
                }
            }
        )
    )
    assert set(declared_servers(path)) == {"fs", "web"}
    for broken in ("{not json", '{"mcpServers": []}', '{"mcpServers": {"x": {"cmd": "a"}}}'):
        path.write_text(broken)
        with pytest.raises(StoreError, match="MCP settings are not valid") as caught:
            declared_servers(path)
        assert caught.value.path == str(path)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "not both"),
        ({"command": "a", "url": "http://x"}, "not both"),
        ({"command": ""}, "non-empty"),
        ({"command": "a", "args": "b c"}, "list of strings"),
        ({"command": "a", "env": {"A": 1}}, "map strings to strings"),
        ({"url": "ftp://host/x"}, "http:// or https://"),
        ({"command": "a", "headers": {"A": "b"}}, "headers go with a URL"),
    ],
)
def test_bad_server_specs_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        McpServerSpec(**settings)


def test_bad_names_and_timeouts_are_refused() -> None:
    with pytest.raises(InvalidConfig, match="not a server name"):
        McpSource("has space", SPEC)
    with pytest.raises(InvalidConfig, match="call_timeout"):
        McpSource("ok", SPEC, call_timeout=0)
    with pytest.raises(InvalidConfig, match="give the server's command line"):
        McpServerSpec.parse([])


def test_tools_from_a_given_schema_are_checked() -> None:
    async def call(**arguments: Any) -> Any:
        return arguments

    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    tool = tool_from_schema("search.v2", "Search.", schema, call)
    assert tool.declaration()["parameters_json_schema"] == schema and tool.is_async
    assert tool_from_schema("t", "", {"properties": {}}, call).description == "t"
    with pytest.raises(InvalidConfig, match="must be 1-64 letters"):
        tool_from_schema("has space", "d", schema, call)
    with pytest.raises(InvalidConfig, match="of type 'object'"):
        tool_from_schema("t", "d", {"type": "string"}, call)
    with pytest.raises(InvalidConfig, match="plain JSON"):
        tool_from_schema("t", "d", {"type": "object", "default": float("nan")}, call)
    with pytest.raises(InvalidConfig, match="not callable"):
        tool_from_schema("t", "d", schema, "call")  # type: ignore[arg-type]
