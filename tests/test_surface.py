"""The public surface: what is exported, what importing costs, and that secrets never show."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

import agentrt_jupyter
from agentrt_jupyter import AgentConfig, AgentRuntime, BackendError, RuntimeConfig
from agentrt_jupyter.server.process import LocalServer

from .conftest import runtime_config


def test_every_exported_name_resolves() -> None:
    for name in agentrt_jupyter.__all__:
        assert getattr(agentrt_jupyter, name) is not None, name
    with pytest.raises(AttributeError):
        agentrt_jupyter.no_such_name  # noqa: B018


def test_every_error_is_an_agent_error() -> None:
    from agentrt_jupyter import errors

    for name in dir(errors):
        value = getattr(errors, name)
        if (
            isinstance(value, type)
            and issubclass(value, Exception)
            and not issubclass(value, Warning)
            and value.__module__ == errors.__name__
        ):
            assert issubclass(value, errors.AgentError), name
            assert name in agentrt_jupyter.__all__, name


def test_importing_the_package_is_light() -> None:
    code = (
        "import sys, agentrt_jupyter;"
        "from agentrt_jupyter import AgentRuntime, RuntimeConfig;"
        "heavy = [m for m in ('google.genai', 'pandas', 'IPython', 'aiohttp', 'ipywidgets')"
        " if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_google_genai_is_imported_on_the_runtime_thread(server: LocalServer) -> None:
    code = f"""
import sys, threading, builtins
from agentrt_jupyter import AgentRuntime, RuntimeConfig
seen = []
real_import = builtins.__import__
def spy(name, *args, **kwargs):
    if name.startswith("google.genai") or name == "google" and args[2] and "genai" in args[2]:
        seen.append(threading.current_thread().name)
    return real_import(name, *args, **kwargs)
builtins.__import__ = spy
rt = AgentRuntime(RuntimeConfig(base_url={server.url!r}, api_key={server.token!r}, store_path=None))
assert "google.genai" not in sys.modules
rt.create_agent().chat("hi").text()
rt.shutdown()
print(sorted(set(seen)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['agentrt-runtime']"


SECRET = "AIzaSy-very-secret-key-0123456789"


def test_api_keys_never_show_in_reprs_errors_history_ledger_or_logs(
    server: LocalServer, caplog: pytest.LogCaptureFixture, tag: str
) -> None:
    caplog.set_level(logging.DEBUG)
    config = RuntimeConfig(api_key=SECRET, base_url=server.url, store_path=None)
    assert SECRET not in repr(config)
    agent_config = AgentConfig(api_key=SECRET, base_url=server.url, name="secretive")
    assert SECRET not in repr(agent_config)
    with AgentRuntime(config) as runtime:
        assert SECRET not in repr(runtime)
        agent = runtime.create_agent(agent_config)
        with pytest.raises(BackendError) as caught:
            agent.chat(f"hello {tag}").text(timeout=30)
        assert caught.value.code == 400
        seen = [
            str(caught.value),
            repr(caught.value),
            repr(agent.history()),
            repr(agent.ledger()),
            repr(runtime.agents()),
            repr(runtime.quota_registry.states()),
            caplog.text,
        ]
        for text in seen:
            assert SECRET not in text
    logged = json.dumps(server.requests())
    assert SECRET not in logged


def test_an_agent_can_use_its_own_key_and_endpoint(server: LocalServer, tag: str) -> None:
    with AgentRuntime(runtime_config(server, api_key="wrong-key")) as runtime:
        own = runtime.create_agent(api_key=server.token, base_url=server.url)
        assert own.chat(f"mine {tag}").text(timeout=10) == f"Echo: mine {tag}"
        default = runtime.create_agent()
        with pytest.raises(BackendError, match="API key not valid"):
            default.chat(f"theirs {tag}").text(timeout=30)
