"""`df.agentrt.map("Classify: {text}")`: the map run as a DataFrame method.

Registered when pandas is imported (see `hook`; the package root asks for it). Without
`runtime=` it uses the default runtime (`operators.default_runtime`: the notebook's,
after `%load_ext agentrt_jupyter`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..operators import default_runtime, operator

if TYPE_CHECKING:
    from ..runtime import AgentRuntime

NAME = "agentrt"
_registered = threading.Event()
_lock = threading.Lock()


class AgentrtAccessor:
    """`frame.agentrt`: `map(template, **options)` and `await amap(template, **options)`,
    with the options of `runtime.map` (see `agentrt_jupyter.batch.engine.start_map`); the
    same for `filter`, `classify` and `extract` (see `agentrt_jupyter.batch.semantic`)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def map(self, template: str, *, runtime: AgentRuntime | None = None, **options: Any) -> Any:
        return operator("map").run(_runtime(runtime), self._frame, template, **options)

    async def amap(
        self, template: str, *, runtime: AgentRuntime | None = None, **options: Any
    ) -> Any:
        return await operator("map").arun(_runtime(runtime), self._frame, template, **options)

    def filter(self, template: str, *, runtime: AgentRuntime | None = None, **options: Any) -> Any:
        return operator("filter").run(_runtime(runtime), self._frame, template, **options)

    async def afilter(
        self, template: str, *, runtime: AgentRuntime | None = None, **options: Any
    ) -> Any:
        return await operator("filter").arun(_runtime(runtime), self._frame, template, **options)

    def classify(
        self, template: str, *, runtime: AgentRuntime | None = None, **options: Any
    ) -> Any:
        return operator("classify").run(_runtime(runtime), self._frame, template, **options)

    async def aclassify(
        self, template: str, *, runtime: AgentRuntime | None = None, **options: Any
    ) -> Any:
        return await operator("classify").arun(_runtime(runtime), self._frame, template, **options)

    def extract(self, template: str, *, runtime: AgentRuntime | None = None, **options: Any) -> Any:
        return operator("extract").run(_runtime(runtime), self._frame, template, **options)

    async def aextract(
        self, template: str, *, runtime: AgentRuntime | None = None, **options: Any
    ) -> Any:
        return await operator("extract").arun(_runtime(runtime), self._frame, template, **options)


def _runtime(runtime: AgentRuntime | None) -> object:
    return runtime if runtime is not None else default_runtime()


def register() -> None:
    """Add `DataFrame.agentrt`; idempotent."""
    with _lock:
        if _registered.is_set():
            return
        pd.api.extensions.register_dataframe_accessor(NAME)(AgentrtAccessor)
        _registered.set()
