"""A real Jupyter kernel for tests, and a reader of its IOPub channel.

Every message read is kept (`Kernel.messages`), so a test can check where each output
landed by its parent header. Waits block on the channels with a deadline; nothing
sleeps. `AGENTRT_TEST_PYTHON` runs the kernel with another interpreter (e.g. a venv
with ipykernel 6.29) through a temporary kernelspec.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbformat.v4 import output_from_msg

Message = dict[str, Any]
KERNEL_PYTHON = os.environ.get("AGENTRT_TEST_PYTHON", sys.executable)
SPEC_NAME = "agentrt-test"


def kernelspec_dir(root: Path) -> Path:
    """A kernelspec running ipykernel with KERNEL_PYTHON; returns the kernels folder."""
    kernels = root / "kernels"
    spec = kernels / SPEC_NAME
    spec.mkdir(parents=True, exist_ok=True)
    argv = [KERNEL_PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec_json = {"argv": argv, "display_name": "agentrt test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(spec_json))
    return kernels


def kernel_env(home: Path, **extra: str) -> dict[str, str]:
    """The scripted backend, a store under `home`, no real API key."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_API_KEY", "GEMINI_API_KEY")}
    env.update(AGENTRT_BACKEND="scripted", AGENTRT_HOME=str(home))
    env.update(extra)
    return {k: v for k, v in env.items() if v}


class Kernel:
    """A started kernel with a blocking client; every IOPub message is recorded."""

    def __init__(self, km: KernelManager, kc: BlockingKernelClient) -> None:
        self.km = km
        self.kc = kc
        self.messages: list[Message] = []
        self.replies: dict[str, Message] = {}

    def submit(self, code: str) -> str:
        """Send an execute request; returns its msg_id at once."""
        msg_id: str = self.kc.execute(code, allow_stdin=False)
        return msg_id

    def pump(self, timeout: float) -> Message | None:
        """Read one IOPub message (None when none came within `timeout`)."""
        try:
            msg: Message = self.kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return None
        msg["received"] = time.monotonic()
        self.messages.append(msg)
        return msg

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 30.0) -> Message:
        """The first message (already read or arriving) that satisfies `predicate`."""
        for msg in self.messages:
            if predicate(msg):
                return msg
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            arrived = self.pump(left)
            if arrived is not None and predicate(arrived):
                return arrived
        raise TimeoutError("no matching IOPub message in time")

    def wait_idle(self, msg_id: str, timeout: float = 60.0) -> Message:
        """Wait until the cell `msg_id` is done; returns its execute_reply."""
        self.wait_for(
            lambda m: (
                m["msg_type"] == "status"
                and m["parent_header"].get("msg_id") == msg_id
                and m["content"]["execution_state"] == "idle"
            ),
            timeout,
        )
        return self.reply(msg_id, timeout)

    def reply(self, msg_id: str, timeout: float = 30.0) -> Message:
        deadline = time.monotonic() + timeout
        while msg_id not in self.replies:
            msg = self.kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
            self.replies[msg["parent_header"].get("msg_id")] = msg
        return self.replies[msg_id]

    def run(self, code: str, timeout: float = 60.0) -> Cell:
        msg_id = self.submit(code)
        reply = self.wait_idle(msg_id, timeout)
        return Cell(self, msg_id, reply)

    def of(self, msg_id: str) -> list[Message]:
        return [m for m in self.messages if m["parent_header"].get("msg_id") == msg_id]

    def click(self, comm_id: str) -> None:
        """What the front end sends when an ipywidgets Button is clicked."""
        content = {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}}
        self.kc.shell_channel.send(self.kc.session.msg("comm_msg", content))

    def value(self, expression: str) -> Any:
        """Evaluate `expression` in the kernel; its repr is read back with `eval`."""
        cell = self.run(f"print(repr({expression}))")
        assert cell.ok, cell.error
        return eval(cell.stdout.strip())


class Cell:
    """One executed cell: its reply and the IOPub messages it parented."""

    def __init__(self, kernel: Kernel, msg_id: str, reply: Message) -> None:
        self.kernel = kernel
        self.msg_id = msg_id
        self.reply = reply

    @property
    def messages(self) -> list[Message]:
        return self.kernel.of(self.msg_id)

    @property
    def ok(self) -> bool:
        return bool(self.reply["content"]["status"] == "ok")

    @property
    def error(self) -> Message | None:
        errors = [m for m in self.messages if m["msg_type"] == "error"]
        return errors[0]["content"] if errors else None

    @property
    def stdout(self) -> str:
        return self.stream("stdout")

    @property
    def stderr(self) -> str:
        """What the cell wrote to stderr (where IPython shows a UsageError, in one line)."""
        return self.stream("stderr")

    def stream(self, name: str) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.messages
            if m["msg_type"] == "stream" and m["content"]["name"] == name
        )


def display_id(msg: Message) -> str | None:
    transient = msg["content"].get("transient") or {}
    value = transient.get("display_id")
    return value if isinstance(value, str) else None


def displays(messages: list[Message], kind: str = "display_data") -> list[Message]:
    return [m for m in messages if m["msg_type"] == kind]


def reply_display(messages: list[Message]) -> str:
    """The display id of a %%agent cell's reply (its first display with an id)."""
    for msg in displays(messages):
        ident = display_id(msg)
        if ident is not None and not ident.endswith("-status"):
            return ident
    raise AssertionError("no reply display")


def saved_outputs(messages: list[Message]) -> list[dict[str, Any]]:
    """The outputs a front end holds (and a save writes) after these messages of a cell:
    each display updated in place by its display id, as JupyterLab and nbclient do."""
    outputs: list[dict[str, Any]] = []
    by_id: dict[str, list[dict[str, Any]]] = {}
    for msg in messages:
        kind = msg["msg_type"]
        if kind == "update_display_data":
            for output in by_id.get(display_id(msg) or "", []):
                output["data"] = msg["content"]["data"]
        elif kind in ("display_data", "execute_result", "stream", "error"):
            output = output_from_msg(msg)
            outputs.append(output)
            ident = display_id(msg)
            if ident is not None:
                by_id.setdefault(ident, []).append(output)
    return outputs


def shown_texts(outputs: list[dict[str, Any]]) -> list[str]:
    """What each output shows as text (its plain text, stream text or error line)."""
    texts = []
    for output in outputs:
        if output["output_type"] == "error":
            texts.append(f"{output['ename']}: {output['evalue']}")
        elif output["output_type"] == "stream":
            texts.append(str(output["text"]))
        else:
            texts.append(str(output["data"].get("text/plain", "")))
    return texts


def status_line_model(messages: list[Message]) -> str:
    """The comm id of the widget these messages displayed (a cell's status line)."""
    for msg in displays(messages):
        view = msg["content"]["data"].get("application/vnd.jupyter.widget-view+json")
        if view:
            return str(view["model_id"])
    raise AssertionError("no widget displayed")


def widget_states(kernel: Kernel) -> dict[str, dict[str, Any]]:
    """Every widget model the kernel opened so far, by comm id: its first state."""
    return {
        m["content"]["comm_id"]: m["content"]["data"]["state"]
        for m in kernel.messages
        if m["msg_type"] == "comm_open"
    }


def button_model(kernel: Kernel, messages: list[Message]) -> str:
    """The comm id of the Cancel button in the status line these messages displayed."""
    states = widget_states(kernel)
    line = status_line_model(messages)
    for child in states[line].get("children", []):
        model = child.removeprefix("IPY_MODEL_")
        if states[model].get("description") == "Cancel":
            return model
    raise AssertionError(f"no Cancel button in the status line {states[line]}")


def updates_of(kernel: Kernel, ident: str) -> list[Message]:
    return [
        m
        for m in kernel.messages
        if m["msg_type"] in ("display_data", "update_display_data") and display_id(m) == ident
    ]


@contextmanager
def started_kernel(
    home: Path, extra_arguments: list[str] | None = None, **env: str
) -> Iterator[Kernel]:
    """A kernel on KERNEL_PYTHON with the scripted backend and its store under `home`."""
    specs = KernelSpecManager(kernel_dirs=[str(kernelspec_dir(home / "jupyter"))])
    km = KernelManager(kernel_name=SPEC_NAME, kernel_spec_manager=specs)
    km.start_kernel(env=kernel_env(home, **env), extra_arguments=extra_arguments or [])
    kc = km.blocking_client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield Kernel(km, kc)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@contextmanager
def extension_kernel(
    home: Path, base_url: str, token: str, *cells: str, arguments: Sequence[str] = (), **env: str
) -> Iterator[Kernel]:
    """A kernel with the extension loaded and then `cells` run, its agents on the scripted
    server at `base_url` (more traitlets `arguments`, more `env`) and its store under
    `home`: kernels sharing `home` share the store, as kernels of one user do."""
    extra_arguments = [f"--AgentMagics.base_url={base_url}", *arguments]
    env = {"AGENTRT_BACKEND": "", "GOOGLE_API_KEY": token, **env}
    with started_kernel(home, extra_arguments=extra_arguments, **env) as kernel:
        for code in ("%load_ext agentrt_jupyter", *cells):
            cell = kernel.run(code)
            assert cell.ok, cell.error
        yield kernel


@contextmanager
def notebook_kernel(home: Path, notebook: str, base_url: str, token: str) -> Iterator[Kernel]:
    """An `extension_kernel` running `notebook` (as jupyter_server says:
    $JPY_SESSION_NAME)."""
    with extension_kernel(home, base_url, token, JPY_SESSION_NAME=notebook) as kernel:
        yield kernel
