"""agentrt-jupyter: LLM agents that run inside the Jupyter kernel.

`import agentrt_jupyter` is cheap: names are imported on first use, and
`%load_ext agentrt_jupyter` imports the notebook layer only when called.

This module is also the composition root: it sits above every layer and wires the
features into the layers below them (`_compose`), so no layer imports one above it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "AgentRuntime": "runtime",
    "AsyncAgentRuntime": "runtime",
    "Agent": "runtime",
    "AsyncAgent": "runtime",
    "AgentInfo": "registry",
    "FakeBackend": "backends.fake",
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
    "UsageProblem": "errors",
    "InvalidConfig": "errors",
    "InvalidContent": "errors",
    "AgentNotFound": "errors",
    "ConversationExists": "errors",
    "ConversationInUse": "errors",
    "StoreError": "errors",
    "WrongThread": "errors",
    "CostNotApproved": "errors",
    "ReplyBlocked": "errors",
    "TurnStoreError": "errors",
    "AgentShutDown": "errors",
    "RuntimeClosed": "errors",
    "Timeout": "errors",
    "TurnError": "errors",
    "TurnCancelled": "errors",
    "StreamBroken": "errors",
    "ToolStepLimit": "errors",
    "QuotaExceeded": "errors",
    "BackendError": "errors",
    "ReplyInvalid": "errors",
    "ToolError": "errors",
    "McpServerError": "errors",
    "history_frame": "frames",
    "usage_frame": "frames",
    "ledger_frame": "frames",
    "AgentPanel": "notebook.widgets",
    "RuntimeMonitor": "notebook.widgets",
}

__all__ = [*_EXPORTS, "load_ipython_extension", "unload_ipython_extension"]

if TYPE_CHECKING:
    from .backends.fake import (
        FakeBackend as FakeBackend,
    )
    from .config import (
        AgentConfig as AgentConfig,
    )
    from .config import (
        RuntimeConfig as RuntimeConfig,
    )
    from .content import (
        BlobPart as BlobPart,
    )
    from .content import (
        FunctionCallPart as FunctionCallPart,
    )
    from .content import (
        FunctionResponsePart as FunctionResponsePart,
    )
    from .content import (
        TextPart as TextPart,
    )
    from .content import (
        audio as audio,
    )
    from .content import (
        blob as blob,
    )
    from .content import (
        file as file,
    )
    from .content import (
        image as image,
    )
    from .content import (
        pdf as pdf,
    )
    from .conversation import (
        ConversationMessage as ConversationMessage,
    )
    from .conversation import (
        LedgerEntry as LedgerEntry,
    )
    from .conversation import (
        Usage as Usage,
    )
    from .errors import (
        AgentError as AgentError,
    )
    from .errors import (
        AgentNotFound as AgentNotFound,
    )
    from .errors import (
        AgentShutDown as AgentShutDown,
    )
    from .errors import (
        BackendError as BackendError,
    )
    from .errors import (
        ConversationExists as ConversationExists,
    )
    from .errors import (
        ConversationInUse as ConversationInUse,
    )
    from .errors import (
        CostNotApproved as CostNotApproved,
    )
    from .errors import (
        InvalidConfig as InvalidConfig,
    )
    from .errors import (
        InvalidContent as InvalidContent,
    )
    from .errors import (
        McpServerError as McpServerError,
    )
    from .errors import (
        QuotaExceeded as QuotaExceeded,
    )
    from .errors import (
        ReplyBlocked as ReplyBlocked,
    )
    from .errors import (
        ReplyInvalid as ReplyInvalid,
    )
    from .errors import (
        RuntimeClosed as RuntimeClosed,
    )
    from .errors import (
        StoreError as StoreError,
    )
    from .errors import (
        StreamBroken as StreamBroken,
    )
    from .errors import (
        Timeout as Timeout,
    )
    from .errors import (
        ToolError as ToolError,
    )
    from .errors import (
        ToolStepLimit as ToolStepLimit,
    )
    from .errors import (
        TurnCancelled as TurnCancelled,
    )
    from .errors import (
        TurnError as TurnError,
    )
    from .errors import (
        TurnStoreError as TurnStoreError,
    )
    from .errors import (
        UsageProblem as UsageProblem,
    )
    from .errors import (
        WrongThread as WrongThread,
    )
    from .events import (
        Error as Error,
    )
    from .events import (
        TextDelta as TextDelta,
    )
    from .events import (
        ThoughtDelta as ThoughtDelta,
    )
    from .events import (
        ToolCall as ToolCall,
    )
    from .events import (
        ToolResult as ToolResult,
    )
    from .events import (
        TurnEnd as TurnEnd,
    )
    from .events import (
        UsageUpdate as UsageUpdate,
    )
    from .events import (
        Waiting as Waiting,
    )
    from .frames import (
        history_frame as history_frame,
    )
    from .frames import (
        ledger_frame as ledger_frame,
    )
    from .frames import (
        usage_frame as usage_frame,
    )
    from .handle import (
        ChatHandle as ChatHandle,
    )
    from .handle import (
        TurnResult as TurnResult,
    )
    from .notebook.widgets import (
        AgentPanel as AgentPanel,
    )
    from .notebook.widgets import (
        RuntimeMonitor as RuntimeMonitor,
    )
    from .quota import (
        QuotaRegistry as QuotaRegistry,
    )
    from .quota import (
        QuotaState as QuotaState,
    )
    from .registry import (
        AgentInfo as AgentInfo,
    )
    from .runtime import (
        Agent as Agent,
    )
    from .runtime import (
        AgentRuntime as AgentRuntime,
    )
    from .runtime import (
        AsyncAgent as AsyncAgent,
    )
    from .runtime import (
        AsyncAgentRuntime as AsyncAgentRuntime,
    )
    from .tools import (
        Tool as Tool,
    )


_exported, __dir__ = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    """The exports on first use; `__version__` from the package metadata (one version, in
    labextension/package.json, which the build reads): importlib.metadata alone would
    take a third of the package's import time."""
    if name == "__version__":
        from importlib.metadata import version

        globals()["__version__"] = found = version("agentrt-jupyter")
        return found
    return _exported(name)


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext agentrt_jupyter`: register the magics and start (or reuse) the runtime."""
    from .notebook.extension import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """`%unload_ext agentrt_jupyter`: shut the runtime down cleanly."""
    from .notebook.extension import unload

    unload(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where `jupyter labextension develop` finds the built extension (an editable install
    builds it there; a wheel ships it in share/jupyter/labextensions)."""
    return [{"src": "labextension", "dest": "agentrt-jupyter"}]


_BATCH_OPERATORS = {
    "map": "engine",
    "filter": "semantic",
    "classify": "semantic",
    "extract": "semantic",
}
"""Each operator the runtime offers as a method, and the `batch` module whose `OPERATORS`
holds it."""


def _batch_operator(name: str) -> Any:
    import importlib

    module = importlib.import_module(f".batch.{_BATCH_OPERATORS[name]}", __name__)
    return module.OPERATORS[name]


def _show_map_progress(run: Any, *, always: bool) -> object:
    from .notebook.batchview import show_progress

    return show_progress(run, always=always)


def _notebook_cost_gate() -> Any:
    import sys

    if "ipykernel" not in sys.modules:  # no kernel: nothing asks (and nothing is imported)
        return None
    from .notebook.costgate import kernel_cost_gate

    return kernel_cost_gate()


def _notebook_runtime() -> AgentRuntime:
    from .notebook import kernel_runtime

    return kernel_runtime()


def _compose() -> None:
    """Wire the features above the runtime (cheap: nothing here imports pandas, an SDK or
    widgets; each part loads on first use).

    - `runtime.map` / `runtime.aio.map` are the batch engine's `map` operator, and so
      on for every operator in `_BATCH_OPERATORS` (filter, classify, extract, ...);
    - a map's `progress=None/True` shows the notebook layer's view (a widget in a kernel,
      else a tqdm bar on a terminal);
    - `df.agentrt` is registered as soon as pandas is imported, and uses the notebook's
      runtime when given none;
    - in a kernel, a run estimated above `AgentMagics.confirm_cost` asks in its cell first.
    """
    import functools

    from .batch.explain import set_cost_gate
    from .batch.hook import register_when_pandas_loads
    from .batch.progress import set_progress_view
    from .operators import provide, set_default_runtime

    for name in _BATCH_OPERATORS:
        provide(name, functools.partial(_batch_operator, name))
    set_progress_view(_show_map_progress)
    set_cost_gate(_notebook_cost_gate)
    set_default_runtime(_notebook_runtime)
    register_when_pandas_loads()


_compose()
