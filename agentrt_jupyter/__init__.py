"""agentrt-jupyter: LLM agents that run inside the Jupyter kernel.

`import agentrt_jupyter` is cheap: names are imported on first use, and
`%load_ext agentrt_jupyter` imports the notebook layer only when called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AgentRuntime": "runtime",
    "AsyncAgentRuntime": "runtime",
    "Agent": "runtime",
    "AgentInfo": "runtime",
    "RuntimeConfig": "config",
    "AgentConfig": "config",
    "ChatHandle": "handle",
    "TurnResult": "handle",
    "ConversationMessage": "conversation",
    "LedgerEntry": "conversation",
    "Usage": "conversation",
    "QuotaRegistry": "quota",
    "QuotaState": "quota",
    "Tool": "tools",
    "TextPart": "content",
    "BlobPart": "content",
    "FunctionCallPart": "content",
    "FunctionResponsePart": "content",
    "blob": "content",
    "file": "content",
    "image": "content",
    "pdf": "content",
    "audio": "content",
    "TextDelta": "events",
    "ThoughtDelta": "events",
    "ToolCall": "events",
    "ToolResult": "events",
    "UsageUpdate": "events",
    "Waiting": "events",
    "TurnEnd": "events",
    "Error": "events",
    "AgentError": "errors",
    "AgentRuntimeWarning": "errors",
    "UsageProblem": "errors",
    "InvalidConfig": "errors",
    "InvalidContent": "errors",
    "AgentNotFound": "errors",
    "ConversationExists": "errors",
    "AgentShutDown": "errors",
    "RuntimeClosed": "errors",
    "Timeout": "errors",
    "TurnError": "errors",
    "TurnCancelled": "errors",
    "StreamBroken": "errors",
    "ToolStepLimit": "errors",
    "QuotaExceeded": "errors",
    "BackendError": "errors",
    "history_frame": "frames",
    "usage_frame": "frames",
    "ledger_frame": "frames",
}

__all__ = [*_EXPORTS, "load_ipython_extension", "unload_ipython_extension"]

if TYPE_CHECKING:
    from .config import AgentConfig, RuntimeConfig
    from .runtime import Agent, AgentRuntime


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agentrt_jupyter' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext agentrt_jupyter`: register the magics and start (or reuse) the runtime."""
    from .notebook.extension import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """`%unload_ext agentrt_jupyter`: shut the runtime down cleanly."""
    from .notebook.extension import unload

    unload(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "agentrt-jupyter"}]
