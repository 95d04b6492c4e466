"""Register `DataFrame.agentrt` when pandas is imported, without importing pandas first.

`import agentrt_jupyter` must stay light, yet `df.agentrt.map(...)` should work in any
session that has both. `register_when_pandas_loads()` registers the accessor at once if
pandas is already loaded, else it puts a one-shot finder on `sys.meta_path` that lets
pandas import as usual and registers the accessor right after pandas' own `__init__`
ran. The package root calls it when imported. The finder removes itself on first use; a
failure to register is logged, never raised into the user's `import pandas`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import threading
import types
from collections.abc import Sequence

log = logging.getLogger("agentrt_jupyter")
_lock = threading.Lock()


def register_when_pandas_loads() -> None:
    """`DataFrame.agentrt` now if pandas is loaded, else as soon as it is; idempotent."""
    with _lock:
        pandas = sys.modules.get("pandas")
        if pandas is not None and hasattr(pandas, "DataFrame"):
            _register()
            return
        if not any(isinstance(finder, _PandasFinder) for finder in sys.meta_path):
            sys.meta_path.insert(0, _PandasFinder())


def _register() -> None:
    try:
        from .accessor import register

        register()
    except Exception:
        log.exception("could not register the DataFrame.agentrt accessor")


class _PandasFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it wraps the loader the other finders give pandas."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "pandas":
            return None
        with _lock:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec: importlib.machinery.ModuleSpec | None = (
                find(fullname, path, target) if find is not None else None
            )
            if spec is not None:
                if isinstance(spec.loader, importlib.abc.Loader):
                    spec.loader = _ThenRegister(spec.loader)
                return spec
        return None


class _ThenRegister(importlib.abc.Loader):
    """A loader that runs pandas' own loader, then registers the accessor; everything
    else (resources, source) is the wrapped loader's."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        _register()
