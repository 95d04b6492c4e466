"""The `agentrt-jupyter` comm target in a real kernel, driven as the JupyterLab extension does.

The test client opens comms to the target over the shell channel and reads replies and
pushed snapshots from IOPub. The runtime is created in the kernel and registered with
`register_lab_comm` directly (what `%load_ext agentrt_jupyter` does).
"""

from __future__ import annotations

import json
import os
import queue
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import BlockingKernelClient, KernelManager

import agentrt_jupyter
from agentrt_jupyter.notebook import labcomm

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]

PACKAGE_JSON = Path(__file__).resolve().parent.parent / "labextension" / "package.json"

Message = dict[str, Any]

SETUP = """
from agentrt_jupyter import AgentRuntime, RuntimeConfig
from agentrt_jupyter.notebook.labcomm import register_lab_comm
rt = AgentRuntime(RuntimeConfig(backend="scripted", store_path=None))
current = {"runtime": rt}
register_lab_comm(get_ipython(), lambda: current["runtime"])
"""


class LabKernel:
    """A kernel plus a reader that files IOPub messages by comm and by parent."""

    def __init__(self, kc: BlockingKernelClient) -> None:
        self.kc = kc
        self.messages: list[Message] = []

    def pump(self, timeout: float) -> Message | None:
        try:
            msg: Message = self.kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return None
        msg["received"] = time.monotonic()
        self.messages.append(msg)
        return msg

    def wait_for(self, predicate: Any, timeout: float = 20.0, start: int = 0) -> Message:
        """The first IOPub message from index `start` on that satisfies `predicate`."""
        for msg in self.messages[start:]:
            if predicate(msg):
                return msg
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.pump(left)
            if msg is not None and predicate(msg):
                return msg
        raise TimeoutError("no matching IOPub message in time")

    def submit(self, code: str) -> str:
        msg_id: str = self.kc.execute(code, allow_stdin=False)
        return msg_id

    def finished(self, msg_id: str, timeout: float = 60.0) -> Message:
        return self.wait_for(
            lambda m: (
                m["msg_type"] == "status"
                and m["parent_header"].get("msg_id") == msg_id
                and m["content"]["execution_state"] == "idle"
            ),
            timeout,
        )

    def is_finished(self, msg_id: str) -> bool:
        return any(
            m["msg_type"] == "status"
            and m["parent_header"].get("msg_id") == msg_id
            and m["content"]["execution_state"] == "idle"
            for m in self.messages
        )

    def run(self, code: str) -> str:
        """Run a cell; returns its stdout; fails on an error."""
        msg_id = self.submit(code)
        self.finished(msg_id)
        mine = [m for m in self.messages if m["parent_header"].get("msg_id") == msg_id]
        errors = [m["content"] for m in mine if m["msg_type"] == "error"]
        assert not errors, errors
        return "".join(m["content"]["text"] for m in mine if m["msg_type"] == "stream")

    def open_comm(self) -> LabComm:
        comm_id = uuid.uuid4().hex
        content = {"comm_id": comm_id, "target_name": "agentrt-jupyter", "data": {}}
        self.kc.shell_channel.send(self.kc.session.msg("comm_open", content))
        return LabComm(self, comm_id, len(self.messages))


class LabComm:
    """The frontend's end of one comm."""

    def __init__(self, kernel: LabKernel, comm_id: str, start: int) -> None:
        self.kernel = kernel
        self.comm_id = comm_id
        self.start = start

    def send(self, data: object) -> int:
        """Send raw data; returns the IOPub index to read the answer from."""
        mark = len(self.kernel.messages)
        content = {"comm_id": self.comm_id, "data": data}
        self.kernel.kc.shell_channel.send(self.kernel.kc.session.msg("comm_msg", content))
        return mark

    def data(self, msg: Message) -> dict[str, Any] | None:
        if msg["msg_type"] != "comm_msg" or msg["content"]["comm_id"] != self.comm_id:
            return None
        data: dict[str, Any] = msg["content"]["data"]
        return data

    def reply(self, mark: int, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        def matches(msg: Message) -> bool:
            data = self.data(msg)
            return data is not None and data.get("kind") == "reply" and data["id"] == request_id

        found = self.data(self.kernel.wait_for(matches, timeout, start=mark))
        assert found is not None
        return found

    def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        request_id = uuid.uuid4().hex
        mark = self.send({"id": request_id, "kind": kind, **fields})
        return self.reply(mark, request_id)

    def snapshot(self, predicate: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The agents of the first pushed snapshot that satisfies `predicate`."""

        def matches(msg: Message) -> bool:
            data = self.data(msg)
            return data is not None and data["kind"] == "snapshot" and predicate(data["agents"])

        found = self.data(self.kernel.wait_for(matches, timeout, start=self.start))
        assert found is not None
        agents: list[dict[str, Any]] = found["agents"]
        return agents

    def was_closed(self, timeout: float = 10.0) -> bool:
        try:
            self.kernel.wait_for(
                lambda m: m["msg_type"] == "comm_close" and m["content"]["comm_id"] == self.comm_id,
                timeout,
                start=self.start,
            )
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        content = {"comm_id": self.comm_id, "data": {}}
        self.kernel.kc.shell_channel.send(self.kernel.kc.session.msg("comm_close", content))


@pytest.mark.timeout(10)
def test_the_lab_extension_matches_the_python_package() -> None:
    package = json.loads(PACKAGE_JSON.read_text())
    assert package["version"] == agentrt_jupyter.__version__
    (paths,) = agentrt_jupyter._jupyter_labextension_paths()
    assert package["name"] == paths["dest"]
    assert package["jupyterlab"]["outputDir"] == f"../agentrt_jupyter/{paths['src']}"
    assert labcomm.TARGET in (PACKAGE_JSON.parent / "src" / "protocol.ts").read_text()


@contextmanager
def started_lab_kernel(setup: str) -> Iterator[LabKernel]:
    """A real kernel that ran `setup` (which makes a runtime `rt`, shut down at the end)."""
    km = KernelManager(kernel_name="python3")
    # The environment as it is (a PYTHONPATH included): a given env replaces it whole.
    env = {**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    km.start_kernel(env=env, extra_arguments=[])
    kc = km.blocking_client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        lab = LabKernel(kc)
        lab.run(setup)
        yield lab
        lab.run("rt.shutdown(10)")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel() -> Iterator[LabKernel]:
    with started_lab_kernel(SETUP) as lab:
        yield lab


@pytest.fixture
def comm(kernel: LabKernel) -> Iterator[LabComm]:
    opened = kernel.open_comm()
    yield opened
    opened.close()


def test_list_reports_every_agent_with_its_usage(kernel: LabKernel, comm: LabComm) -> None:
    kernel.run("alpha = rt.create_agent(name='alpha'); alpha.chat('hello').text(timeout=20)")
    reply = comm.request("list")
    assert reply["ok"] is True
    (row,) = [a for a in reply["agents"] if a["name"] == "alpha"]
    assert row["state"] == "idle"
    assert row["turn_count"] == 1
    assert row["current_turn"] is None and row["running_for"] is None
    assert row["usage"]["total_tokens"] > 0
    assert set(row) == {
        "id", "name", "model", "state", "turn_count", "queued",
        "current_turn", "running_for", "usage",
    }  # fmt: skip


def test_the_kernel_pushes_a_snapshot_when_agents_change(kernel: LabKernel, comm: LabComm) -> None:
    comm.snapshot(lambda agents: True)
    kernel.run("rt.create_agent(name='pushed')")
    agents = comm.snapshot(lambda agents: any(a["name"] == "pushed" for a in agents))
    assert all("usage" in a for a in agents)


@pytest.mark.parametrize(
    ("data", "echoed_id", "says"),
    [
        (["not", "an", "object"], "", "JSON object"),
        ({"kind": "list"}, "", "'id'"),
        ({"id": "r1", "kind": "explode"}, "r1", "unknown kind"),
        ({"id": "r2", "kind": "cancel"}, "r2", "'agent'"),
        ({"id": "r3", "kind": "cancel", "agent": 7}, "r3", "'agent'"),
    ],
)
def test_a_bad_request_gets_an_error_reply(
    comm: LabComm, data: object, echoed_id: str, says: str
) -> None:
    mark = comm.send(data)
    reply = comm.reply(mark, echoed_id)
    assert reply["ok"] is False
    assert reply["code"] == "bad_request"
    assert says in reply["error"]


def test_cancelling_an_unknown_agent_is_an_error_reply(comm: LabComm) -> None:
    reply = comm.request("cancel", agent="nobody")
    assert reply["ok"] is False
    assert reply["code"] == "not_found"
    assert "nobody" in reply["error"]


def test_cancel_of_an_idle_agent_cancels_nothing(kernel: LabKernel, comm: LabComm) -> None:
    kernel.run("rt.create_agent(name='resting')")
    reply = comm.request("cancel", agent="resting")
    assert reply == {"id": reply["id"], "kind": "reply", "ok": True, "cancelled": 0}


def test_cancel_all_stops_a_hanging_turn_while_its_awaiting_cell_runs(
    kernel: LabKernel, comm: LabComm
) -> None:
    kernel.run("hanger = rt.create_agent(name='hanger'); idler = rt.create_agent(name='idler')")
    cell = kernel.submit(
        "from agentrt_jupyter import TurnCancelled\n"
        "try:\n"
        "    await hanger.chat('@@fault hang\\nwait forever')\n"
        "except TurnCancelled:\n"
        "    print('turn cancelled')\n"
    )
    agents = comm.snapshot(
        lambda agents: any(a["name"] == "hanger" and a["current_turn"] for a in agents)
    )
    assert [a["name"] for a in agents if a["current_turn"]] == ["hanger"]
    assert not kernel.is_finished(cell)

    reply = comm.request("cancel_all")
    assert reply == {"id": reply["id"], "kind": "reply", "ok": True, "cancelled": 1}

    kernel.finished(cell, timeout=10)
    stdout = [
        m["content"]["text"]
        for m in kernel.messages
        if m["parent_header"].get("msg_id") == cell and m["msg_type"] == "stream"
    ]
    assert stdout == ["turn cancelled\n"]
    after = comm.request("list")["agents"]
    assert all(a["current_turn"] is None for a in after)
    assert comm.request("cancel_all")["cancelled"] == 0


def test_cancel_by_name_stops_that_agents_turn(kernel: LabKernel, comm: LabComm) -> None:
    kernel.run("solo = rt.create_agent(name='solo'); h = solo.chat('@@fault hang\\nforever')")
    comm.snapshot(lambda agents: any(a["name"] == "solo" and a["current_turn"] for a in agents))
    assert comm.request("cancel", agent="solo")["cancelled"] == 1
    waited = kernel.run(
        "from agentrt_jupyter import TurnCancelled\n"
        "try:\n"
        "    h.result(timeout=10)\n"
        "except TurnCancelled:\n"
        "    print(h.outcome().status)\n"
    )
    assert waited.strip() == "cancelled"


def test_without_a_runtime_the_comm_is_closed_and_requests_say_so(
    kernel: LabKernel, comm: LabComm
) -> None:
    assert comm.request("list")["ok"] is True
    kernel.run("current['runtime'] = None")
    try:
        reply = comm.request("list")
        assert reply["ok"] is False and reply["code"] == "no_runtime"
        assert comm.was_closed(), "the open comm is closed once the runtime is gone"
        late = kernel.open_comm()
        assert late.was_closed(), "opening without a runtime is refused"
    finally:
        kernel.run("current['runtime'] = rt")
    again = kernel.open_comm()
    assert again.request("list")["ok"] is True
    assert not again.was_closed(timeout=0.5)
    again.close()


def test_snapshots_count_tokens_up_while_a_reply_streams(kernel: LabKernel, comm: LabComm) -> None:
    kernel.run("counter = rt.create_agent(name='counter')")
    kernel.run("h = counter.chat('@@delay 40\\n' + ' '.join(['word'] * 30))")
    streaming: set[int] = set()

    def counted(agents: list[dict[str, Any]]) -> bool:
        for row in agents:
            if row["name"] == "counter" and row["current_turn"] is not None:
                streaming.add(row["usage"]["total_tokens"])
        streaming.discard(0)
        return len(streaming) >= 3

    comm.snapshot(counted, timeout=20)
    total = int(kernel.run("h.text(timeout=20)\nprint(counter.total_usage().total_tokens)"))
    assert max(streaming) <= total
    comm.snapshot(
        lambda agents: any(
            a["name"] == "counter"
            and a["current_turn"] is None
            and a["usage"]["total_tokens"] == total
            for a in agents
        )
    )


def test_a_runtime_shut_down_under_an_open_comm_closes_it(kernel: LabKernel) -> None:
    kernel.run(
        "other = AgentRuntime(RuntimeConfig(backend='scripted', store_path=None))\n"
        "current['runtime'] = other"
    )
    try:
        comm = kernel.open_comm()
        assert comm.request("list")["ok"] is True
        comm.snapshot(lambda agents: True)
        kernel.run("other.shutdown(10)")
        assert comm.was_closed(), "the comm is closed once its runtime stops"
    finally:
        kernel.run("current['runtime'] = rt")
