"""Every notebook in notebooks/ runs top to bottom headless (Run All) and keeps its outputs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from agentrt_jupyter.notebook.cellline import mentions_frame_operator

READ: Any = nbformat.read
NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]
SHOWN = {
    "operators.ipynb": (
        "filter plan: 8 calls",  # explain, before anything ran
        "['R000', 'R004', 'R006']",  # the --filter cell's rows
        "rows escalated",
        "<topk: ",  # the tournament's summary
        "join plan: 3 calls",
        "EmbeddedTexts(model=",  # embed's summary
    ),
}
"""Texts a notebook's outputs show on the scripted backend."""


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
    """The `%%agent` chat cells (not those running over a DataFrame: --map, --filter, ...)."""
    return [
        c
        for c in notebook.cells
        if c.cell_type == "code"
        and c.source.startswith("%%agent")
        and not mentions_frame_operator(c.source.splitlines()[0])
    ]


def plain_texts(cell: Any) -> list[str]:
    return [str(o.get("data", {}).get("text/plain", "")) for o in cell.outputs]


def test_notebooks_are_found() -> None:
    names = {path.name for path in NOTEBOOKS}
    assert {
        "quickstart.ipynb",
        "tools.ipynb",
        "agents_on_data.ipynb",
        "batch.ipynb",
        "operators.ipynb",
    } <= names


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
    shown = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    for text in SHOWN.get(path.name, ()):
        assert text in shown, text


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


def test_agents_on_data_answers_from_the_frame_approves_a_call_and_types_the_result(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without a key the notebook picks the scripted engine itself (no AGENTRT_BACKEND)."""
    monkeypatch.delenv("AGENTRT_BACKEND", raising=False)
    path = NOTEBOOKS[[p.name for p in NOTEBOOKS].index("agents_on_data.ipynb")]
    notebook = execute(path, monkeypatch, tmp_path)
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    shown = ["\n".join(plain_texts(c) + [o.get("text", "") for o in c.outputs]) for c in cells]
    asked = next(i for i, c in enumerate(cells) if "query_dataframe" in c.source)
    assert "query_dataframe" in shown[asked] and '"rows_matched": 2' in shown[asked]
    approved = next(i for i, c in enumerate(cells) if "%agent approve" in c.source)
    assert "approved: analyst's call offer_discount(" in shown[approved]
    assert "[('South', 10)]" in shown[approved]
    assert "RegionRevenue(region='North', revenue=1140.0)" in shown[-1]


def test_providers_notebook_streams_on_openai_and_anthropic_and_switches_provider(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The OpenAI and Anthropic SDKs talk to the kernel's local server; the ledger names
    each call's provider, and the agent switched to Anthropic keeps its first answer."""
    for provider in ("OPENAI", "ANTHROPIC"):
        monkeypatch.delenv(f"{provider}_API_KEY", raising=False)
        monkeypatch.delenv(f"{provider}_BASE_URL", raising=False)
    monkeypatch.setenv("AGENTRT_BACKEND", "scripted")
    path = NOTEBOOKS[[p.name for p in NOTEBOOKS].index("providers.ipynb")]
    notebook = execute(path, monkeypatch, tmp_path)
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    shown = ["\n".join(plain_texts(c) + [o.get("text", "") for o in c.outputs]) for c in cells]
    ledger = shown[next(i for i, c in enumerate(cells) if "%agent ledger" in c.source)]
    for row in ("writer", "openai", "gpt-4.1-mini"), ("critic", "anthropic", "claude-sonnet-4-5"):
        assert any(all(word in line for word in row) for line in ledger.splitlines()), ledger
    history = shown[-2]
    replies = re.findall(r"^\d+\s+model\s+(\w+)", history, flags=re.MULTILINE)
    assert replies == ["openai", "anthropic"], history
    assert "Echo: Say that again" in history
