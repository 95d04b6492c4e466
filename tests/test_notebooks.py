"""Every notebook in notebooks/ runs top to bottom headless (Run All) and keeps its outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

READ: Any = nbformat.read
NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]


def execute(path: Path, monkeypatch: pytest.MonkeyPatch, home: Path) -> Any:
    monkeypatch.setenv("AGENTRT_HOME", str(home))
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    notebook: Any = READ(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=150,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return notebook


def agent_cells(notebook: Any) -> list[Any]:
    return [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith("%%agent")]


def plain_texts(cell: Any) -> list[str]:
    return [str(o.get("data", {}).get("text/plain", "")) for o in cell.outputs]


def test_notebooks_are_found() -> None:
    names = {path.name for path in NOTEBOOKS}
    assert {"quickstart.ipynb", "tools.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless_and_keeps_every_output(
    path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AGENTRT_BACKEND", "scripted")
    notebook = execute(path, monkeypatch, tmp_path)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
    for cell in agent_cells(notebook):
        texts = plain_texts(cell)
        assert any(" in / " in t and "first token" in t for t in texts), (cell.source, texts)
        assert any(t.strip() and " in / " not in t for t in texts), (cell.source, texts)


@pytest.mark.local_model
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama_cpp")
def test_quickstart_on_the_embedded_local_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AGENTRT_BACKEND", raising=False)
    notebook = execute(
        NOTEBOOKS[[p.name for p in NOTEBOOKS].index("quickstart.ipynb")], monkeypatch, tmp_path
    )
    outputs = "\n".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "embedded local model" in outputs
    for cell in agent_cells(notebook):
        reply = next(
            o.data["text/plain"] for o in cell.outputs if "text/markdown" in o.get("data", {})
        )
        assert reply.strip() and not reply.startswith("Echo:"), reply
        assert "smollm2" in "".join(plain_texts(cell)).lower()
