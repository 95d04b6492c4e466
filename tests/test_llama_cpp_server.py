"""The OpenAI path against a server nobody here wrote: llama-cpp-python's own
OpenAI-compatible server (`python -m llama_cpp.server`, its `[server]` extra, our
`local-server` extra) serving the embedded model's GGUF (SmolLM2-135M).

One server for the module, started on a free port; tests read its output for what it saw
(`Disconnected from client` when a cancel closes the socket).

What this server can and cannot do, checked against llama-cpp-python 0.3.36:
- it streams Chat Completions but sends no usage, even with `stream_options` (the
  ledger's counts are then missing, never zeros);
- with the GGUF's own chat template it takes `tools` and ignores them; with
  `--chat_format chatml-function-calling` it refuses to stream a tool choice it makes
  itself ("Automatic streaming tool choice is not supported"), and our API has no
  `tool_choice` to force one. A 135M model would not pick a tool reliably anyway. So the
  tool test sends tools and a conversation that holds a tool call and its result (made on
  our local server, whose scripted engine calls the tool) and checks that llama.cpp takes
  both and answers: the tool-call reply round-trips through its parser.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentrt_jupyter import AgentRuntime, TextDelta, TurnCancelled, TurnResult
from agentrt_jupyter.backends.base import ModelRequest
from agentrt_jupyter.config import AgentConfig
from agentrt_jupyter.content import TextPart
from agentrt_jupyter.conversation import UNREPORTED, ConversationMessage
from agentrt_jupyter.server.process import LocalServer

from .conftest import runtime_config
from .machine import free_port, require
from .reliability_helpers import connections_to, settle

pytest.importorskip("llama_cpp")
pytest.importorskip("openai")
from agentrt_jupyter.backends.openai import OpenAIBackend
from agentrt_jupyter.server.engines.local import find_model_path

SERVER_EXTRA = ("fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
"""llama-cpp-python's [server] extra (ours: local-server); in CI the test must run."""

pytestmark = pytest.mark.local_model

MODEL = "openai:smollm2"
STARTUP_TIMEOUT = 40.0
LONG_STORY = "Write a very long story about a lighthouse keeper and a storm, in many chapters."


class LlamaServer:
    """`python -m llama_cpp.server` on a free port; its output lines kept as they come."""

    def __init__(self, model: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self.process = subprocess.Popen(
            [
                sys.executable,
                *("-m", "llama_cpp.server", "--model", str(model)),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--n_ctx", "2048", "--n_threads", "2", "--verbose", "False"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="llama-server-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for_line(self, text: str, timeout: float, since: int = 0) -> bool:
        """Until a line from `since` on contains `text` (False past `timeout` or at exit)."""

        def seen() -> bool:
            return any(text in line for line in self.lines[since:]) or (
                self.process.poll() is not None
            )

        with self._seen:
            self._seen.wait_for(seen, timeout)
            return any(text in line for line in self.lines[since:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(10)


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    require(
        all(importlib.util.find_spec(name) is not None for name in SERVER_EXTRA),
        "llama-cpp-python's [server] extra: pip install 'agentrt-jupyter[local-server]'",
    )
    try:
        model = find_model_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    server = LlamaServer(model)
    try:
        started = server.wait_for_line("Uvicorn running on", STARTUP_TIMEOUT)
        assert started, "llama_cpp.server did not start:\n" + "\n".join(server.lines[-20:])
        with urllib.request.urlopen(f"{server.base_url}/models", timeout=10) as reply:
            assert reply.status == 200
        yield server
    finally:
        server.stop()


@pytest.fixture
def runtime(server: LocalServer) -> Iterator[AgentRuntime]:
    """Agents here bring their own model and base URL; the runtime's is the local server."""
    with AgentRuntime(runtime_config(server, idle_chunk_timeout=30.0)) as made:
        yield made


def on_llama(llama: LlamaServer, **settings: object) -> dict[str, object]:
    """An agent's settings for llama.cpp's server: it takes any key."""
    return {"model": MODEL, "base_url": llama.base_url, "api_key": "none", **settings}


def test_a_reply_streams_in_several_deltas_and_one_ledger_row(
    runtime: AgentRuntime, llama: LlamaServer
) -> None:
    agent = runtime.create_agent(**on_llama(llama, max_output_tokens=24, temperature=0.0))
    handle = agent.chat("Say hello to the lighthouse keeper.")

    deltas = [e.text for e in handle if isinstance(e, TextDelta)]
    result = handle.result(timeout=30)

    assert isinstance(result, TurnResult) and result.text.strip()
    assert len(deltas) > 1 and "".join(deltas) == result.text
    (row,) = agent.ledger()
    assert (row.provider, row.model, row.status) == ("openai", "smollm2", "ok")
    assert row.finish_reason in ("STOP", "MAX_TOKENS")
    # llama.cpp's server sends no usage in a stream: the counts are missing, never zeros
    assert row.usage == UNREPORTED and result.usage.total_tokens is None


def test_the_stream_carries_no_usage_and_the_backend_reports_none(llama: LlamaServer) -> None:
    """llama.cpp's server sends no usage in a stream even when asked; the backend passes
    that on as no usage (None), never as counts of zero."""

    async def usages() -> list[object]:
        backend = OpenAIBackend(api_key="none", base_url=llama.base_url)
        question = ConversationMessage("user", (TextPart("Name one colour."),), turn=1)
        config = AgentConfig(max_output_tokens=8)
        request = ModelRequest("smollm2", [question], None, config)
        try:
            return [chunk.usage async for chunk in backend.stream(request)]
        finally:
            await backend.aclose()

    seen = asyncio.run(usages())

    assert seen and all(usage is None for usage in seen), seen


def test_cancel_mid_stream_closes_the_socket_and_the_server_sees_the_disconnect(
    runtime: AgentRuntime, llama: LlamaServer
) -> None:
    agent = runtime.create_agent(**on_llama(llama, max_output_tokens=1500))
    since = len(llama.lines)
    handle = agent.chat(LONG_STORY)
    first = next(e for e in handle if isinstance(e, TextDelta))
    assert first.text

    started = time.monotonic()
    handle.cancel()

    outcome = settle(handle, 10.0)
    assert isinstance(outcome, TurnCancelled), outcome
    assert llama.wait_for_line("Disconnected from client", 15.0, since), llama.lines[since:]
    assert time.monotonic() - started < 15.0
    assert connections_to(llama.port) == 0
    assert agent.ledger()[-1].status == "cancelled"


def test_tools_are_sent_and_a_tool_call_with_its_result_round_trips(
    runtime: AgentRuntime, server: LocalServer, llama: LlamaServer, tag: str
) -> None:
    def lookup(word: str) -> str:
        """Look a word up in the dictionary."""
        return f"{word} is a small domestic animal"

    agent = runtime.create_agent(
        model=MODEL, base_url=server.openai_base_url, api_key=server.token, tools=[lookup]
    )
    called = agent.chat(f'@@call lookup {{"word": "cat"}}\n{tag}').text(timeout=20)
    assert called.startswith("Tool results: ")
    agent.reconfigure(base_url=llama.base_url, api_key="none", max_output_tokens=24)

    answer = agent.chat("What did the lookup say about cats? Answer briefly.").result(timeout=60)

    assert answer.text.strip()
    rows = [(e.status, e.model) for e in agent.ledger()]
    assert rows == [("ok", "smollm2")] * 3
    roles = [m.role for m in agent.history()]
    assert roles == ["user", "model", "user", "model", "user", "model"]
