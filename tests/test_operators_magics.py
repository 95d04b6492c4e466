"""`%%agent --filter DF` and `--classify DF --labels a,b,c` in IPython's in-process shell
(no kernel: nothing asks about the cost there), and in a real kernel: the cost question
(`AgentMagics.confirm_cost`) with real clicks, and a blocking call that cannot ask."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import StdinNotImplementedError

from agentrt_jupyter.batch.explain import OperatorPlan, PlanStep
from agentrt_jupyter.errors import CostNotApproved
from agentrt_jupyter.notebook.costgate import CellCostGate, kernel_cost_gate
from agentrt_jupyter.notebook.extension import loaded_magics
from agentrt_jupyter.server.process import LocalServer
from tests.conftest import requests_with
from tests.kernel_helpers import Kernel, Message, extension_kernel
from tests.shell_helpers import module_shell, run, usage_error

pytestmark = pytest.mark.timeout(90)

FRAME = """
import pandas as pd
reviews = pd.DataFrame({
    "text": ["late parcel", "lovely", "lost box"],
    "script": ['@@reply {"match": true, "label": "delivery"}',
               '@@reply {"match": false, "label": "praise"}',
               '@@reply {"match": true, "label": "refund"}'],
}, index=["a", "b", "c"])
"""


ip = module_shell(FRAME)


def test_a_filter_cell_keeps_the_matching_rows(ip: Any) -> None:
    assert run(ip, "%%agent --filter reviews --out kept\nAbout delivery: {text}\n{script}") is None
    kept = ip.user_ns["kept"]
    assert list(kept.index) == ["a", "c"]
    assert kept.attrs["agentrt"].progress.ok == 3


def test_a_classify_cell_gives_a_series_of_the_labels(ip: Any) -> None:
    line = "--classify reviews --labels delivery,praise --out kinds"
    assert run(ip, f"%%agent {line}\n{{text}}\n{{script}}") is None
    kinds = ip.user_ns["kinds"]
    assert list(kinds.dtype.categories) == ["delivery", "praise"]
    assert kinds.astype(object).where(kinds.notna(), None).tolist() == [
        "delivery",
        "praise",
        None,  # "refund" is no label: that row's error
    ]


def test_a_blocking_filter_cell_runs_too(ip: Any) -> None:
    ip.run_cell_magic("agent", "--filter reviews --out blocked", "{text}\n{script}")
    assert list(ip.user_ns["blocked"].index) == ["a", "c"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--classify reviews", "needs its labels"),
        ("--classify reviews --labels a,,b", "needs its labels"),
        ("--labels a,b", "--labels go with --classify"),
        ("--filter reviews --map reviews", "--map and --filter: a cell runs one of them"),
        ("name --filter reviews", "--filter runs a fresh agent on every row"),
        ("--classify reviews --labels a --background", "leave out --background"),
        ("--filter missing", "no 'missing'"),
        ("--filter pd", "needs a pandas DataFrame"),
    ],
)
def test_operator_flag_mistakes_are_usage_errors(ip: Any, line: str, message: str) -> None:
    assert message in usage_error(ip, f"%%agent {line}\n{{text}}")


def test_no_cost_gate_outside_a_kernel(ip: Any) -> None:
    assert kernel_cost_gate() is None


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory, server: LocalServer) -> Iterator[Kernel]:
    home = tmp_path_factory.mktemp("kernel-operators")
    arguments = ["--AgentMagics.confirm_cost=1e-9"]
    with extension_kernel(home, server.url, server.token, FRAME, arguments=arguments) as running:
        yield running


def button(kernel: Kernel, msg_id: str, label: str) -> str:
    """The comm id of the first button called `label` the cell `msg_id` made."""

    def made() -> list[str]:
        return [
            m["content"]["comm_id"]
            for m in kernel.of(msg_id)
            if m["msg_type"] == "comm_open"
            and m["content"]["data"]["state"].get("description") == label
        ]

    kernel.wait_for(lambda _m: bool(made()), timeout=60.0)
    return made()[0]


def tagged_cell(tag: str, line: str) -> str:
    return f"%%agent --model gemini-2.5-flash {line}\n{tag} {{text}}\n{{script}}"


def cost_question(messages: list[Message]) -> str:
    return " ".join(
        json.dumps(m["content"]["data"]["state"]) for m in messages if m["msg_type"] == "comm_open"
    )


@pytest.mark.kernel
def test_a_costly_filter_cell_asks_first_and_sends_nothing_when_cancelled(
    kernel: Kernel, server: LocalServer, tag: str
) -> None:
    msg_id = kernel.submit(tagged_cell(tag, "--filter reviews --out kept"))
    cancel = button(kernel, msg_id, "Cancel")
    assert "passes AgentMagics.confirm_cost" in cost_question(kernel.of(msg_id))
    assert requests_with(server, tag) == []  # asked before anything is sent

    kernel.click(cancel)
    reply = kernel.wait_idle(msg_id)

    assert reply["content"]["status"] == "error"
    assert "was not approved" in "".join(
        m["content"].get("text", "") for m in kernel.of(msg_id) if m["msg_type"] == "stream"
    )
    assert requests_with(server, tag) == []
    assert kernel.value("'kept' in globals()") is False


@pytest.mark.kernel
def test_an_approved_classify_cell_runs(kernel: Kernel, server: LocalServer, tag: str) -> None:
    msg_id = kernel.submit(tagged_cell(tag, "--classify reviews --labels delivery,refund --out k"))
    kernel.click(button(kernel, msg_id, "Approve"))
    reply = kernel.wait_idle(msg_id)

    assert reply["content"]["status"] == "ok"
    assert kernel.value("k.astype(object).where(k.notna(), None).tolist()") == [
        "delivery",
        None,
        "refund",
    ]
    assert len(requests_with(server, tag)) == 3


@pytest.mark.kernel
def test_a_blocking_call_cannot_be_asked_so_nothing_is_sent(
    kernel: Kernel, server: LocalServer, tag: str
) -> None:
    code = (
        "from agentrt_jupyter.notebook import kernel_runtime\n"
        f"kernel_runtime().map(reviews, '{tag} {{text}}', model='gemini-2.5-flash')"
    )
    cell = kernel.run(code)

    assert not cell.ok and cell.error is not None
    assert cell.error["ename"] == CostNotApproved.__name__
    assert "takes no typed answer" in cell.stderr
    assert requests_with(server, tag) == []
    explained = kernel.run(
        f"print(kernel_runtime().map(reviews, '{tag} {{text}}', model='gemini-2.5-flash', "
        "explain=True).calls)"
    )
    assert explained.stdout.strip() == "3"  # a plan is not a run: it never asks


def test_the_cost_threshold_is_a_setting(ip: Any) -> None:
    magics = loaded_magics(ip)
    assert magics.confirm_cost == 1.0
    ip.run_line_magic("config", "AgentMagics.confirm_cost = -1")  # refused, logged
    assert magics.confirm_cost == 1.0
    ip.run_line_magic("config", "AgentMagics.confirm_cost = None")
    try:
        assert magics.confirm_cost is None
    finally:
        ip.run_line_magic("config", "AgentMagics.confirm_cost = 1.0")


@pytest.mark.kernel
def test_the_cancel_button_of_a_filter_cell_keeps_the_finished_rows(
    kernel: Kernel, server: LocalServer, tag: str
) -> None:
    made = kernel.run(
        "%config AgentMagics.confirm_cost = None\n"
        "slow = reviews.copy()\n"
        "slow.loc['c', 'script'] = '@@fault hang'"
    )
    assert made.ok, made.error
    try:
        msg_id = kernel.submit(
            f"%%agent --filter slow --out kept\n{tag} [row] {{text}}\n{{script}}"
        )
        for text in ("late parcel", "lovely"):
            server.wait_for_request(server.wait_for_tagged(f"{tag} [row] {text}", 30)["id"], 30)
        server.wait_for_tagged(f"{tag} [row] lost box", 30)
        kernel.click(button(kernel, msg_id, "Cancel"))
        reply = kernel.wait_idle(msg_id)
    finally:
        assert kernel.run("%config AgentMagics.confirm_cost = 1e-9").ok

    assert reply["content"]["status"] == "ok"
    assert kernel.value("list(kept.index)") == ["a"]
    assert kernel.value("[(l, s) for l, s, _ in kept.attrs['agentrt'].unanswered]") == [
        ("c", "cancelled")
    ]


@pytest.mark.parametrize(("typed", "approved"), [("y", True), (" YES ", True), ("", False)])
def test_a_blocking_question_is_answered_on_stdin(
    monkeypatch: pytest.MonkeyPatch, typed: str, approved: bool
) -> None:
    asked: list[str] = []
    monkeypatch.setattr("builtins.input", lambda question: asked.append(question) or typed)
    plan = OperatorPlan("filter", (PlanStep("ask", "m", 10, 0, 100, 10, 2.5),))

    assert CellCostGate(1.0).ask(plan) is approved
    (question,) = asked
    assert question.startswith("filter plan: 10 calls")
    assert "~$2.5000, passes AgentMagics.confirm_cost=$1" in question


def test_a_kernel_without_stdin_counts_as_a_refusal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_stdin(_question: str) -> str:
        raise StdinNotImplementedError(
            "raw_input was called, but this frontend does not support input requests."
        )

    monkeypatch.setattr("builtins.input", no_stdin)
    plan = OperatorPlan("map", (PlanStep("map", "m", 1, 0, 1, 1, 5.0),))

    assert CellCostGate(1.0).ask(plan) is False
    assert "takes no typed answer (StdinNotImplementedError)" in capsys.readouterr().err
