"""%%agent in a real kernel: streaming in place, the right cell, cancel, interrupt, background.

One kernel serves the module (the scripted backend, a temporary store); tests use their
own agent names. `AGENTRT_TEST_PYTHON=/path/to/python` runs the same tests on another
ipykernel (see README, "Older kernels").
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from agentrt_jupyter.server.process import LocalServer
from tests.kernel_helpers import (
    SPEC_NAME,
    Kernel,
    button_model,
    display_id,
    displays,
    extension_kernel,
    kernel_env,
    kernelspec_dir,
    reply_display,
    saved_outputs,
    shown_texts,
    started_kernel,
    status_line_model,
    updates_of,
    widget_states,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WORDS = " ".join(f"w{i}" for i in range(40))
SLOW = f"@@delay 100\n@@reply {WORDS}\n"
"""A 4-second reply of 40 one-word chunks: long enough to click or interrupt."""
STREAMING = "@@delay 40\n@@reply " + " ".join(f"s{i}" for i in range(10)) + "\n"
"""A 0.4-second reply: past `live_after`, so it streams live with a Cancel button."""
SDK_IMPORT_SPY = """
import builtins, sys, threading
_sdk_imported = threading.Event()
_sdk_importers = []
_real_import = builtins.__import__
def _spy(name, *args, **kwargs):
    module = _real_import(name, *args, **kwargs)
    fromlist = args[2] if len(args) > 2 else kwargs.get("fromlist")
    if name.startswith("google.genai") or (name == "google" and fromlist and "genai" in fromlist):
        _sdk_importers.append(threading.current_thread().name)
        _sdk_imported.set()
    return module
builtins.__import__ = _spy
"""
"""Records which threads import google.genai, and sets `_sdk_imported` once one has."""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory, server: LocalServer) -> Iterator[Kernel]:
    """A kernel talking to the test session's scripted server, as to a remote endpoint.

    (The embedded server is a child of the kernel, so Kernel -> Interrupt, which signals
    the kernel's process group, reaches it too: see `test_interrupt_with_embedded_server`.)
    """
    home = tmp_path_factory.mktemp("kernel")
    with extension_kernel(home, server.url, server.token) as running:
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


def test_load_leaves_the_slow_part_of_a_first_turn_to_the_runtime_thread(
    tmp_path: Path,
) -> None:
    """%load_ext returns at once (its time is benchmark figure 5) and starts the warm-up:
    the SDK import and the local server happen on the runtime thread with no cell asking,
    so the first %%agent cell finds them ready and shows its reply in one go."""
    with started_kernel(tmp_path) as kernel:
        loaded = kernel.run(
            SDK_IMPORT_SPY + "get_ipython().run_line_magic('load_ext', 'agentrt_jupyter')\n"
        )
        assert loaded.ok, loaded.error
        warmed = kernel.run(
            "print(_sdk_imported.wait(60))\n"
            "from agentrt_jupyter.notebook import kernel_runtime\n"
            "_rt = kernel_runtime()\n"
            "_rt.wait_for_quota(timeout=60)  # queued behind the warm-up: answers once it is done\n"
            "print(_rt.local_server.pid, 'pandas' in sys.modules)"
        )
        assert warmed.ok, warmed.error
        imported, server_pid, pandas = warmed.stdout.split()
        assert (imported, pandas) == ("True", "False")
        first = kernel.run("%%agent first\nhello")
        assert first.ok, first.error
        assert shown_texts(saved_outputs(first.messages))[0] == "Echo: hello"
        assert kernel.value("_rt.local_server.pid") == int(server_pid)
        assert kernel.value("sorted(set(_sdk_importers))") == ["agentrt-runtime"]
        again = kernel.run(
            "builtins.__import__ = _real_import\n"
            "%load_ext agentrt_jupyter\n"
            "import threading\n"
            "print(sum(t.name == 'agentrt-runtime' for t in threading.enumerate()))"
        )
        assert again.ok, again.error
        assert again.stdout.strip().endswith("1")


def test_the_footer_says_what_answered(embedded: Kernel) -> None:
    assert embedded.run("%load_ext agentrt_jupyter").ok
    cell = embedded.run("%%agent who\nhi")
    assert cell.ok, cell.error
    footer = shown_texts(saved_outputs(cell.messages))[-1]
    assert footer.startswith("scripted · gemini-2.5-flash · "), footer


def test_a_short_reply_is_shown_once_whole(kernel: Kernel) -> None:
    """Done before `live_after`: the reply and its footer, two plain displays, no widget
    and no updates (what a plain display costs); a long `live_after` makes it certain."""
    assert kernel.run("%config AgentMagics.live_after = 30").ok
    try:
        cell = kernel.run("%%agent brief\nhi")
    finally:
        assert kernel.run("%config AgentMagics.live_after = 0.15").ok
    assert cell.ok, cell.error
    sent = [
        m["msg_type"] for m in cell.messages if m["msg_type"] not in ("status", "execute_input")
    ]
    assert sent == ["display_data", "display_data"]
    reply, footer = shown_texts(saved_outputs(cell.messages))
    assert reply == "Echo: hi" and " in / " in footer
    assert "text/markdown" not in cell.messages[-2]["content"]["data"]  # the footer: html


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
    kernel.click(button_model(kernel, kernel.of(msg_id)))
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
    kernel.click(button_model(kernel, cell.messages))
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
    # No cell raises a background turn's error: its own cell shows it, once.
    shown = [t for t in shown_texts(saved_outputs(failing.messages)) if t.strip()]
    assert len(shown) == 1 and shown[0].startswith("BackendError: "), shown


@pytest.mark.parametrize(
    ("fault", "error", "partial"),
    [("429 day", "QuotaExceeded", ""), ("drop_after 3", "StreamBroken", "Echo: it drops"),
     ("500", "BackendError", "")],
)  # fmt: skip
def test_a_failed_turn_shows_its_error_once(
    kernel: Kernel, fault: str, error: str, partial: str
) -> None:
    """The red line the cell raises, under the partial reply if there was one: no
    placeholder saying "(error)", no second copy under a footer, no widget left."""
    cell = kernel.run(f"%%agent failing\n@@fault {fault}\nit drops here, after three words")
    assert cell.reply["content"]["ename"] == error
    outputs = saved_outputs(cell.messages)
    shown = [t for t in shown_texts(outputs) if t.strip()]
    assert [t.split(":")[0] for t in shown[len(shown) - 1 :]] == [error], shown
    assert [t for t in shown[:-1] if t.startswith(partial)] == shown[:-1], shown
    assert len(shown) == (2 if partial else 1), shown
    assert not [o for o in outputs if WIDGET_VIEW in o.get("data", {})]


def test_errors_are_short_and_rate_limit_waits_show_a_countdown(kernel: Kernel) -> None:
    cell = kernel.run("%%agent quota\n@@fault 429 day\nhi")
    assert cell.reply["content"]["ename"] == "QuotaExceeded"
    assert len(cell.reply["content"]["traceback"]) == 1
    assert "per-day" in cell.reply["content"]["traceback"][0]
    cell = kernel.run("%%agent minute\n@@fault 429 minute 0.5s\nhi", timeout=60)
    shown = [text_of(m) for m in updates_of(kernel, reply_display(cell.messages))]
    assert any("retrying in" in s for s in shown), shown
    emoji = [c for s in shown for c in s if unicodedata.east_asian_width(c) == "W"]
    assert not emoji, shown  # a box where no emoji font is installed
    bad = kernel.run("%%agent --temperature 9\nhi")
    assert bad.reply["content"]["ename"] == "UsageError"


def test_a_save_mid_stream_reads_well_and_a_finished_turn_keeps_no_widget(
    kernel: Kernel,
) -> None:
    """The outputs a save writes: mid-stream, the Cancel button's view (marked live) is
    followed by its static copy, which the lab extension shows where the view cannot be
    drawn; once the turn ends, the footer has replaced the button and the copy is blank."""
    cell = kernel.run(f"%%agent saver --background\n{SLOW}")
    assert cell.ok, cell.error
    ident = reply_display(cell.messages)
    kernel.wait_for(lambda m: display_id(m) == ident and text_of(m).startswith("w0"))
    during = saved_outputs(kernel.of(cell.msg_id))
    views = [i for i, o in enumerate(during) if WIDGET_VIEW in o["data"]]
    assert len(views) == 1
    view, copy = during[views[0]]["data"], during[views[0] + 1]["data"]
    assert view["text/plain"] == ""  # no text of its own: the copy says it
    assert "still streaming when this notebook was saved" in copy["text/plain"]
    assert 'class="agentrt-snapshot' in copy["text/html"]
    model = view[WIDGET_VIEW]["model_id"]
    classes = kernel.value(f"__import__('ipywidgets').Widget.widgets[{model!r}]._dom_classes")
    assert "agentrt-live" in classes
    assert kernel.run("%agent cancel saver").ok
    assert kernel.run("%agent wait saver").ok
    after = saved_outputs(kernel.of(cell.msg_id))
    assert not [o for o in after if WIDGET_VIEW in o["data"]]
    assert not [o for o in after if "still streaming" in json.dumps(o)]
    assert shown_texts(after)[-1].startswith("CANCELLED · ")


def test_the_first_streaming_cell_says_other_cells_wait(kernel: Kernel) -> None:
    """Once per kernel, beside the first foreground turn's Cancel button; never for a
    --background turn; gone when the turn ends."""
    assert kernel.run(
        "from agentrt_jupyter.notebook.extension import loaded_magics\n"
        "loaded_magics(get_ipython()).await_hint.shown = False"
    ).ok
    background = kernel.run(f"%%agent hinted --background\n{STREAMING}")
    assert kernel.run("%agent wait hinted").ok
    first = kernel.run(f"%%agent hinted\n{STREAMING}")
    second = kernel.run(f"%%agent hinted\n{STREAMING}")
    assert first.ok and second.ok, (first.error, second.error)
    hints = [hint_of(kernel, cell.messages) for cell in (background, first, second)]
    assert hints[0] is None and hints[2] is None, hints
    assert hints[1] is not None and "--background lets them run" in hints[1]
    assert shown_texts(saved_outputs(first.messages))[-1].startswith("127.0.0.1:")


def hint_of(kernel: Kernel, messages: list[dict[str, Any]]) -> str | None:
    """The text beside the Cancel button of these messages, if any."""
    states = widget_states(kernel)
    children = states[status_line_model(messages)]["children"]
    texts = [str(states[child.removeprefix("IPY_MODEL_")].get("value", "")) for child in children]
    shown = " ".join(t for t in texts if t and not t.startswith("<style>"))
    return shown or None


def test_a_notebook_run_headless_keeps_readable_outputs_and_no_widget(
    tmp_path: Path, server: LocalServer
) -> None:
    """nbclient (Run All, papermill) saves what the cells showed: replies and footers,
    the error once, and no widget view, so the file reads the same without a kernel."""
    cells = [
        "%load_ext agentrt_jupyter",
        "%%agent nb\nshort",
        f"%%agent nb\n{STREAMING}",
        "%%agent nb\n@@fault drop_after 3\nit drops here, after three words",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    home = tmp_path / "home"
    specs = KernelSpecManager(kernel_dirs=[str(kernelspec_dir(home / "jupyter"))])
    manager = KernelManager(kernel_name=SPEC_NAME, kernel_spec_manager=specs)
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=60,
        allow_errors=True,
        extra_arguments=[f"--AgentMagics.base_url={server.url}"],
    )
    client.execute(env=kernel_env(home, AGENTRT_BACKEND="", GOOGLE_API_KEY=server.token))
    outputs = [[dict(o) for o in cell.outputs] for cell in notebook.cells]
    assert not [o for cell in outputs for o in cell if WIDGET_VIEW in o.get("data", {})]
    assert not [
        o for cell in outputs for o in cell if "<sub>" in o.get("data", {}).get("text/markdown", "")
    ]
    short, streamed, broken = (shown_texts(cell) for cell in outputs[1:])
    assert short[0] == "Echo: short" and " in / " in short[1] and len(short) == 2
    assert streamed[0].startswith("s0 s1") and " in / " in streamed[-1], streamed
    assert [t.split(":")[0] for t in broken if t.strip()] == ["Echo", "StreamBroken"], broken


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
