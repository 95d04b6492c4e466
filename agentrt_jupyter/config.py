"""Validated configuration: `RuntimeConfig` for the runtime, `AgentConfig` for each agent.

Both are frozen dataclasses checked in `__post_init__`, so a bad value fails where it is
written, with `InvalidConfig` naming the field. Build them from untrusted settings with
`agent_config` / `runtime_config`: an unknown field is then an `InvalidConfig` too (with a
did-you-mean), not the dataclass's TypeError. API keys are kept out of every repr and error.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
MAX_MODEL_NAME = 200
MAX_AGENT_NAME = 100
API_KEY_VARIABLES = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
PROVIDERS: tuple[str, ...] = ("gemini", "vertex", "openai", "anthropic", "ollama")
"""The prefixes of `provider:model`; a bare model name is Gemini's."""
PROVIDER_VARIABLES: dict[str, tuple[str, str]] = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
    "vertex": ("GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION"),
}
"""The environment each provider's SDK reads: (key, base URL), for Vertex (project, location)."""
OLLAMA_BASE_URL = "http://localhost:11434/v1"
"""Ollama's OpenAI-compatible API at its default address."""
_INT32 = 2**31 - 1
_LONGEST_WAIT = 30 * 86400.0
"""Upper bound of every time setting (30 days): past it a number is a mistake, not a wait."""
_MODEL_NAME = re.compile(r"(?:models/|tunedModels/)?[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_OTHER_MODEL_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._:/@+-]*[A-Za-z0-9])?")
"""Names on OpenAI-compatible servers and Anthropic: 'qwen3:4b', 'meta-llama/Llama-3.1-8B'."""
_GOOGLE_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:_-]{0,99}")
_GOOGLE_LOCATION = re.compile(r"[a-z][a-z0-9-]{0,49}")
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*/[A-Za-z0-9][A-Za-z0-9.+-]*")

ConfirmTool = Callable[[str, dict[str, Any]], "bool | Awaitable[bool]"]


def default_store_path() -> Path:
    """Where conversations are kept across kernel restarts ($AGENTRT_HOME overrides)."""
    home = os.environ.get("AGENTRT_HOME")
    base = Path(home) if home else Path.home() / ".local" / "share" / "agentrt-jupyter"
    return base / "conversations.sqlite3"


def default_store_url() -> str | None:
    """A PostgreSQL store for a team, if the hub's spawner set one ($AGENTRT_STORE_URL)."""
    return os.environ.get("AGENTRT_STORE_URL", "").strip() or None


CACHE_SCOPES = ("user", "team")
"""Whose recorded replies a request may replay: the user's own, or the team's (shared)."""


def _check_store_url(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.startswith(("postgresql://", "postgres://")):
        shown = "a URL of another kind" if isinstance(value, str) else type(value).__name__
        raise InvalidConfig(
            f"must be a postgresql://user:password@host/database URL or None, got {shown}",
            field="store_url",
        )


def _check_cache_scope(value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if value not in CACHE_SCOPES:
        allowed = "'user', 'team' or None" if optional else "'user' or 'team'"
        raise InvalidConfig(f"must be {allowed}, got {value!r:.60}", field="cache_scope")


def _env_key() -> tuple[str, str] | None:
    """The variable google-genai would read the key from, and its value."""
    for variable in API_KEY_VARIABLES:
        value = os.environ.get(variable)
        if value:
            return variable, value
    return None


def env_api_key() -> str | None:
    """The key google-genai would use: GOOGLE_API_KEY, else GEMINI_API_KEY."""
    found = _env_key()
    return found[1] if found else None


def provider_environment(provider: str) -> tuple[str | None, str | None]:
    """What a provider's SDK reads from the environment: (key, base URL), for Vertex
    (project, location); (None, None) for a provider with none. A key is checked like a
    configured one, and the message names the variable, never the key."""
    variables = PROVIDER_VARIABLES.get(provider)
    if variables is None:
        return None, None
    first, second = (os.environ.get(variable) or None for variable in variables)
    if provider == "vertex":
        return first, second
    _check_api_key(first, source=f"${variables[0]}")
    try:
        _check_base_url(second)
    except InvalidConfig as exc:
        shown = str(exc).removeprefix("base_url: ")
        raise InvalidConfig(f"${variables[1]}: {shown}", field="base_url") from None
    return first, second


def _shown(value: str, limit: int = 60) -> str:
    """A value for an error message: its repr, cut short."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} chars)"


def _check_fields(kind: type, settings: Mapping[Any, Any]) -> None:
    """Unknown setting names are `InvalidConfig` naming the name, with a did-you-mean."""
    valid = [f.name for f in fields(kind)]
    for key in settings:
        if not isinstance(key, str):
            raise InvalidConfig(
                f"setting names are strings, got {type(key).__name__}", field=repr(key)[:60]
            )
        if key in valid:
            continue
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"the fields are {', '.join(valid)}"
        raise InvalidConfig(f"{kind.__name__} has no field {_shown(key)}: {hint}", field=key)


def _number_text(value: int | float) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    return str(value) if abs(value) < 10**18 else f"an integer of {value.bit_length()} bits"


def _check_number(
    name: str,
    value: object,
    *,
    low: float,
    high: float,
    integer: bool = False,
    optional: bool = True,
) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidConfig(f"must be a number, got {type(value).__name__}", field=name)
    if integer and not isinstance(value, int):
        raise InvalidConfig(f"must be an integer, got {value!r}", field=name)
    if not low <= value <= high:  # also NaN
        raise InvalidConfig(
            f"must be between {_number_text(low)} and {_number_text(high)}, "
            f"got {_number_text(value)}",
            field=name,
        )


def _check_optional_str(name: str, value: object, *, allow_empty: bool = False) -> str | None:
    """`value` if it is None or a string that can be sent, else `InvalidConfig`."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidConfig(f"must be a string, got {type(value).__name__}", field=name)
    if not allow_empty and not value.strip():
        raise InvalidConfig("must not be empty", field=name)
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidConfig(
            "contains an unpaired surrogate (text decoded wrongly?), which cannot be sent",
            field=name,
        ) from None
    return value


def split_model(model: str) -> tuple[str, str]:
    """The provider and the name sent to it: "openai:gpt-4.1-mini" -> ("openai",
    "gpt-4.1-mini"); a bare name is Gemini's. Assumes a validated name (`_check_model`)."""
    prefix, colon, name = model.partition(":")
    if colon and prefix in PROVIDERS:
        return prefix, name
    return "gemini", model


def provider_of(model: str | None) -> str:
    """The provider a (validated) model name picks; None (the default model) is Gemini's."""
    return "gemini" if model is None else split_model(model)[0]


def _check_model(name: str, value: object) -> None:
    """`provider:model` or a bare Gemini name, so a typo fails here, not at the turn."""
    value = _check_optional_str(name, value)
    if value is None:
        return
    prefix, colon, _ = value.partition(":")
    if colon and prefix not in PROVIDERS:
        raise InvalidConfig(
            f"{_shown(value)} names an unknown provider {_shown(prefix)}: the providers are "
            f"{', '.join(PROVIDERS)} (write 'ollama:{value}' for an Ollama model)",
            field=name,
        )
    provider, model = split_model(value)
    if provider in ("gemini", "vertex"):
        pattern, example = _MODEL_NAME, "'gemini-2.5-flash'"
    else:
        pattern, example = _OTHER_MODEL_NAME, f"'{provider}:{_EXAMPLES[provider]}'"
    if len(value) > MAX_MODEL_NAME or ".." in model or not pattern.fullmatch(model):
        raise InvalidConfig(
            f"{_shown(value)} is not a model name like {example}: letters, digits and "
            f"{_ALLOWED[pattern is _MODEL_NAME]}, at most {MAX_MODEL_NAME} characters",
            field=name,
        )


_EXAMPLES = {"openai": "gpt-4.1-mini", "anthropic": "claude-sonnet-4-5", "ollama": "qwen3:4b"}
_ALLOWED = {
    True: "'.', '-', '_', an optional 'models/' or 'tunedModels/' prefix, and a provider "
    "prefix like 'openai:'",
    False: "'.', '-', '_', ':', '/', '@', '+'",
}


def _check_api_key(value: object, source: str = "the key") -> None:
    """A key is printable ASCII without spaces; the message never shows the key."""
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidConfig(f"must be a string, got {type(value).__name__}", field="api_key")
    if not value:
        raise InvalidConfig(f"{source} is empty", field="api_key")
    for position, char in enumerate(value):
        if "!" <= char <= "~":
            continue
        if char.isspace():
            what = "a space or line break"
        elif char.isascii():
            what = "a control character"
        else:
            what = "a non-ASCII character"
        raise InvalidConfig(
            f"{source} contains {what} at position {position}: an API key is printable "
            "ASCII; check for a stray newline or space from copy-paste",
            field="api_key",
        )


def _check_base_url(value: object) -> None:
    value = _check_optional_str("base_url", value)
    if value is None:
        return
    shown = _shown(value)
    if not (value.isascii() and value.isprintable()) or any(c.isspace() for c in value):
        raise InvalidConfig(
            f"{shown} is not a URL: it has spaces, control or non-ASCII characters",
            field="base_url",
        )
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is what can fail
    except ValueError as exc:
        raise InvalidConfig(f"{shown} is not a URL ({exc})", field="base_url") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidConfig(f"must start with http:// or https://, got {shown}", field="base_url")
    if not parts.hostname:
        raise InvalidConfig(
            f"{shown} has no host: write it like 'http://127.0.0.1:8000'", field="base_url"
        )
    if "?" in value or "#" in value:
        raise InvalidConfig(
            f"{shown} is a base URL: leave out the ?query and #fragment", field="base_url"
        )


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        shown = _shown(value) if isinstance(value, str) else type(value).__name__
        raise InvalidConfig(f"must be one of {choices}, got {shown}", field=name)


def _check_api_version(value: object) -> None:
    if value is not None:
        _check_choice("api_version", value, API_VERSIONS)


def _check_google_name(name: str, value: object, pattern: re.Pattern[str], example: str) -> None:
    value = _check_optional_str(name, value)
    if value is not None and not pattern.fullmatch(value):
        raise InvalidConfig(
            f"{_shown(value)} is not a Google Cloud {name} like {example}", field=name
        )


def check_agent_name(value: object) -> None:
    """An agent name: a non-empty string of printable characters, at most 100 long."""
    _check_optional_str("name", value)
    if isinstance(value, str) and (len(value) > MAX_AGENT_NAME or not value.isprintable()):
        raise InvalidConfig(
            f"must be at most {MAX_AGENT_NAME} characters with no control characters",
            field="name",
        )


def _check_stop_sequences(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidConfig(
            f"must be a list of non-empty strings, got {type(value).__name__}",
            field="stop_sequences",
        )
    for item in value:
        if not isinstance(item, str) or not item:
            raise InvalidConfig("must be a list of non-empty strings", field="stop_sequences")
        _check_optional_str("stop_sequences", item, allow_empty=True)
    if len(value) > 5:
        raise InvalidConfig("Gemini accepts at most 5 stop sequences", field="stop_sequences")
    return tuple(value)


def _check_response_schema(value: object) -> dict[str, Any] | None:
    """The schema as the JSON-schema dict that is sent (and hashed by the reply cache).

    A pydantic model, dataclass, TypedDict or `list[...]` of them becomes its JSON schema
    here, so every kind reaches the service the same way."""
    if value is None:
        return None
    if not isinstance(value, dict):
        from .schema import json_schema  # pydantic only when a schema type is used

        return json_schema(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidConfig(
            f"the schema dict must be plain JSON ({exc})", field="response_schema"
        ) from None
    from .schema import check_refs

    check_refs(value)
    return value


def _check_tools(value: object) -> tuple[Tool, ...]:
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidConfig(
            f"must be a list of callables, got {type(value).__name__}", field="tools"
        )
    tools = tuple(as_tool(t) for t in value)
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidConfig(f"tool names must be unique, got {names}", field="tools")
    return tools


def redacted_url(url: str) -> str:
    """A store URL as shown: its password replaced by ***."""
    scheme, _, rest = url.partition("://")
    credentials, at, place = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{place}"


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
    store_url: str | None = field(default_factory=default_store_url)
    """A PostgreSQL store (`postgresql://...`; else $AGENTRT_STORE_URL): used instead of
    the SQLite file at `store_path` when set."""
    idle_chunk_timeout: float = 120.0
    http_retry_attempts: int = 3
    quota_max_retries: int = 3
    quota_max_wait: float = 120.0
    server_startup_timeout: float = 120.0
    thread_name: str = "agentrt-runtime"
    namespace: str = "default"
    """Where named agents' conversations live in the store (a notebook sets its own)."""
    reply_cache: bool = False
    """Replay a recorded reply for an identical request instead of calling the model."""
    cache_scope: Literal["user", "team"] = "user"
    """Whose recorded replies replay: the user's own, or the team's ("team": identical
    requests of every user of the store replay one reply; only replies are shared)."""
    max_tool_result_chars: int = 100_000
    """A tool result longer than this (as JSON) reaches the model truncated, with a note."""

    def __post_init__(self) -> None:
        _check_choice("backend", self.backend, BACKENDS)
        _check_api_key(self.api_key)
        _check_base_url(self.base_url)
        _check_api_version(self.api_version)
        _check_model("default_model", self.default_model)
        store_path: object = self.store_path
        if store_path is not None and not isinstance(store_path, str | Path):
            raise InvalidConfig(
                f"must be a path or None, got {type(store_path).__name__}", field="store_path"
            )
        if store_path is not None and (not str(store_path).strip() or "\0" in str(store_path)):
            raise InvalidConfig(
                "must be a file path (or None to keep nothing), got an empty path or a NUL "
                "character",
                field="store_path",
            )
        if isinstance(store_path, str):
            object.__setattr__(self, "store_path", Path(store_path))
        _check_store_url(self.store_url)
        _check_cache_scope(self.cache_scope, optional=False)
        for name, low, high, integer in (
            ("idle_chunk_timeout", 0.01, _LONGEST_WAIT, False),
            ("http_retry_attempts", 1, 20, True),
            ("quota_max_retries", 0, 100, True),
            ("quota_max_wait", 0, _LONGEST_WAIT, False),
            ("server_startup_timeout", 0.1, _LONGEST_WAIT, False),
            ("max_tool_result_chars", 1_000, 100_000_000, True),
        ):
            value = getattr(self, name)
            _check_number(name, value, low=low, high=high, integer=integer, optional=False)
        if self.thread_name is None:
            raise InvalidConfig("must be a string", field="thread_name")
        _check_optional_str("thread_name", self.thread_name)
        if not isinstance(self.namespace, str) or not self.namespace.strip():
            raise InvalidConfig("must be a non-empty string", field="namespace")
        if len(self.namespace) > 4096 or "\0" in self.namespace:
            raise InvalidConfig("must be at most 4096 characters, no NUL", field="namespace")
        if not isinstance(self.reply_cache, bool):
            raise InvalidConfig("must be True or False", field="reply_cache")
        if self.api_key is None and self.resolved_backend() == "gemini":
            found = _env_key()
            if found is not None:
                _check_api_key(found[1], source=f"${found[0]}")
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
        values["store_url"] = repr(self.store_url and redacted_url(self.store_url))
        shown = ", ".join(f"{name}={value}" for name, value in values.items())
        return f"RuntimeConfig({shown})"

    @property
    def store_location(self) -> str | Path | None:
        """Where conversations are kept: the PostgreSQL URL, else the SQLite file, else None."""
        return self.store_url if self.store_url is not None else self.store_path


@dataclass(frozen=True, repr=False)
class AgentConfig:
    """One agent: its model, instructions, generation settings and tools.

    Tools are plain Python callables (sync or async); their declarations come from
    type hints and docstrings. `confirm_tool(name, args)` is asked before each call,
    which runs only if it answers True.
    When the context passes `compaction_threshold` tokens, older turns are summarised.
    `stop_sequences=None` and `tools=None` mean none, like their empty defaults.
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
    project: str | None = None
    """Vertex AI only: the Google Cloud project (else $GOOGLE_CLOUD_PROJECT)."""
    location: str | None = None
    """Vertex AI only: the region, like 'us-central1' (else $GOOGLE_CLOUD_LOCATION)."""
    reply_cache: bool | None = None
    """Replay recorded replies for identical requests; None follows the runtime's setting."""
    cache_scope: Literal["user", "team"] | None = None
    """Whose recorded replies replay ("user" or "team"); None follows the runtime's setting."""
    tool_timeout: float | None = 300.0
    """Seconds one tool call may take; past it the call is abandoned and reported as an
    error to the model (None: no limit)."""
    logprobs: bool = False
    """Ask for the reply tokens' log probabilities (Gemini and Chat Completions; Anthropic
    gives none): `TurnResult.logprob` is then their mean."""

    def __post_init__(self) -> None:
        _check_model("model", self.model)
        check_agent_name(self.name)
        _check_optional_str("system_instruction", self.system_instruction, allow_empty=True)
        _check_number("temperature", self.temperature, low=0.0, high=2.0)
        _check_number("top_p", self.top_p, low=0.0, high=1.0)
        _check_number("top_k", self.top_k, low=1, high=_INT32, integer=True)
        _check_number("max_output_tokens", self.max_output_tokens, low=1, high=_INT32, integer=True)
        _check_number("seed", self.seed, low=-(2**31), high=_INT32, integer=True)
        _check_number("thinking_budget", self.thinking_budget, low=-1, high=_INT32, integer=True)
        _check_number(
            "max_tool_steps", self.max_tool_steps, low=0, high=1000, integer=True, optional=False
        )
        _check_number(
            "compaction_threshold", self.compaction_threshold, low=64, high=_INT32, integer=True
        )
        if not isinstance(self.include_thoughts, bool):
            raise InvalidConfig("must be True or False", field="include_thoughts")
        if not isinstance(self.logprobs, bool):
            raise InvalidConfig("must be True or False", field="logprobs")
        if self.logprobs and provider_of(self.model) == "anthropic":
            raise InvalidConfig("the anthropic provider gives no logprobs", field="logprobs")
        object.__setattr__(self, "stop_sequences", _check_stop_sequences(self.stop_sequences))
        _check_optional_str("response_mime_type", self.response_mime_type)
        mime = self.response_mime_type
        if mime is not None and not _MIME_TYPE.fullmatch(mime):
            raise InvalidConfig(
                f"{_shown(mime)} is not a MIME type like 'application/json'",
                field="response_mime_type",
            )
        object.__setattr__(self, "response_schema", _check_response_schema(self.response_schema))
        object.__setattr__(self, "tools", _check_tools(self.tools))
        if self.confirm_tool is not None and not callable(self.confirm_tool):
            raise InvalidConfig("must be a callable (name, args) -> bool", field="confirm_tool")
        if self.reply_cache is not None and not isinstance(self.reply_cache, bool):
            raise InvalidConfig("must be True, False or None", field="reply_cache")
        _check_cache_scope(self.cache_scope, optional=True)
        _check_number("tool_timeout", self.tool_timeout, low=0.001, high=_LONGEST_WAIT)
        _check_api_key(self.api_key)
        _check_base_url(self.base_url)
        _check_api_version(self.api_version)
        _check_google_name("project", self.project, _GOOGLE_PROJECT, "'my-project'")
        _check_google_name("location", self.location, _GOOGLE_LOCATION, "'us-central1'")

    @property
    def tool_list(self) -> tuple[Tool, ...]:
        return tuple(t for t in self.tools if isinstance(t, Tool))

    def with_changes(self, **changes: Any) -> AgentConfig:
        """A copy with some fields changed (validated again; unknown names are refused)."""
        _check_fields(AgentConfig, changes)
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


def agent_config(config: AgentConfig | None, settings: Mapping[str, Any]) -> AgentConfig:
    """`config` with `settings` changed, or `AgentConfig(**settings)` without one.

    The way in for settings from users: a `config` that is not an AgentConfig, an unknown
    setting and a wrong value are all `InvalidConfig` naming the field."""
    if config is not None and not isinstance(config, AgentConfig):
        raise InvalidConfig(
            f"expected an AgentConfig or None, got {type(config).__name__}: pass "
            "AgentConfig(...) or the settings as keywords",
            field="config",
        )
    _check_fields(AgentConfig, settings)
    if config is None:
        return AgentConfig(**settings)
    return replace(config, **settings) if settings else config


def runtime_config(settings: Mapping[str, Any]) -> RuntimeConfig:
    """`RuntimeConfig(**settings)`, with an unknown setting an `InvalidConfig` too."""
    _check_fields(RuntimeConfig, settings)
    return RuntimeConfig(**settings)
