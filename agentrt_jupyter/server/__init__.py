"""The local Gemini-compatible server; `LocalServer` runs it as a subprocess.

Importing this package is cheap: aiohttp is only imported by the server process itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .limits import ServerLimits

if TYPE_CHECKING:
    from .process import LocalServer

__all__ = ["LocalServer", "ServerLimits"]


def __getattr__(name: str) -> Any:
    if name == "LocalServer":
        from .process import LocalServer

        return LocalServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
