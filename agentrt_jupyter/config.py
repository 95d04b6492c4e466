"""Validated configuration: `RuntimeConfig` for the runtime, `AgentConfig` for each agent.

Both are frozen dataclasses checked in `__post_init__`, so a bad value fails where it is
written, with `InvalidConfig` naming the field. API keys are kept out of every repr.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidConfig
from .tools import Tool, as_tool

Backend = Literal["auto", "gemini", "local", "scripted"]
BACKENDS: tuple[str, ...] = ("auto", "gemini", "local", "scripted")
API_VERSIONS: tuple[str, ...] = ("v1", "v1beta", "v1alpha")
DEFAULT_MODEL = "gemini-2.5-flash"
LOCAL_MODEL = "smollm2-135m-instruct"

ConfirmTool = Callable[[str, dict[str, Any]], "bool | Awaitable[bool]"]


def default_store_path() -> Path:
    """Where conversations are kept across kernel restarts ($AGENTRT_HOME overrides)."""
    home = os.environ.get("AGENTRT_HOME")
    base = Path(home) if home else Path.home() / ".local" / "share" / "agentrt-jupyter"
    return base / "conversations.sqlite3"


def env_api_key() -> str | None:
    """The key google-genai would use: GOOGLE_API_KEY, else GEMINI_API_KEY."""
    return os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY") or None


def _check_number(
    name: str, value: float | None, *, low: float, high: float = math.inf, integer: bool = False
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidConfig(f"must be a number, got {type(value).__name__}", field=name)
    if integer and not isinstance(value, int):
        raise InvalidConfig(f"must be an integer, got {value!r}", field=name)
    if not (low <= value <= high) or math.isnan(value):
        bound = f"between {low} and {high}" if high != math.inf else f"at least {low}"
        raise InvalidConfig(f"must be {bound}, got {value!r}", field=name)


def _check_optional_str(name: str, value: object, *, allow_empty: bool = False) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidConfig(f"must be a string, got {type(value).__name__}", field=name)
    if not allow_empty and not value.strip():
        raise InvalidConfig("must not be empty", field=name)


def _check_base_url(value: str | None) -> None:
    _check_optional_str("base_url", value)
    if value is not None and not value.startswith(("http://", "https://")):
        raise InvalidConfig(f"must start with http:// or https://, got {value!r}", field="base_url")


def _check_api_version(value: str | None) -> None:
    if value is not None and value not in API_VERSIONS:
        raise InvalidConfig(f"must be one of {API_VERSIONS}, got {value!r}", field="api_version")


def _masked(key: str | None) -> str:
    return "None" if key is None else "'***'"


@dataclass(frozen=True, repr=False)
class RuntimeConfig:
    """How the runtime reaches a model and where it keeps conversations.

    `backend="auto"` uses Gemini when an API key is configured (here or in
    GOOGLE_API_KEY / GEMINI_API_KEY) and otherwise starts the local server with the
    embedded model. `base_url` points the SDK at any Gemini-compatible server.
    """

    backend: Backend = "auto"
    api_key: str | None = None
    base_url: str | None = None
    api_version: str | None = None
    default_model: str | None = None
    store_path: Path | None = field(default_factory=default_store_path)
    idle_chunk_timeout: float = 120.0
    http_retry_attempts: int = 3
    quota_max_retries: int = 3
    quota_max_wait: float = 120.0
    server_startup_timeout: float = 120.0
    thread_name: str = "agentrt-runtime"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidConfig(f"must be one of {BACKENDS}, got {self.backend!r}", field="backend")
        _check_optional_str("api_key", self.api_key)
        _check_base_url(self.base_url)
        _check_api_version(self.api_version)
        _check_optional_str("default_model", self.default_model)
        store_path: object = self.store_path
        if store_path is not None and not isinstance(store_path, str | Path):
            raise InvalidConfig("must be a path or None", field="store_path")
        if isinstance(store_path, str):
            object.__setattr__(self, "store_path", Path(store_path))
        _check_number("idle_chunk_timeout", self.idle_chunk_timeout, low=0.01)
        _check_number("http_retry_attempts", self.http_retry_attempts, low=1, high=20, integer=True)
        _check_number("quota_max_retries", self.quota_max_retries, low=0, high=100, integer=True)
        _check_number("quota_max_wait", self.quota_max_wait, low=0)
        _check_number("server_startup_timeout", self.server_startup_timeout, low=0.1)
        _check_optional_str("thread_name", self.thread_name)
        if self.backend == "gemini" and self.base_url is None and self.resolved_api_key() is None:
            raise InvalidConfig(
                "backend='gemini' needs an API key: pass api_key=..., set GOOGLE_API_KEY, "
                "or use backend='auto' to fall back to the embedded local model",
                field="api_key",
            )

    def resolved_api_key(self) -> str | None:
        return self.api_key or env_api_key()

    def resolved_backend(self) -> Literal["gemini", "local", "scripted"]:
        """What `auto` means right now: a key or a base URL means Gemini's protocol."""
        if self.backend != "auto":
            return self.backend
        if self.base_url is not None or self.resolved_api_key() is not None:
            return "gemini"
        return "local"

    def model_for(self, agent_model: str | None) -> str:
        if agent_model:
            return agent_model
        if self.default_model:
            return self.default_model
        return LOCAL_MODEL if self.resolved_backend() == "local" else DEFAULT_MODEL

    def __repr__(self) -> str:
        values = {f.name: repr(getattr(self, f.name)) for f in fields(self)}
        values["api_key"] = _masked(self.api_key)
        shown = ", ".join(f"{name}={value}" for name, value in values.items())
        return f"RuntimeConfig({shown})"


@dataclass(frozen=True, repr=False)
class AgentConfig:
    """One agent: its model, instructions, generation settings and tools.

    Tools are plain Python callables (sync or async); their declarations come from
    type hints and docstrings. `confirm_tool(name, args)` may veto each call.
    When the context passes `compaction_threshold` tokens, older turns are summarised.
    """

    model: str | None = None
    name: str | None = None
    system_instruction: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_output_tokens: int | None = None
    stop_sequences: Sequence[str] = ()
    seed: int | None = None
    thinking_budget: int | None = None
    include_thoughts: bool = False
    response_schema: Any = None
    response_mime_type: str | None = None
    tools: Sequence[Callable[..., Any] | Tool] = ()
    max_tool_steps: int = 8
    confirm_tool: ConfirmTool | None = None
    compaction_threshold: int | None = None
    api_key: str | None = None
    base_url: str | None = None
    api_version: str | None = None

    def __post_init__(self) -> None:
        _check_optional_str("model", self.model)
        if self.name is not None:
            _check_optional_str("name", self.name)
            if len(self.name) > 100 or any(c in self.name for c in "\n\r\t\0"):
                raise InvalidConfig(
                    "must be at most 100 characters with no control characters", field="name"
                )
        _check_optional_str("system_instruction", self.system_instruction, allow_empty=True)
        _check_number("temperature", self.temperature, low=0.0, high=2.0)
        _check_number("top_p", self.top_p, low=0.0, high=1.0)
        _check_number("top_k", self.top_k, low=1, integer=True)
        _check_number("max_output_tokens", self.max_output_tokens, low=1, integer=True)
        _check_number("seed", self.seed, low=-(2**31), high=2**31 - 1, integer=True)
        _check_number("thinking_budget", self.thinking_budget, low=-1, integer=True)
        _check_number("max_tool_steps", self.max_tool_steps, low=0, high=1000, integer=True)
        _check_number("compaction_threshold", self.compaction_threshold, low=64, integer=True)
        if not isinstance(self.include_thoughts, bool):
            raise InvalidConfig("must be True or False", field="include_thoughts")
        if isinstance(self.stop_sequences, str) or not all(
            isinstance(s, str) and s for s in self.stop_sequences
        ):
            raise InvalidConfig("must be a list of non-empty strings", field="stop_sequences")
        if len(self.stop_sequences) > 5:
            raise InvalidConfig("Gemini accepts at most 5 stop sequences", field="stop_sequences")
        object.__setattr__(self, "stop_sequences", tuple(self.stop_sequences))
        _check_optional_str("response_mime_type", self.response_mime_type)
        if self.response_schema is not None and not isinstance(self.response_schema, dict | type):
            raise InvalidConfig(
                "must be a JSON schema dict or a type (e.g. a pydantic model)",
                field="response_schema",
            )
        tools: object = self.tools
        if isinstance(tools, str | bytes) or not isinstance(tools, Sequence):
            raise InvalidConfig("must be a list of callables", field="tools")
        object.__setattr__(self, "tools", tuple(as_tool(t) for t in self.tools))
        names = [t.name for t in self.tools]  # type: ignore[union-attr]
        if len(set(names)) != len(names):
            raise InvalidConfig(f"tool names must be unique, got {names}", field="tools")
        if self.confirm_tool is not None and not callable(self.confirm_tool):
            raise InvalidConfig("must be a callable (name, args) -> bool", field="confirm_tool")
        _check_optional_str("api_key", self.api_key)
        _check_base_url(self.base_url)
        _check_api_version(self.api_version)

    @property
    def tool_list(self) -> tuple[Tool, ...]:
        return tuple(t for t in self.tools if isinstance(t, Tool))

    def with_changes(self, **changes: Any) -> AgentConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key":
                shown.append(f"api_key={_masked(value)}")
            elif value != f.default and not (f.name in {"tools", "stop_sequences"} and not value):
                shown.append(f"{f.name}={value!r}")
        return f"AgentConfig({', '.join(shown)})"
