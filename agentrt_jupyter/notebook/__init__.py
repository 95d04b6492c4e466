"""The notebook layer: `%%agent` / `%agent` magics, cell display, widgets.

Loaded by `%load_ext agentrt_jupyter`; `kernel_runtime()` is the same runtime the magics
use, for Python API cells.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..runtime import AgentRuntime

__all__ = ["kernel_runtime"]


def kernel_runtime() -> AgentRuntime:
    """The runtime of this kernel's `%load_ext agentrt_jupyter` (started if needed)."""
    from IPython import get_ipython

    from .extension import loaded_magics

    return loaded_magics(get_ipython()).session.ensure_runtime()
