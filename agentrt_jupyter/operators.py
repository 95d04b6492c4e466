"""The data operators the runtime offers as methods (`runtime.map`; filter, classify, top-k,
... next), found here by name so that the runtime imports none of them.

An operator is implemented above the runtime (the batch engine, which imports pandas).
The package root, which sits above every layer, says how to load each one (`provide`);
the first call loads it (`operator`). The root also says which runtime `df.agentrt.*`
uses when none is given (`set_default_runtime`: the notebook's).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import InvalidConfig


@dataclass(frozen=True)
class Operator:
    """One operator: `run(runtime, *args, **options)` waits for the result; `arun` is the
    same as a coroutine."""

    name: str
    run: Callable[..., Any]
    arun: Callable[..., Awaitable[Any]]


_loaders: dict[str, Callable[[], Operator]] = {}
_loaded: dict[str, Operator] = {}
_lock = threading.Lock()
_default_runtime: Callable[[], object] | None = None


def provide(name: str, load: Callable[[], Operator]) -> None:
    """Operator `name` is what `load()` returns; it is called once, on first use."""
    with _lock:
        _loaders[name] = load
        _loaded.pop(name, None)


def operator(name: str) -> Operator:
    """Operator `name`, loaded on first use (`LookupError` if nothing provides it)."""
    found = _loaded.get(name)
    if found is not None:
        return found
    with _lock:
        load = _loaders.get(name)
    if load is None:
        raise LookupError(f"no operator {name!r} is provided (import agentrt_jupyter first)")
    found = load()
    with _lock:
        _loaded[name] = found
    return found


def set_default_runtime(provider: Callable[[], object] | None) -> None:
    """Where `default_runtime()` finds the runtime (None: nowhere)."""
    global _default_runtime
    _default_runtime = provider


def default_runtime() -> object:
    """The runtime (an `AgentRuntime`: this layer sits below it, so it does not name it) an
    operator uses when the caller gives none, the notebook's; `InvalidConfig` if none."""
    provider = _default_runtime
    try:
        if provider is None:
            raise LookupError("no default runtime")
        return provider()
    except Exception:  # no IPython, or the extension is not loaded
        raise InvalidConfig(
            "pass runtime=AgentRuntime(...), or run %load_ext agentrt_jupyter in a notebook",
            field="runtime",
        ) from None
