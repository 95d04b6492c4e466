"""Shared fixtures: one scripted local server per session, a fresh runtime per test.

Tests share the server, so each marks its prompts with a unique tag and reads only its
own requests from the server's log.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agentrt_jupyter import AgentRuntime, RuntimeConfig
from agentrt_jupyter.backends.base import Backend
from agentrt_jupyter.server.process import LocalServer

from .postgres import postgres_cluster, postgres_database, postgres_url  # noqa: F401

if TYPE_CHECKING:
    from .reliability_helpers import Provider


@pytest.fixture(scope="session")
def server() -> Iterator[LocalServer]:
    with LocalServer.start("scripted") as running:
        yield running


def runtime_settings(server: LocalServer, **overrides: Any) -> dict[str, Any]:
    """A runtime's settings on the local server, no store unless `overrides` say: plain
    values, so a spawned kernel process can be given them."""
    settings: dict[str, Any] = {
        "base_url": server.url,
        "api_key": server.token,
        "api_version": "v1beta",
        "store_path": None,
        "idle_chunk_timeout": 20.0,
    }
    settings.update(overrides)
    return settings


def runtime_config(server: LocalServer, **overrides: Any) -> RuntimeConfig:
    return RuntimeConfig(**runtime_settings(server, **overrides))


def kernel_settings(server: LocalServer, store: Path | str | None) -> dict[str, Any]:
    """A kernel process's `runtime_settings`: its store an SQLite file, a PostgreSQL URL,
    or none."""
    database = isinstance(store, str)
    return runtime_settings(
        server, store_path=None if database else store, store_url=store if database else None
    )


@pytest.fixture
def rt(server: LocalServer) -> Iterator[AgentRuntime]:
    runtime = AgentRuntime(runtime_config(server))
    yield runtime
    runtime.shutdown(10.0)


@contextmanager
def every_agent_on(server: LocalServer, backend: Callable[[], Backend]) -> Iterator[AgentRuntime]:
    """A runtime whose every agent gets `backend()`, whatever its model: for what a
    backend itself refuses (an agent whose model names a provider is refused earlier, by
    the runtime). Shut down after."""
    with AgentRuntime(runtime_config(server), backend_factory=lambda endpoint: backend()) as made:
        yield made


def use_provider(name: str, server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> Provider:
    """Agents of a runtime from `Provider.config()` talk to `name` through its own SDK,
    on the local server: that SDK's environment variables point there for this test."""
    from .reliability_helpers import Provider  # it imports this module

    chosen = Provider(name, server)
    for variable, value in chosen.environment.items():
        monkeypatch.setenv(variable, value)
    return chosen


@pytest.fixture(params=("gemini", "openai", "anthropic"))
def provider(
    request: pytest.FixtureRequest, server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> Provider:
    """The provider this test's agents talk to (`use_provider`); parametrize with
    `indirect=["provider"]` to choose the providers."""
    return use_provider(request.param, server, monkeypatch)


@pytest.fixture
def tag() -> str:
    """A unique marker to put in prompts, to find this test's requests in the log."""
    return f"tag{uuid.uuid4().hex[:10]}"


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite3"


def requests_with(server: LocalServer, tag: str) -> list[dict[str, Any]]:
    """This test's model requests, oldest first."""
    return [r for r in server.requests() if tag in json.dumps(r.get("body"))]


def wait_finished(server: LocalServer, tag: str, count: int = 1) -> list[dict[str, Any]]:
    """Wait until `count` of this test's requests exist and all have finished."""
    requests = requests_with(server, tag)
    assert len(requests) >= count, requests
    return [server.wait_for_request(r["id"], timeout=10.0) for r in requests]


def assert_valid_conversation(contents: list[dict[str, Any]]) -> None:
    """What Gemini requires of `contents`: user first and last, roles alternate, and every
    function call answered by a function response in the next user message."""
    assert contents, "no contents"
    assert contents[0]["role"] == "user"
    assert contents[-1]["role"] == "user"
    for earlier, later in itertools.pairwise(contents):
        assert earlier["role"] != later["role"], contents
    for index, content in enumerate(contents):
        calls = [p["functionCall"] for p in content["parts"] if "functionCall" in p]
        if calls:
            following = contents[index + 1]["parts"]
            answered = {p["functionResponse"]["id"] for p in following if "functionResponse" in p}
            assert {c["id"] for c in calls} <= answered, contents
        for part in content["parts"]:
            assert part, f"empty part in {content}"


def wait_for_tagged(server: LocalServer, tag: str, timeout: float = 10.0) -> dict[str, Any]:
    """Wait (on the server's long-poll, not a sleep) until a request with `tag` arrives."""
    return server.wait_for_tagged(tag, timeout)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that really fills up (root only, else the test skips)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()!r}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
