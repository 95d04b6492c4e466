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
    same for `filter`, `classify` and `extract` (see `agentrt_jupyter.batch.semantic`),
    and for `embed`, `topk`, `join` (the right frame next), `sim_join`, `search`, `agg` and
    `dedupe` (`batch.embed`, `topk`, `join`, `agg`, `dedupe`); `a...` awaits."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def map(self, template: str, *, runtime: AgentRuntime | None = None, **options: Any) -> Any:
        return operator("map").run(_runtime(runtime), self._frame, template, **options)

    async def amap(
        self, template: str, *, runtime: AgentRuntime | None = None, **options: Any
    ) -> Any:
        return await operator("map").arun(_runtime(runtime), self._frame, template, **options)

    def embed(self, template: str, *, runtime: AgentRuntime | None = None, **options: Any) -> Any:
        return operator("embed").run(_runtime(runtime), self._frame, template, **options)

    async def aembed(
        self, template: str, *, runtime: AgentRuntime | None = None, **options: Any
    ) -> Any:
        return await operator("embed").arun(_runtime(runtime), self._frame, template, **options)

    def topk(self, criterion: str, *, runtime: AgentRuntime | None = None, **options: Any) -> Any:
        return operator("topk").run(_runtime(runtime), self._frame, criterion, **options)

    async def atopk(
        self, criterion: str, *, runtime: AgentRuntime | None = None, **options: Any
    ) -> Any:
        return await operator("topk").arun(_runtime(runtime), self._frame, criterion, **options)

    def join(
        self,
        right: pd.DataFrame,
        template: str,
        *,
        runtime: AgentRuntime | None = None,
        **options: Any,
    ) -> Any:
        return operator("join").run(_runtime(runtime), self._frame, right, template, **options)

    async def ajoin(
        self,
        right: pd.DataFrame,
        template: str,
        *,
        runtime: AgentRuntime | None = None,
        **options: Any,
    ) -> Any:
        join = operator("join")
        return await join.arun(_runtime(runtime), self._frame, right, template, **options)

    def sim_join(
        self, right: pd.DataFrame, *, runtime: AgentRuntime | None = None, **options: Any
    ) -> Any:
        return operator("sim_join").run(_runtime(runtime), self._frame, right, **options)

    def search(self, query: str, *, runtime: AgentRuntime | None = None, **options: Any) -> Any:
        return operator("search").run(_runtime(runtime), self._frame, query, **options)

    def agg(self, instruction: str, *, runtime: AgentRuntime | None = None, **options: Any) -> Any:
        return operator("agg").run(_runtime(runtime), self._frame, instruction, **options)

    async def aagg(
        self, instruction: str, *, runtime: AgentRuntime | None = None, **options: Any
    ) -> Any:
        return await operator("agg").arun(_runtime(runtime), self._frame, instruction, **options)

    def dedupe(self, template: str, *, runtime: AgentRuntime | None = None, **options: Any) -> Any:
        return operator("dedupe").run(_runtime(runtime), self._frame, template, **options)

    async def adedupe(
        self, template: str, *, runtime: AgentRuntime | None = None, **options: Any
    ) -> Any:
        return await operator("dedupe").arun(_runtime(runtime), self._frame, template, **options)

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
