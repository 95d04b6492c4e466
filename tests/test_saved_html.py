"""A widget view followed by its static copy, as nbconvert's HTML shows it without saved
widget state (issue 17 item 15c): the copy only, no caption in monospace above it."""

from __future__ import annotations

from typing import Any

import ipywidgets
import nbformat
import pytest
from nbconvert import HTMLExporter

from agentrt_jupyter.notebook.display import saved_copy, view_with_copy
from agentrt_jupyter.notebook.livewidget import view_bundle

CAPTION = "RuntimeMonitor (its agent table follows)"
COPY = "the agent table, as saved"


def html_of(view: dict[str, Any]) -> str:
    cell = nbformat.v4.new_code_cell("monitor")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data=view),
        nbformat.v4.new_output("display_data", data=saved_copy("copy-1", COPY, COPY)),
    ]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    nbformat.validate(notebook)
    page, _ = HTMLExporter().from_notebook_node(notebook)
    return page


@pytest.mark.parametrize("make", [view_bundle, view_with_copy])
def test_html_without_widget_state_shows_the_copy_not_the_caption(make: Any) -> None:
    view = make(ipywidgets.Button(description="Cancel"), CAPTION)
    assert view["text/plain"] == CAPTION  # what a text frontend shows
    page = html_of(view)
    assert COPY in page
    assert CAPTION not in page
