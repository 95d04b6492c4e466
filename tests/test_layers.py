"""The layers point one way: the runtime reaches the batch engine only through the operator
registry the package root fills, and the batch engine reaches a view only through the
progress view the root registers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from agentrt_jupyter import AgentRuntime, InvalidConfig
from agentrt_jupyter import operators as ops
from agentrt_jupyter.batch import progress as batch_progress
from agentrt_jupyter.server.process import LocalServer

from .conftest import runtime_config


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator registry as the root left it, restored after the test."""
    monkeypatch.setattr(ops, "_loaders", dict(ops._loaders))
    monkeypatch.setattr(ops, "_loaded", dict(ops._loaded))


def test_an_operator_is_loaded_once_on_first_use(registry: None) -> None:
    loads: list[str] = []

    def load() -> ops.Operator:
        loads.append("loaded")
        return ops.Operator("shout", lambda rt, text: text.upper(), _upper_later)

    ops.provide("shout", load)
    assert loads == []
    assert ops.operator("shout").run(None, "hi") == "HI"
    assert ops.operator("shout").name == "shout"
    assert loads == ["loaded"]


async def _upper_later(runtime: object, text: str) -> str:
    return text.upper()


def test_an_operator_nothing_provides_is_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="no operator 'no-such'"):
        ops.operator("no-such")


def test_the_runtime_map_methods_call_the_provided_operator(
    registry: None, server: LocalServer
) -> None:
    calls: list[tuple[Any, ...]] = []

    def run(runtime: AgentRuntime, frame: Any, template: str, **options: Any) -> str:
        calls.append((runtime, frame, template, options))
        return "ran"

    async def arun(runtime: AgentRuntime, frame: Any, template: str, **options: Any) -> str:
        calls.append((runtime, frame, template, options))
        return "awaited"

    ops.provide("map", lambda: ops.Operator("map", run, arun))
    with AgentRuntime(runtime_config(server)) as rt:
        assert rt.map("frame", "{t}", concurrency=2) == "ran"
        assert asyncio.run(rt.aio.map("frame", "{t}")) == "awaited"
    assert calls == [(rt, "frame", "{t}", {"concurrency": 2}), (rt, "frame", "{t}", {})]


def test_without_a_default_runtime_operators_ask_for_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "_default_runtime", None)
    with pytest.raises(InvalidConfig, match="runtime="):
        ops.default_runtime()

    def no_notebook() -> object:
        raise RuntimeError("no IPython here")

    ops.set_default_runtime(no_notebook)
    with pytest.raises(InvalidConfig, match="%load_ext agentrt_jupyter"):
        ops.default_runtime()
    ops.set_default_runtime(lambda: "the notebook's")
    assert ops.default_runtime() == "the notebook's"


class FakeRun:
    total = 3
    progress: Any = None

    def __init__(self) -> None:
        self.listeners: list[Any] = []

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def cancel(self) -> None:
        pass


def test_a_map_shows_the_registered_view_as_progress_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shown: list[tuple[FakeRun, bool]] = []
    monkeypatch.setattr(batch_progress, "_view", None)
    batch_progress.set_progress_view(lambda run, *, always: shown.append((run, always)))
    run = FakeRun()
    for progress in (None, True, False):
        batch_progress.show(run, progress)
    assert shown == [(run, False), (run, True)]
    listener = print
    batch_progress.show(run, listener)
    assert run.listeners == [listener] and len(shown) == 2


def test_importing_the_runtime_loads_no_feature_above_it() -> None:
    code = (
        "import sys, agentrt_jupyter.runtime;"
        "print(sorted(m for m in sys.modules if m.startswith('agentrt_jupyter.')"
        " and m.split('.')[1] in ('batch', 'notebook')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # the root registers the pandas hook, the progress view and the cost gate: light batch
    # modules (the plan's estimate is the controller's, priced from the price table)
    assert out.stdout.split() == [
        "['agentrt_jupyter.batch',",
        "'agentrt_jupyter.batch.controller',",
        "'agentrt_jupyter.batch.explain',",
        "'agentrt_jupyter.batch.hook',",
        "'agentrt_jupyter.batch.prices',",
        "'agentrt_jupyter.batch.progress']",
    ]
