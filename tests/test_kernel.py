"""%%agent in a real kernel: streaming in place, the right cell, cancel, interrupt, background.

One kernel serves the module (the scripted backend, a temporary store); tests use their
own agent names. `AGENTRT_TEST_PYTHON=/path/to/python` runs the same tests on another
ipykernel (see README, "Older kernels").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentrt_jupyter.server.process import LocalServer
from tests.kernel_helpers import (
    Kernel,
    button_model,
    display_id,
    displays,
    reply_display,
    started_kernel,
    updates_of,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]
WORDS = " ".join(f"w{i}" for i in range(40))
SLOW = f"@@delay 100\n@@reply {WORDS}\n"
"""A 4-second reply of 40 one-word chunks: long enough to click or interrupt."""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory, server: LocalServer) -> Iterator[Kernel]:
    """A kernel talking to the test session's scripted server, as to a remote endpoint.

    (The embedded server is a child of the kernel, so Kernel -> Interrupt, which signals
    the kernel's process group, reaches it too: see `test_interrupt_with_embedded_server`.)
    """
    home = tmp_path_factory.mktemp("kernel")
    arguments = [f"--AgentMagics.base_url={server.url}"]
    env = {"AGENTRT_BACKEND": "", "GOOGLE_API_KEY": server.token}
    with started_kernel(home, extra_arguments=arguments, **env) as running:
        cell = running.run("%load_ext agentrt_jupyter")
        assert cell.ok, cell.error
        yield running


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """A kernel on the embedded scripted server, without the extension loaded yet."""
    with started_kernel(tmp_path_factory.mktemp("embedded")) as running:
        yield running


def kernel_version(kernel: Kernel) -> tuple[int, int]:
    major, minor = kernel.value("__import__('ipykernel').__version__").split(".")[:2]
    return int(major), int(minor)


def text_of(msg: dict[str, Any]) -> str:
    return str(msg["content"]["data"].get("text/plain", ""))


def wait_for_text(kernel: Kernel, msg_id: str) -> dict[str, Any]:
    """The first reply update of cell `msg_id` that shows streamed text."""
    return kernel.wait_for(
        lambda m: (
            m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] == "update_display_data"
            and text_of(m).startswith("w0")
        )
    )


def last_status(kernel: Kernel, name: str) -> str:
    """The status of agent NAME's last message (resumed from the store if not live)."""
    assert kernel.run(
        "from agentrt_jupyter.notebook import kernel_runtime as _rt\n"
        f"_a = _rt().agent({name!r}) if {name!r} in [i.name for i in _rt().agents()] "
        f"else _rt().resume({name!r})"
    ).ok
    return str(kernel.value("_a.history()[-1].status"))


def test_load_does_not_import_sdk_or_pandas_and_is_idempotent(embedded: Kernel) -> None:
    """Load time itself is a benchmark (bench/bench_jupyter_ai.py); here: what loading imports."""
    kernel = embedded
    cell = kernel.run(
        "import sys\n"
        "get_ipython().run_line_magic('load_ext', 'agentrt_jupyter')\n"
        "print('google.genai' in sys.modules, 'pandas' in sys.modules)"
    )
    assert cell.ok, cell.error
    assert cell.stdout.split() == ["False", "False"]
    again = kernel.run(
        "%load_ext agentrt_jupyter\n"
        "import threading\n"
        "print(sum(t.name.startswith('agentrt-runtime') for t in threading.enumerate()))"
    )
    assert again.ok, again.error
    assert again.stdout.strip().endswith("1")


def test_reply_streams_in_place_into_its_own_cell(kernel: Kernel) -> None:
    cell = kernel.run(f"%%agent streamer\n@@delay 50\n@@reply {WORDS}\n")
    assert cell.ok, cell.error
    ident = reply_display(cell.messages)
    updates = updates_of(kernel, ident)
    assert all(m["parent_header"]["msg_id"] == cell.msg_id for m in updates)
    shown = [text_of(m) for m in updates]
    assert len(shown) >= 5, shown
    assert shown[-1] == WORDS
    partial = [s for s in shown[1:-1] if s and s != WORDS]
    assert len(partial) >= 3 and all(WORDS.startswith(s.strip()) for s in partial)
    footer = updates_of(kernel, f"{ident}-status")[-1]
    assert footer["msg_type"] == "update_display_data"
    assert " in / " in text_of(footer) and "first token" in text_of(footer)


def test_updates_are_coalesced_to_twenty_a_second(kernel: Kernel) -> None:
    cell = kernel.run("%%agent coalesce\n@@tiny 600\n@@delay 3\n")
    assert cell.ok, cell.error
    updates = [m for m in updates_of(kernel, reply_display(cell.messages))]
    assert text_of(updates[-1]) == "x" * 600 or len(text_of(updates[-1])) >= 600
    span = updates[-1]["received"] - updates[0]["received"]
    assert span > 1.0
    assert len(updates) <= 20 * span + 3, (len(updates), span)


def test_cancel_button_stops_an_awaiting_cell(kernel: Kernel, server: LocalServer) -> None:
    if kernel_version(kernel) < (7, 4):
        pytest.skip("ipykernel < 7.4 handles widget clicks only after the cell ends")
    msg_id = kernel.submit(f"%%agent clicker\n{SLOW}")
    first_text = wait_for_text(kernel, msg_id)
    kernel.click(button_model(kernel.of(msg_id)))
    reply = kernel.wait_idle(msg_id)
    assert reply["content"]["status"] == "ok"
    ident = display_id(first_text)
    assert ident is not None
    final = updates_of(kernel, ident)[-1]
    assert text_of(final).startswith("w0") and text_of(final) != WORDS
    assert "CANCELLED" in text_of(updates_of(kernel, f"{ident}-status")[-1])
    assert kernel.value(
        "[m.status for m in __import__('agentrt_jupyter.notebook').notebook"
        ".kernel_runtime().history('clicker')]"
    ) == ["complete", "cancelled"]
    assert server.wait_for_request(server.last_request()["id"])["outcome"] == "client_closed"
    again = kernel.run("%%agent clicker\nstill there?")
    assert again.ok, again.error


def test_cancel_button_stops_a_background_run(kernel: Kernel) -> None:
    cell = kernel.run(f"%%agent bgclick --background\n{SLOW}")
    assert cell.ok, cell.error
    ident = reply_display(cell.messages)
    kernel.wait_for(
        lambda m: (
            display_id(m) == ident
            and m["msg_type"] == "update_display_data"
            and text_of(m).startswith("w0")
        )
    )
    kernel.click(button_model(cell.messages))
    footer = kernel.wait_for(
        lambda m: display_id(m) == f"{ident}-status" and m["msg_type"] == "update_display_data",
        timeout=3.0,
    )
    assert "CANCELLED" in text_of(footer)
    assert footer["parent_header"]["msg_id"] == cell.msg_id
    waited = kernel.run("%agent wait bgclick")
    assert waited.ok, waited.error


def test_interrupt_cancels_an_awaiting_cell_with_a_short_error(kernel: Kernel) -> None:
    msg_id = kernel.submit(f"%%agent interrupted\n{SLOW}")
    wait_for_text(kernel, msg_id)
    kernel.km.interrupt_kernel()
    reply = kernel.wait_idle(msg_id, timeout=15)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "TurnCancelled"
    assert len(reply["content"]["traceback"]) == 1
    assert "interrupted" in reply["content"]["traceback"][0]
    ident = reply_display(kernel.of(msg_id))
    assert "CANCELLED" in text_of(updates_of(kernel, f"{ident}-status")[-1])
    assert text_of(updates_of(kernel, ident)[-1]).startswith("w0")
    assert last_status(kernel, "interrupted") == "cancelled"
    again = kernel.run("%%agent interrupted\nback")
    assert again.ok, again.error


def test_interrupt_cancels_a_blocking_cell(kernel: Kernel) -> None:
    msg_id = kernel.submit(f"get_ipython().run_cell_magic('agent', 'blocking', {SLOW!r})")
    wait_for_text(kernel, msg_id)
    kernel.km.interrupt_kernel()
    reply = kernel.wait_idle(msg_id, timeout=15)
    assert reply["content"]["ename"] == "TurnCancelled"
    assert len(reply["content"]["traceback"]) == 1
    assert "interrupted" in reply["content"]["traceback"][0]
    assert last_status(kernel, "blocking") == "cancelled"


def test_autoawait_off_runs_the_cell_blocking(kernel: Kernel) -> None:
    cell = kernel.run("%autoawait off")
    assert cell.ok
    try:
        cell = kernel.run("%%agent offawait\nplain")
        assert cell.ok, cell.error
        assert text_of(updates_of(kernel, reply_display(cell.messages))[-1]) == "Echo: plain"
    finally:
        assert kernel.run("%autoawait on").ok


def test_overlapping_background_runs_stay_in_their_cells(kernel: Kernel) -> None:
    first = kernel.run(f"%%agent bg1 --background\n@@delay 60\n@@reply {WORDS}\n")
    second = kernel.run(f"%%agent bg2 --background --out bg2_result\n@@delay 60\n@@reply {WORDS}\n")
    started = time.monotonic()
    other = kernel.run("1 + 1")
    assert other.ok
    other_done = next(
        m["received"]
        for m in kernel.messages
        if m["msg_type"] == "status"
        and m["content"]["execution_state"] == "idle"
        and m["parent_header"].get("msg_id") == other.msg_id
    )
    waited = kernel.run("%agent wait")
    assert waited.ok, waited.error
    for cell in (first, second):
        ident = reply_display(cell.messages)
        updates = updates_of(kernel, ident) + updates_of(kernel, f"{ident}-status")
        assert {m["parent_header"]["msg_id"] for m in updates} == {cell.msg_id}
        assert len(updates_of(kernel, ident)) >= 5
        assert text_of(updates_of(kernel, ident)[-1]) == WORDS
    during = [
        m for m in displays(kernel.messages, "update_display_data") if m["received"] > started
    ]
    assert {m["parent_header"]["msg_id"] for m in during} >= {first.msg_id, second.msg_id}
    last_updates = [updates_of(kernel, reply_display(c.messages))[-1] for c in (first, second)]
    assert all(other_done < m["received"] for m in last_updates)  # answered mid-stream
    assert kernel.value("bg2_result.text") == WORDS


def test_agent_cancel_and_wait(kernel: Kernel) -> None:
    assert kernel.run("%%agent hanger --background\n@@fault hang\nhi").ok
    cancelled = kernel.run("%agent cancel hanger")
    assert "hanger" in cancelled.stdout
    assert kernel.run("%agent wait hanger").ok
    failing = kernel.run("%%agent failer --background\n@@fault 500\nhi")
    assert failing.ok
    waited = kernel.run("%agent wait failer")
    assert waited.reply["content"]["ename"] == "BackendError"


def test_errors_are_short_and_rate_limit_waits_show_a_countdown(kernel: Kernel) -> None:
    cell = kernel.run("%%agent quota\n@@fault 429 day\nhi")
    assert cell.reply["content"]["ename"] == "QuotaExceeded"
    assert len(cell.reply["content"]["traceback"]) == 1
    assert "per-day" in cell.reply["content"]["traceback"][0]
    cell = kernel.run("%%agent minute\n@@fault 429 minute 0.5s\nhi", timeout=60)
    shown = [text_of(m) for m in updates_of(kernel, reply_display(cell.messages))]
    assert any("retrying in" in s for s in shown), shown
    bad = kernel.run("%%agent --temperature 9\nhi")
    assert bad.reply["content"]["ename"] == "UsageError"


def test_unload_and_reload(kernel: Kernel) -> None:
    unloaded = kernel.run(
        "%unload_ext agentrt_jupyter\n"
        "import threading\n"
        "print([t.name for t in threading.enumerate() if t.name.startswith('agentrt')])"
    )
    assert unloaded.ok, unloaded.error
    assert unloaded.stdout.strip() == "[]"
    gone = kernel.run("%agent list")
    assert gone.reply["content"]["ename"] == "UsageError"
    assert kernel.run("%load_ext agentrt_jupyter").ok
    cell = kernel.run("%%agent streamer\nafter reload")
    assert cell.ok, cell.error
    assert (
        kernel.value(
            "len(__import__('agentrt_jupyter.notebook').notebook.kernel_runtime().history('streamer'))"
        )
        == 4
    )


def test_loads_from_config_with_traitlets_settings(tmp_path: Path) -> None:
    arguments = [
        "--InteractiveShellApp.extensions=agentrt_jupyter",
        "--AgentMagics.default_agent=configured",
    ]
    with started_kernel(tmp_path, extra_arguments=arguments) as kernel:
        cell = kernel.run("%%agent\nhi")
        assert cell.ok, cell.error
        assert kernel.run("rt = %agent runtime").ok
        assert kernel.value("[a.name for a in rt.agents()]") == ["configured"]


def test_interrupt_with_embedded_server(embedded: Kernel) -> None:
    """The interrupt signals the kernel's process group; the embedded server has its own
    session, so it survives: the cell ends short and the next cell uses the same server."""
    assert embedded.run("%load_ext agentrt_jupyter").ok
    assert embedded.run("%%agent embedded\nwarm up").ok
    server_pid = "__import__('agentrt_jupyter.notebook').notebook.kernel_runtime().local_server.pid"
    before = embedded.value(server_pid)
    msg_id = embedded.submit(f"%%agent embedded\n{SLOW}")
    wait_for_text(embedded, msg_id)
    embedded.km.interrupt_kernel()
    reply = embedded.wait_idle(msg_id, timeout=15)
    assert reply["content"]["ename"] == "TurnCancelled"
    assert len(reply["content"]["traceback"]) == 1
    again = embedded.run("%%agent embedded\nagain")
    assert again.ok, again.error
    assert text_of(updates_of(embedded, reply_display(again.messages))[-1]) == "Echo: again"
    assert embedded.value(server_pid) == before
