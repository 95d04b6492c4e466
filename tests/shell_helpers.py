"""IPython's in-process test shell with agentrt_jupyter loaded (magics tests without a kernel)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.testing import globalipapp

IPAPP: Any = globalipapp


@contextmanager
def agent_shell(home: Path, **env: str) -> Iterator[Any]:
    """The shell (one per process: IPython's test app) on the scripted backend, its store
    under `home`, with `env` set while it is loaded; unloaded after."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGENTRT_BACKEND", "scripted")
        mp.setenv("AGENTRT_HOME", str(home))
        for name, value in env.items():
            mp.setenv(name, value)
        IPAPP.start_ipython()  # returns None when another test module started it first
        shell = IPAPP.get_ipython()
        shell.run_line_magic("load_ext", "agentrt_jupyter")
        try:
            yield shell
        finally:
            shell.run_line_magic("unload_ext", "agentrt_jupyter")


def module_shell(code: str = "") -> Any:
    """A module-scoped `ip` fixture: `agent_shell` under a fresh home, `code` (the
    module's data) run in it first."""

    @pytest.fixture(scope="module")
    def ip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
        with agent_shell(tmp_path_factory.mktemp("home")) as shell:
            if code:
                assert shell.run_cell(code).success
            yield shell

    return ip


def run(ip: Any, cell: str) -> BaseException | None:
    """Run `cell`; the error it raised, if any."""
    result = ip.run_cell(cell)
    error: BaseException | None = result.error_before_exec or result.error_in_exec
    return error


def usage_error(ip: Any, cell: str) -> str:
    """The message of the `UsageError` that running `cell` raised (failing if none was)."""
    error = run(ip, cell)
    assert isinstance(error, UsageError), repr(error)
    return str(error)
