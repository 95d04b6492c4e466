"""The first cell after `%load_ext` while the warm-up still holds the runtime's loop (issue
17 item 16): the cell says "starting the runtime…" at once, and the reply replaces it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel_helpers import Kernel, saved_outputs, shown_texts, started_kernel

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

HOLD_AT_MOST = 5.0
SLOW_WARM_UP = f"""
import threading
from agentrt_jupyter import endpoints
from agentrt_jupyter.notebook import display

said_starting = threading.Event()
_warm_up = endpoints.Backends.warm_up

async def held_warm_up(self):
    # As the SDK import on a busy machine: the loop is held, here until the cell has
    # said that the runtime is starting (or {HOLD_AT_MOST} s, where it never says so).
    said_starting.wait({HOLD_AT_MOST})
    await _warm_up(self)

endpoints.Backends.warm_up = held_warm_up
_show_if_slow = getattr(display, "StartingNote", None) and display.StartingNote.show_if_slow

def show_if_slow(self, warm_up, delay):
    _show_if_slow(self, warm_up, delay)
    if self.shown:
        said_starting.set()

if _show_if_slow:
    display.StartingNote.show_if_slow = show_if_slow
"""


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    with started_kernel(tmp_path) as running:
        assert running.run(SLOW_WARM_UP).ok
        yield running


def test_a_cell_waiting_for_the_warm_up_says_so_then_shows_the_reply(kernel: Kernel) -> None:
    assert kernel.run("%load_ext agentrt_jupyter").ok
    cell = kernel.run("%%agent\nhello")
    assert cell.ok, cell.error
    shown = [m for m in cell.messages if m["msg_type"] == "display_data"]
    assert shown[0]["content"]["data"]["text/plain"] == "starting the runtime…"
    execute = next(m for m in cell.messages if m["msg_type"] == "execute_input")
    waited = shown[0]["header"]["date"] - execute["header"]["date"]
    assert waited.total_seconds() < HOLD_AT_MOST / 2
    texts = shown_texts(saved_outputs(cell.messages))
    assert texts[0] == "Echo: hello", texts  # in the note's place
    assert not any("starting the runtime" in text for text in texts)


def test_a_warm_runtime_says_nothing_about_starting(kernel: Kernel) -> None:
    assert kernel.run("%load_ext agentrt_jupyter").ok
    warmed = kernel.run(
        "said_starting.set()\n"
        "from agentrt_jupyter.notebook.session import KernelSession\n"
        "KernelSession.of(get_ipython()).warm_up.result(60)"
    )
    assert warmed.ok, warmed.error
    cell = kernel.run("%%agent\nhello")
    assert cell.ok, cell.error
    texts = [str(m["content"]["data"]) for m in cell.messages if m["msg_type"] == "display_data"]
    assert "Echo: hello" in texts[0] and not any("starting the runtime" in t for t in texts)
