"""The notebook walk in a real JupyterLab and a real Notebook 7, in Debian's Chromium.

One Jupyter server (JupyterLab with Notebook 7 beside it) runs the built lab extension
(agentrt_jupyter/labextension/, built by `pip install -e .`) and kernels on the scripted
backend. In each UI a user's walk through a notebook: `%load_ext`; a `%%agent` reply
streams while the token totals count up (status bar, Agents sidebar) and its Cancel
button stops it; a turn cancelled from the sidebar, one from the command palette, one by
interrupting the kernel; a stream that breaks shows its error; an AgentPanel follows a
streaming reply (and stays put once the user scrolls up), is shut down and re-attaches
when a `%%agent` cell creates its agent again; a RuntimeMonitor. Then the notebook is
saved, the kernel shut down and the notebook reopened: the panel and the monitor read as
their static copies and no widget error shows anywhere; nbconvert of the saved file
reads the same. Screenshots and the server log go to $AGENTRT_ARTIFACTS (default
build/browser-artifacts/), printed at the start.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentrt_jupyter.notebook.display import SAVED_MID_STREAM

from .machine import free_port, require

pytestmark = [pytest.mark.slow, pytest.mark.kernel, pytest.mark.browser, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "agentrt_jupyter" / "labextension"
CHROMIUM = os.environ.get("AGENTRT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("AGENTRT_ARTIFACTS", ROOT / "build" / "browser-artifacts"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDGET_ERROR = "Error displaying widget"
PANEL_LINES = 60

SETUP = """\
%load_ext agentrt_jupyter
%config AgentMagics.cache = False
from agentrt_jupyter.notebook import kernel_runtime
from agentrt_jupyter.notebook.widgets import AgentPanel, RuntimeMonitor
rt = kernel_runtime()
notes = []
def take_note(text: str) -> str:
    "Keep a note for the user."
    notes.append(text)
    return f"noted {len(notes)}"
print("runtime ready")"""

# The walk's cells, by name; each %%agent cell talks to its own agent.
CELLS = {
    "setup": SETUP,
    "stream": "%%agent writer\n@@delay 120\n@@fault hang_after 36\n"
    + " ".join(f"word{i}" for i in range(40)),
    "sidebar": "%%agent sider\n@@fault hang\nwait for the sidebar's Cancel",
    "palette": "%%agent pal\n@@fault hang\nwait for the palette's command",
    "interrupt": "%%agent stopper\n@@fault hang\nwait for an interrupt",
    "error": "%%agent broken\n@@fault drop_after 3\nthe connection drops after three words",
    "approve": '%%agent noter --tools take_note --confirm\n@@call take_note {"text": "hi"}\nnote',
    "panel": 'panel = AgentPanel(rt, "writer")\npanel',
    "again": "%%agent writer\n@@delay 60\nback again " + " ".join(f"a{i}" for i in range(30)),
    "monitor": "RuntimeMonitor(rt)",
    "blocking": 'import time\ntime.sleep(7)\nprint("blocking cell done")',
    "lingering": "%%agent lingerer\n@@delay 100\nstill streaming when the notebook is saved "
    + " ".join(f"w{i}" for i in range(400)),
}
NAMES = list(CELLS)


def notebook_json() -> dict[str, Any]:
    def cell(source: str) -> dict[str, Any]:
        return {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {},
            "outputs": [],
            "source": source,
        }

    return {
        "cells": [cell(source) for source in CELLS.values()],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


@dataclass
class Server:
    base: str
    token: str
    notebooks: Path

    def api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.base}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running Jupyter server with JupyterLab, Notebook 7 and the extension."""
    require((BUILT / "package.json").is_file(), "build it first: pip install -e . (needs npm)")
    require(Path(CHROMIUM).is_file(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    pytest.importorskip("notebook", reason="Notebook 7 is in the test dependency group")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    home = tmp_path_factory.mktemp("lab")
    # Installed as in a data dir (JUPYTER_DATA_DIR below): JupyterLab and Notebook 7 both
    # look there; `LabApp.extra_labextensions_path` reaches JupyterLab only.
    extensions = home / "data" / "labextensions"
    extensions.mkdir(parents=True)
    (extensions / "agentrt-jupyter").symlink_to(BUILT, target_is_directory=True)
    config = home / "config"
    (config / "labconfig").mkdir(parents=True)
    # No news or update toasts over the screenshots.
    disabled = {
        "@jupyterlab/apputils-extension:announcements": True,
        "@jupyterlab/apputils-extension:notification-news": True,
    }
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": disabled})
    )
    notebooks = home / "notebooks"
    notebooks.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_API_KEY", "GEMINI_API_KEY")}
    env.update(
        AGENTRT_BACKEND="scripted",
        # This tree's build (below), not a copy installed in the environment: in a venv
        # jupyter_core otherwise prefers the environment's data dir.
        JUPYTER_PREFER_ENV_PATH="0",
        AGENTRT_HOME=str(home / "agentrt"),
        JUPYTER_CONFIG_DIR=str(config),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.token={token}", f"--ServerApp.root_dir={notebooks}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    running = Server(f"http://127.0.0.1:{port}", token, notebooks)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (home / "server.log").read_text()
            try:
                running.api("GET", "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # polling a starting server: nothing to wait on
        yield running
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
        shutil.copy(home / "server.log", ARTIFACTS / "jupyter-server.log")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.mark.parametrize("ui", ["lab", "notebook7"])
def test_the_notebook_walk(
    server: Server, browser: Any, ui: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from playwright.sync_api import expect

    with capsys.disabled():
        print(f"\n[{ui}] screenshots and the server log: {ARTIFACTS}")
    path = f"walk-{ui}.ipynb"
    (server.notebooks / path).write_text(json.dumps(notebook_json()))
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Reloading a notebook whose outputs changed after its save asks "leave the page?"
    # (the reply kept streaming): yes, the reopened file is the one saved mid-stream.
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        walk = Walk(
            page, ui, expect, lambda name: page.screenshot(path=ARTIFACTS / f"{ui}-{name}.png")
        )
        url = f"lab/tree/{path}" if ui == "lab" else f"notebooks/{path}"
        page.goto(f"{server.base}/{url}?token={server.token}")
        walk.run()
        saved = wait_saved(server.notebooks / path)
        shut_down_kernels(server, path)
        walk.kernel_gone()
        page.reload()
        walk.reopened()
    finally:
        page.close()
    assert not [e for e in errors if "agentrt" in e], errors
    check_nbconvert(saved)


class Walk:
    """One UI's walk through the notebook, step by step."""

    def __init__(self, page: Any, ui: str, expect: Any, shot: Callable[[str], None]) -> None:
        self.page = page
        self.lab = ui == "lab"
        self.expect = expect
        self.shot = shot
        self.cells = page.locator(".jp-Notebook .jp-Cell")
        self.sidebar = page.locator("#agentrt-jupyter-agents")
        self.status = page.locator(".jp-agentrt-status")

    def cell(self, name: str) -> Any:
        return self.cells.nth(NAMES.index(name))

    def output(self, name: str) -> Any:
        return self.cell(name).locator(".jp-OutputArea")

    def run_cell(self, name: str) -> None:
        """Select the cell and press Ctrl+Enter, as a user does, until the cell starts.

        Right after the page loads a key press can land before the notebook has focus:
        press again (only) if the prompt has not changed."""
        cell = self.cell(name)
        prompt = cell.locator(".jp-InputPrompt")
        for attempt in range(3):
            prompt.click()
            self.expect(cell).to_have_class(re.compile(r"jp-mod-active"))
            self.page.keyboard.press("Control+Enter")
            try:
                self.expect(prompt).not_to_have_text(re.compile(r"^\[ \]:$"), timeout=5_000)
                return
            except AssertionError:
                if attempt == 2:
                    raise

    def command_mode(self, name: str) -> None:
        self.cell(name).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Escape")

    def palette(self, text: str) -> None:
        self.page.keyboard.press("Control+Shift+C")
        palette = self.page.locator(".lm-CommandPalette")
        palette.locator("input").fill(text)
        item = palette.locator(".lm-CommandPalette-item", has_text=text).first
        self.expect(item).to_be_visible()
        item.click()

    def footer(self, name: str, says: str) -> None:
        self.expect(self.output(name)).to_contain_text(says, timeout=15_000)

    def run(self) -> None:
        expect, page = self.expect, self.page
        expect(self.cells).to_have_count(len(CELLS), timeout=60_000)
        if self.lab:
            expect(self.status).to_be_hidden()  # no runtime yet
        self.run_cell("setup")
        expect(self.output("setup")).to_contain_text("runtime ready", timeout=60_000)
        self.palette("Agents: Show the Agents panel")
        expect(self.sidebar.locator(".jp-agentrt-summary")).to_contain_text(
            "0 streaming", timeout=20_000
        )
        self.stream_and_cancel_button()
        self.cancel_from_sidebar()
        self.cancel_from_palette()
        self.interrupt()
        self.broken_stream()
        self.approve_a_tool_call()
        self.panel_follows_and_reattaches()
        self.run_cell("monitor")
        expect(self.output("monitor").locator(".agentrt-live")).to_contain_text("pal")
        if self.lab:
            self.blocking_cell_times_out()
        # Saved while a reply still streams: its Cancel button is in the file.
        self.run_cell("lingering")
        expect(self.output("lingering").get_by_role("button", name="Cancel")).to_be_visible(
            timeout=20_000
        )
        expect(self.output("lingering")).to_contain_text("w3", timeout=20_000)
        assert SAVED_MID_STREAM not in self.output("lingering").inner_text()  # copy hidden
        self.shot("before-save")
        self.command_mode("monitor")
        page.keyboard.press("Control+s")

    def approve_a_tool_call(self) -> None:
        """A call behind --confirm waits for the Approve click in its cell, then runs."""
        expect = self.expect
        self.run_cell("approve")
        out = self.output("approve")
        expect(out).to_contain_text("wants to call", timeout=20_000)
        expect(out).to_contain_text("take_note")
        self.shot("approval-asked")
        approve = out.locator("button", has_text=re.compile(r"^\s*Approve\s*$"))
        approve.click()
        self.footer("approve", "1 tool call")
        expect(out).to_contain_text("approved")
        expect(out).to_contain_text("noted 1")
        expect(approve).to_have_count(0)
        self.shot("approval-answered")

    def stream_and_cancel_button(self) -> None:
        """The reply streams; the totals count up while it does; its Cancel button stops it."""
        expect = self.expect
        self.run_cell("stream")
        card = self.sidebar.locator(".jp-agentrt-agent", has_text="writer")
        expect(card).to_have_class(re.compile("jp-mod-streaming"), timeout=20_000)
        counts = [self.count_up(card.locator(".jp-agentrt-stats"), r"([1-9][\d,]*) tokens")]
        if self.lab:
            counts.append(self.count_up(self.status, r"1 agent streaming · ([1-9][\d,]*) tokens"))
            # The cell's first widget made JupyterLab start a comm subshell, whose status
            # pair once left "Idle" here while the cell ran (the toolbar said busy).
            kernel = self.page.locator(".jp-StatusBar-Widget", has_text="Python 3")
            expect(kernel).to_contain_text("| Busy", timeout=3_000)
        self.shot("streaming")
        self.output("stream").get_by_role("button", name="Cancel").click()
        self.footer("stream", "CANCELLED")
        expect(self.output("stream")).to_contain_text("Echo: word0 word1")
        expect(card).not_to_have_class(re.compile("jp-mod-streaming"))
        assert all(later > first > 0 for first, later in counts), counts

    def count_up(self, locator: Any, pattern: str) -> tuple[int, int]:
        """Two token totals shown one after the other while the reply streams."""
        expect = self.expect
        expect(locator).to_have_text(re.compile(pattern), timeout=10_000)
        first = tokens(locator.text_content(), pattern)
        expect(locator).not_to_have_text(re.compile(rf"\b{first:,} tokens"))
        later = tokens(locator.text_content(), pattern)
        return first, later

    def cancel_from_sidebar(self) -> None:
        expect = self.expect
        self.run_cell("sidebar")
        card = self.sidebar.locator(".jp-agentrt-agent", has_text="sider")
        expect(card).to_have_class(re.compile("jp-mod-streaming"), timeout=20_000)
        card.get_by_role("button", name="Cancel").click()
        self.footer("sidebar", "CANCELLED")
        expect(card).not_to_have_class(re.compile("jp-mod-streaming"))

    def cancel_from_palette(self) -> None:
        expect = self.expect
        self.run_cell("palette")
        card = self.sidebar.locator(".jp-agentrt-agent", has_text="pal")
        expect(card).to_have_class(re.compile("jp-mod-streaming"), timeout=20_000)
        self.palette("Agents: Cancel all running turns")
        self.footer("palette", "CANCELLED")
        self.shot("palette-cancelled")

    def interrupt(self) -> None:
        expect = self.expect
        self.run_cell("interrupt")
        card = self.sidebar.locator(".jp-agentrt-agent", has_text="stopper")
        expect(card).to_have_class(re.compile("jp-mod-streaming"), timeout=20_000)
        self.command_mode("interrupt")
        self.page.keyboard.press("i")
        self.page.keyboard.press("i")
        errors = self.output("interrupt").locator(
            "[data-mime-type='application/vnd.jupyter.stderr']"
        )
        expect(errors).to_contain_text("TurnCancelled", timeout=15_000)
        assert self.output("interrupt").inner_text().count("TurnCancelled") == 1
        assert "Traceback" not in self.output("interrupt").inner_text()

    def broken_stream(self) -> None:
        """A stream that breaks keeps its partial reply and shows its error."""
        expect = self.expect
        self.run_cell("error")
        out = self.output("error")
        errors = out.locator("[data-mime-type='application/vnd.jupyter.stderr']")
        expect(errors).to_contain_text("StreamBroken", timeout=20_000)
        expect(errors).to_have_count(1)
        expect(out).to_contain_text("Echo: the connection")
        shown = out.inner_text()
        assert "Traceback" not in shown
        assert shown.count("StreamBroken") == 1, f"the error shows more than once: {shown!r}"
        self.shot("broken-stream")

    def panel_follows_and_reattaches(self) -> None:
        expect, page = self.expect, self.page
        self.run_cell("panel")
        panel = self.output("panel").locator(".agentrt-live")
        box = panel.locator(".agentrt-conversation")
        expect(box).to_contain_text("Echo: word0", timeout=20_000)  # the cancelled turn
        lines = "\n".join(f"line {i:02}" for i in range(PANEL_LINES))
        panel.locator("textarea").fill(f"@@delay 50\n{lines}")
        panel.get_by_role("button", name="Send").click()
        # The box overflows and shows its end while the reply streams.
        expect(box).to_contain_text("[streaming]", timeout=10_000)
        page.wait_for_function(
            """box => box.scrollHeight > box.clientHeight + 200
                && box.innerText.includes('[streaming]')
                && Math.abs(box.scrollTop) < 2""",
            arg=box.element_handle(),
            timeout=15_000,
        )
        self.shot("panel-following")
        # Scrolled up by the user, it stays where it was while the reply grows.
        box.hover()
        page.mouse.wheel(0, -250)
        page.wait_for_function("box => box.scrollTop < -150", arg=box.element_handle())
        height = box.evaluate("box => box.scrollHeight")
        page.wait_for_function(
            f"""box => box.scrollHeight > {height} + 100""",
            arg=box.element_handle(),
            timeout=15_000,
        )
        assert box.evaluate("box => box.scrollTop") < -150, "the box jumped back to the end"
        expect(box).not_to_contain_text("[streaming]", timeout=20_000)
        expect(box).to_contain_text(f"line {PANEL_LINES - 1:02}")
        # Shut down, then the name is created again by a cell: the panel re-attaches.
        panel.get_by_role("button", name="Shutdown").click()
        expect(panel).to_contain_text("shut down", timeout=10_000)
        expect(panel.get_by_role("button", name="Send")).to_be_disabled()
        self.run_cell("again")
        # The cell's reply streams in the panel too, not only once the cell has ended.
        page.wait_for_function(
            """box => box.innerText.includes('[streaming]')
                && box.innerText.includes('Echo: back again a')""",
            arg=box.element_handle(),
            timeout=15_000,
        )
        self.shot("panel-follows-a-cell")
        self.footer("again", "Echo: back again")
        expect(panel).to_contain_text("re-attached", timeout=10_000)
        expect(panel.get_by_role("button", name="Send")).to_be_enabled()
        expect(box).to_contain_text("Echo: back again")
        self.shot("panel-reattached")

    def blocking_cell_times_out(self) -> None:
        """A blocking (non-awaiting) cell holds comm messages back: after 5 s the UI says so,
        and the late reply clears it. The notebook's context menu has the command."""
        expect, page = self.expect, self.page
        self.run_cell("blocking")
        page.keyboard.press("Control+Shift+Period")
        toast = page.locator(".jp-toast-message", has_text="did not answer")
        expect(toast).to_be_visible(timeout=8_000)
        expect(self.sidebar.locator(".jp-agentrt-error")).to_contain_text("did not answer")
        expect(self.status).to_have_text(re.compile("⚠$"))
        expect(self.output("blocking")).to_contain_text("blocking cell done", timeout=10_000)
        expect(self.sidebar.locator(".jp-agentrt-error")).to_be_hidden()
        expect(self.status).not_to_have_text(re.compile("⚠"))
        self.cell("setup").locator(".jp-InputPrompt").click(button="right")
        expect(page.locator(".lm-Menu")).to_contain_text("Agents: Cancel all running turns")
        page.keyboard.press("Escape")

    def kernel_gone(self) -> None:
        """Once its kernel is shut down, a view says it is no longer live (it used to keep
        saying "1 running" with buttons that looked active)."""
        monitor = self.output("monitor").locator(".agentrt-live")
        self.expect(monitor).to_have_class(re.compile(r"\bagentrt-stale\b"), timeout=30_000)
        self.expect(monitor).to_have_css("pointer-events", "none")
        self.shot("kernel-gone")

    def reopened(self) -> None:
        """Without the kernel that made them, the widgets read as their static copies."""
        expect = self.expect
        expect(self.cells).to_have_count(len(CELLS), timeout=60_000)
        copy = self.output("panel").locator(".agentrt-snapshot")
        expect(copy).to_be_visible(timeout=30_000)
        expect(copy).to_contain_text(f"line {PANEL_LINES - 1:02}")
        expect(copy).to_contain_text("Echo: back again")
        monitor = self.output("monitor").locator(".agentrt-snapshot")
        expect(monitor).to_be_visible()
        expect(monitor).to_contain_text("sider")
        lingering = self.output("lingering").locator(".agentrt-snapshot")
        expect(lingering).to_be_visible()
        expect(lingering).to_contain_text(SAVED_MID_STREAM)
        copy.scroll_into_view_if_needed()
        self.shot("reopened-panel")
        monitor.scroll_into_view_if_needed()
        # The views did try to render, and failed: their error is there but hidden.
        dead = self.page.locator(".jp-OutputArea-output.jupyter-widgets", has_text=WIDGET_ERROR)
        expect(dead).to_have_count(3, timeout=30_000)  # panel, monitor, Cancel button
        for view in dead.all():
            expect(view).to_be_hidden()
        assert WIDGET_ERROR not in self.page.locator("body").inner_text()
        self.shot("reopened")


def tokens(text: str | None, pattern: str) -> int:
    match = re.search(pattern, text or "")
    assert match is not None, (text, pattern)
    return int(match.group(1).replace(",", ""))


def wait_saved(path: Path, timeout: float = 20.0) -> dict[str, Any]:
    """The notebook as saved, once the file holds the panel's final copy and the copy of
    the Cancel button of the reply still streaming."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            saved: dict[str, Any] = json.loads(path.read_text())
        except ValueError:  # read while the server writes it
            saved = {}
        text = json.dumps(saved)
        if "agentrt-snapshot" in text and "Echo: back again" in text and SAVED_MID_STREAM in text:
            return saved
        assert time.monotonic() < deadline, "the notebook was not saved"
        time.sleep(0.2)  # polling a file the server writes: nothing to wait on


def shut_down_kernels(server: Server, path: str) -> None:
    for session in server.api("GET", "/api/sessions"):
        if session["path"].endswith(path):
            server.api("DELETE", f"/api/sessions/{session['id']}")


def check_nbconvert(saved: dict[str, Any]) -> None:
    """nbconvert (what nbviewer runs) reads the saved notebook with no kernel."""
    import nbformat
    from nbconvert import HTMLExporter

    page, _ = HTMLExporter().from_notebook_node(nbformat.reads(json.dumps(saved), as_version=4))
    assert f"line {PANEL_LINES - 1:02}" in page
    assert "Echo: back again" in page
    assert WIDGET_ERROR not in page
