"""`df.agentrt.map("Classify: {text}")`: the map run as a DataFrame method.

Registered when pandas is imported (see `hook`) or when the map engine is first used.
Without `runtime=` it uses the notebook's runtime (`%load_ext agentrt_jupyter`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import InvalidConfig

if TYPE_CHECKING:
    from ..runtime import AgentRuntime

NAME = "agentrt"
_registered = threading.Event()
_lock = threading.Lock()


class AgentrtAccessor:
    """`frame.agentrt`: `map(template, **options)` and `await amap(template, **options)`,
    with the options of `runtime.map` (see `agentrt_jupyter.batch.engine.start_map`)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def map(self, template: str, *, runtime: AgentRuntime | None = None, **options: Any) -> Any:
        from .engine import map_frame

        return map_frame(_runtime(runtime), self._frame, template, **options)

    async def amap(
        self, template: str, *, runtime: AgentRuntime | None = None, **options: Any
    ) -> Any:
        from .engine import amap_frame

        return await amap_frame(_runtime(runtime), self._frame, template, **options)


def _runtime(runtime: AgentRuntime | None) -> AgentRuntime:
    if runtime is not None:
        return runtime
    try:
        from ..notebook import kernel_runtime

        return kernel_runtime()
    except Exception:  # no IPython, or the extension is not loaded
        raise InvalidConfig(
            "pass runtime=AgentRuntime(...), or run %load_ext agentrt_jupyter in a notebook",
            field="runtime",
        ) from None


def register() -> None:
    """Add `DataFrame.agentrt`; idempotent."""
    with _lock:
        if _registered.is_set():
            return
        pd.api.extensions.register_dataframe_accessor(NAME)(AgentrtAccessor)
        _registered.set()
