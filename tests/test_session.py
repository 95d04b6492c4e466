"""The kernel session: one per shell, properties without side effects, `ensure_runtime`
the one call that starts a runtime."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError

from agentrt_jupyter import RuntimeConfig
from agentrt_jupyter.notebook.session import KernelSession


class Configs:
    """A session's `runtime_config`: a scripted runtime without a store; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> RuntimeConfig:
        self.calls += 1
        return RuntimeConfig(backend="scripted", store_path=None, namespace="test-session")


@pytest.fixture
def shell() -> Any:
    return types.SimpleNamespace(user_ns={})


@pytest.fixture
def session(shell: Any) -> Iterator[KernelSession]:
    session = KernelSession.of(shell)
    session.runtime_config = Configs()
    yield session
    session.shutdown_runtime()


def test_a_shell_has_one_session_kept_on_the_shell(shell: Any) -> None:
    first = KernelSession.of(shell)
    assert KernelSession.of(shell) is first
    assert KernelSession.of(types.SimpleNamespace(user_ns={})) is not first
    assert first.shell is shell and first.user_ns is shell.user_ns


def test_reading_the_session_starts_nothing(session: KernelSession) -> None:
    configs = session.runtime_config
    assert isinstance(configs, Configs)
    assert session.runtime is None
    assert session.agents is None
    assert session.tools is None
    assert "no runtime" in repr(session)
    assert configs.calls == 0  # no runtime was even configured


def test_ensure_runtime_starts_one_runtime_and_reuses_it(session: KernelSession) -> None:
    runtime = session.ensure_runtime()
    assert session.runtime is runtime and not runtime.closed
    assert session.ensure_runtime() is runtime
    agents = session.agents
    assert agents is not None and agents.runtime is runtime
    assert session.ensure_agents() is agents


def test_a_runtime_shut_down_behind_the_sessions_back_is_not_replaced_by_reading(
    session: KernelSession,
) -> None:
    runtime = session.ensure_runtime()
    runtime.shutdown()
    assert session.runtime is None and session.agents is None
    assert session.runtime is None  # still: reading twice replaces nothing
    replaced = session.ensure_runtime()
    assert replaced is not runtime and not replaced.closed


def test_the_names_cells_used_outlive_the_runtime(session: KernelSession) -> None:
    agents = session.ensure_agents()
    agents.ensure("kept", {"temperature": 0.5}, cache=False)
    session.shutdown_runtime()
    assert session.runtime is None and session.background == {}
    again = session.ensure_agents()
    assert again is not agents
    assert again.settings("kept") == {"temperature": 0.5}
    assert session.names("test-session") is again.used


def test_ensure_runtime_needs_the_magics_settings() -> None:
    session = KernelSession.of(None)
    assert KernelSession.of(None) is not session  # no shell to keep it on
    with pytest.raises(UsageError, match="not loaded"):
        session.ensure_runtime()
    assert session.runtime is None


def test_the_data_cells_tool_sources_follow_the_namespace(
    shell: Any, session: KernelSession
) -> None:
    tools = session.kernel_tools()
    assert session.tools is tools and session.kernel_tools() is tools
    assert tools.namespace is shell.user_ns
    shell.user_ns = {}  # e.g. %reset with a new namespace dict
    assert session.kernel_tools() is not tools


def test_only_ensure_runtime_replaces_a_runtime_whose_local_server_died(
    session: KernelSession, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = session.ensure_runtime()
    assert session.start_warm_up().result(timeout=60) is None
    server = runtime.local_server
    assert server is not None and server.running
    server.stop()
    assert session.runtime is runtime and not runtime.closed  # reading replaces nothing
    assert capsys.readouterr().out == ""
    replaced = session.ensure_runtime()
    assert "the local model server stopped; restarting it" in capsys.readouterr().out
    assert replaced is not runtime and runtime.closed and session.runtime is replaced
