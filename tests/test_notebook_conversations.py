"""Where conversations live, checked end to end in real kernels (issue 9, the notebook side).

Kernels talk to the session's scripted server, whose request log is the witness of what
each agent saw; the store file is read from this process with `Store` to count what was
kept. Each kernel runs a notebook as jupyter_server starts it ($JPY_SESSION_NAME).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from copy import deepcopy
from pathlib import Path
from typing import Any

import nbformat
import pytest
from IPython.core.error import UsageError
from nbclient import NotebookClient

from agentrt_jupyter.content import TextPart
from agentrt_jupyter.conversation import ConversationMessage
from agentrt_jupyter.notebook.agents import notebook_namespace
from agentrt_jupyter.notebook.extension import loaded_magics
from agentrt_jupyter.server.process import LocalServer
from agentrt_jupyter.store import Store
from tests.conftest import assert_valid_conversation, requests_with, wait_finished
from tests.kernel_helpers import Kernel, notebook_kernel
from tests.shell_helpers import agent_shell, run
from tests.test_store import read_only

STORE = "conversations.sqlite3"
QUICKSTART = Path(__file__).parent.parent / "notebooks" / "quickstart.ipynb"
DELAY_MS = 200
WORDS = [f"w{i}" for i in range(40)]
SLOW = f"@@delay {DELAY_MS}\n@@reply {' '.join(WORDS)}"
"""Eight seconds of one-word chunks, one every 200 ms."""
RUNTIME = "__import__('agentrt_jupyter.notebook').notebook.kernel_runtime()"
"""The kernel's runtime, as an expression for `Kernel.value`."""


@pytest.mark.parametrize(
    ("environ", "user_ns", "connection_file", "expected"),
    [
        ({"JPY_SESSION_NAME": "work/a.ipynb"}, {"__session__": "b"}, "k.json", "work/a.ipynb"),
        ({}, {"__session__": "work/b.ipynb"}, "k.json", "work/b.ipynb"),
        ({}, {"__vsc_ipynb_file__": "/home/u/c.ipynb"}, "k.json", "/home/u/c.ipynb"),
        (
            {"JPY_SESSION_NAME": ""},
            {"__session__": None},
            "/run/kernel-1.json",
            "/run/kernel-1.json",
        ),
        ({"JPY_SESSION_NAME": " "}, {"__session__": "nul\0"}, None, "default"),
        ({}, {}, None, "default"),
    ],
)
def test_the_namespace_is_the_notebook_the_kernel_runs(
    environ: dict[str, str], user_ns: dict[str, Any], connection_file: str | None, expected: str
) -> None:
    assert notebook_namespace(environ, user_ns, connection_file) == expected


@pytest.fixture(scope="module")
def ip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """IPython's test shell running notebook "inproc.ipynb" on the embedded scripted server."""
    home = tmp_path_factory.mktemp("home")
    with agent_shell(home, JPY_SESSION_NAME="inproc.ipynb") as shell:
        yield shell


def test_cells_replay_recorded_replies_unless_refreshed_or_turned_off(
    ip: Any, tag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cache key is the request, not the agent: a second agent asking the same first
    question gets the recorded reply, streamed, marked replayed and billed nothing."""
    assert run(ip, f"%%agent c1 --out r1\n{tag} one two three") is None
    assert run(ip, f"%%agent c2 --out r2\n{tag} one two three") is None
    first, replayed = ip.user_ns["r1"], ip.user_ns["r2"]
    assert not first.replayed and replayed.replayed
    assert replayed.text == first.text and replayed.saved_tokens == first.usage.total_tokens
    assert replayed.usage.total_tokens == 0
    assert run(ip, f"%%agent c3 --refresh --out r3\n{tag} one two three") is None
    assert not ip.user_ns["r3"].replayed
    ip.run_line_magic("agent", "cache")
    assert "reply cache: 1 reply" in capsys.readouterr().out
    ip.run_line_magic("config", "AgentMagics.cache = False")
    try:
        assert run(ip, f"%%agent c4 --out r4\n{tag} one two three") is None
        assert not ip.user_ns["r4"].replayed
        assert run(ip, f"%%agent c2 --out r5\n{tag} four") is None  # reconfigured, kept
        runtime = loaded_magics(ip).runtime
        assert [m.text for m in runtime.history("c2")][-2:] == [f"{tag} four", f"Echo: {tag} four"]
        assert len(runtime.history("c2")) == 4
    finally:
        ip.run_line_magic("config", "AgentMagics.cache = True")
    ledger = ip.run_line_magic("agent", "ledger")
    statuses = {name: list(ledger[ledger["agent"] == name]["status"]) for name in ("c1", "c2")}
    assert statuses == {"c1": ["ok"], "c2": ["replayed", "ok"]}
    ip.run_line_magic("agent", "cache clear")
    assert loaded_magics(ip).runtime.cache_stats()["entries"] == 0


def test_stored_conversations_are_listed_per_notebook(ip: Any, tag: str) -> None:
    assert run(ip, f"%%agent lister\n{tag} hello") is None
    stored = ip.run_line_magic("agent", "list --stored")
    row = stored[stored["name"] == "lister"].iloc[0]
    assert list(stored.columns) == [
        "name", "created", "last_activity", "turns", "messages", "size", "holder", "id"
    ]  # fmt: skip
    assert (row["turns"], row["messages"]) == (1, 2)
    assert row["last_activity"].microsecond == 0 and row["last_activity"].tzinfo is None
    assert row["size"].endswith("B") and f"pid {os.getpid()}" in row["holder"]
    everywhere = ip.run_line_magic("agent", "list --stored --all")
    assert everywhere.columns[0] == "namespace"
    assert "inproc.ipynb" in set(everywhere["namespace"])
    assert "lister" in set(ip.run_line_magic("agent", "list")["name"])


def test_conversations_of_one_name_are_told_apart_by_when_they_were_created(
    ip: Any, tag: str
) -> None:
    """As after a restart and Run All: a fresh conversation of a used name, the same turns."""
    assert run(ip, f"%%agent twin\n{tag} same") is None
    runtime = loaded_magics(ip).runtime
    runtime.shutdown_agent("twin")
    runtime.create_agent(name="twin", fresh=True).chat(f"{tag} same").result(timeout=20)
    stored = ip.run_line_magic("agent", "list --stored")
    twins = stored[stored["name"] == "twin"]
    kept = {c.id: c for c in runtime.conversations() if c.name == "twin"}
    assert set(twins["id"]) == set(kept) and len(kept) == 2
    for _, row in twins.iterrows():
        created = kept[row["id"]].created.astimezone().replace(tzinfo=None, microsecond=0)
        assert row["created"] == created
    assert list(twins["last_activity"]) == sorted(twins["last_activity"], reverse=True)


def test_a_new_runtime_in_the_same_kernel_continues_the_names_it_used(ip: Any, tag: str) -> None:
    assert run(ip, f"%%agent kept\n{tag} one") is None
    ip.run_line_magic("agent", "shutdown")
    assert run(ip, f"%%agent kept\n{tag} two") is None
    shown = [m.text for m in loaded_magics(ip).runtime.history("kept")]
    assert shown == [f"{tag} one", f"Echo: {tag} one", f"{tag} two", f"Echo: {tag} two"]


def test_a_conversation_another_writer_holds_is_refused_in_one_line(ip: Any) -> None:
    runtime = loaded_magics(ip).runtime
    assert runtime.config.store_path is not None
    with Store(runtime.config.store_path, holder="kernel other.json") as other:
        other.create(runtime.config.namespace, "held", {})
        with pytest.raises(UsageError) as refused:
            ip.run_line_magic("agent", "resume held")
        message = str(refused.value)
        assert "kernel other.json" in message and "%agent resume held --take-over" in message
        assert "\n" not in message
        with pytest.raises(UsageError, match="%agent resume held brings back"):
            ip.run_line_magic("agent", "history held")
        ip.run_line_magic("agent", "resume held --take-over")
        assert runtime.is_idle("held")
        assert other.heartbeat() != []  # the other writer learns it lost the conversation


def test_a_cell_with_resume_continues_the_stored_conversation_and_its_settings(
    ip: Any, tag: str
) -> None:
    """As after a kernel restart: the conversation was written by a store now closed."""
    runtime = loaded_magics(ip).runtime
    assert runtime.config.store_path is not None
    with Store(runtime.config.store_path, holder="kernel gone.json") as earlier:
        stored = earlier.create(runtime.config.namespace, "earlier", {"system_instruction": "Hi"})
        earlier.append_message(stored, ConversationMessage("user", (TextPart(f"{tag} a"),), 1))
        earlier.append_message(stored, ConversationMessage("model", (TextPart("Echo: a"),), 1))
    assert run(ip, f"%%agent earlier --resume\n{tag} b") is None
    assert [m.text for m in runtime.history("earlier")] == [
        f"{tag} a", "Echo: a", f"{tag} b", f"Echo: {tag} b"
    ]  # fmt: skip
    assert runtime.local_server is not None
    sent = runtime.local_server.last_request()["body"]
    assert sent["systemInstruction"]["parts"] == [{"text": "Hi"}]
    assert len(sent["contents"]) == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%agent resume", "needs the NAME"),
        ("%agent resume nobody", "no stored conversation 'nobody' in this notebook"),
        ("%agent list --take-over", "unrecognized arguments: --take-over"),
        ("%agent usage --stored", "unrecognized arguments: --stored"),
        ("%agent cache someone", "takes no agent name"),
        ("%%agent x --new --resume\nhi", "pick one"),
        ("%%agent nobody --resume\nhi", "no stored conversation 'nobody'"),
    ],
)
def test_resume_and_cache_mistakes_are_usage_errors(ip: Any, line: str, message: str) -> None:
    error = run(ip, line)
    assert type(error) is UsageError
    assert message in str(error)


def kernels(stack: ExitStack, home: Path, server: LocalServer, *notebooks: str) -> list[Kernel]:
    return [
        stack.enter_context(notebook_kernel(home, notebook, server.url, server.token))
        for notebook in notebooks
    ]


def texts(request: dict[str, Any]) -> list[str]:
    """Every text part of a logged request's contents, in order."""
    return [p["text"] for c in request["body"]["contents"] for p in c["parts"] if "text" in p]


def frame_column(kernel: Kernel, line: str, column: str) -> list[Any]:
    """A column of the DataFrame that `%agent LINE` returns in `kernel`."""
    cell = kernel.run(f"_frame = %agent {line}")
    assert cell.ok, cell.error
    return list(kernel.value(f"list(_frame[{column!r}])"))


@pytest.mark.kernel
def test_two_notebooks_default_agents_never_see_each_other(
    tmp_path: Path, server: LocalServer, tag: str
) -> None:
    with ExitStack() as stack:
        a, b = kernels(stack, tmp_path, server, "work/a.ipynb", "work/b.ipynb")
        for kernel, word in ((a, "alpha"), (b, "beta"), (a, "alpha"), (b, "beta")):
            cell = kernel.run(f"%%agent\n{tag} {word}")
            assert cell.ok, cell.error
        assert a.run(f"%%agent keeper\n{tag} alpha kept").ok
        requests = wait_finished(server, tag, 5)
        for request in requests:
            word = "alpha" if "alpha" in texts(request)[-1] else "beta"
            assert all(word in text for text in texts(request)), texts(request)
        assert [len(r["body"]["contents"]) for r in requests[:4]] == [1, 1, 3, 3]
        assert sorted(frame_column(a, "list --stored", "name")) == ["default", "keeper"]
        assert sorted(set(frame_column(a, "list --stored --all", "namespace"))) == [
            "work/a.ipynb",
            "work/b.ipynb",
        ]
        assert "notebook (namespace): work/a.ipynb" in a.run("%agent config").stdout
    with notebook_kernel(tmp_path, "work/a.ipynb", server.url, server.token) as restarted:
        cell = restarted.run(f"%%agent\n{tag} alpha after restart")
        assert cell.ok, cell.error
        assert len(requests_with(server, tag)[-1]["body"]["contents"]) == 1  # fresh
        resumed = restarted.run("%agent resume keeper")
        assert resumed.ok, resumed.error
        assert "keeper: resumed, 1 turn, 2 messages" in resumed.stdout
        assert restarted.run(f"%%agent keeper\n{tag} alpha again").ok
        assert texts(wait_finished(server, tag, 7)[-1]) == [
            f"{tag} alpha kept",
            f"Echo: {tag} alpha kept",
            f"{tag} alpha again",
        ]


@pytest.mark.kernel
@pytest.mark.slow
def test_two_kernels_on_one_notebook_and_name_keep_every_turn(
    tmp_path: Path, server: LocalServer, tag: str
) -> None:
    notebook = "shared.ipynb"
    with ExitStack() as stack:
        first, second = kernels(stack, tmp_path, server, notebook, notebook)
        for turn in range(10):
            for kernel, who in ((first, "one"), (second, "two")):
                cell = kernel.run(f"%%agent shared\n{tag} {who} {turn}")
                assert cell.ok, cell.error
        ledger_rows = len(frame_column(second, "ledger", "turn"))
        assert second.run("%agent shutdown shared").ok
        assert first.run(f"%%agent shared\n{tag} one 10").ok
        refused = second.run("%agent resume shared")
        assert refused.reply["content"]["ename"] == "UsageError"
        [line] = refused.stderr.splitlines()
        first_pid = first.value("__import__('os').getpid()")
        assert f"pid {first_pid}" in line and "%agent resume shared --take-over" in line
        ledger_rows += len(frame_column(first, "ledger", "turn"))
        requests = wait_finished(server, tag, 21)
        for request in requests:
            who = texts(request)[-1].split()[1]
            assert all(f" {who} " in text for text in texts(request)), texts(request)
        with Store(tmp_path / STORE) as store:
            stored = [c for c in store.conversations(notebook) if c.name == "shared"]
            loaded = [store.load(c.id) for c in stored]
    assert sorted(c.turns for c in stored) == [10, 11]
    messages = [m for c in loaded if c is not None for m in c.conversation.messages]
    ledger = [e for c in loaded if c is not None for e in c.conversation.ledger]
    model_messages = [m for m in messages if m.role == "model"]
    assert len(requests) == ledger_rows == len(ledger) == len(model_messages) == 21
    assert len(messages) == 42
    assert {m.status for m in messages} == {"complete"}


def run_notebook(notebook: Any, home: Path) -> Any:
    """Run All in a new kernel of notebook "quickstart.ipynb", on the embedded scripted server.

    The last cell, added here, prints what that server was asked: the prompt of each
    model request (none if the server never started)."""
    witness = nbformat.v4.new_code_cell(
        "import json\n"
        "from agentrt_jupyter.notebook import kernel_runtime\n"
        "server = kernel_runtime().local_server  # started at the first model call\n"
        "print(json.dumps([r['body']['contents'][-1]['parts'][-1].get('text') "
        "for r in (server.requests() if server else []) "
        "if r['kind'] in ('generate', 'stream')]))"
    )
    copy = deepcopy(notebook)
    copy.cells.append(witness)
    client = NotebookClient(copy, timeout=60, kernel_name="python3")
    client.execute(env=_notebook_env(home))
    return copy


def _notebook_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_API_KEY", "GEMINI_API_KEY")}
    env.update(AGENTRT_BACKEND="scripted", AGENTRT_HOME=str(home))
    env["JPY_SESSION_NAME"] = "notebooks/quickstart.ipynb"
    return env


def asked(run: Any) -> list[str]:
    return list(json.loads(run.cells[-1].outputs[-1]["text"]))


def agent_outputs(run: Any) -> list[tuple[list[str], str]]:
    """Each %%agent cell's reply texts, and its footer."""
    shown = []
    for cell in run.cells:
        if cell.cell_type != "code" or not cell.source.startswith("%%agent"):
            continue
        plain = [str(o.get("data", {}).get("text/plain", "")) for o in cell.outputs]
        footers = [t for t in plain if " in / " in t and "first token" in t]
        assert len(footers) == 1, plain
        # A reply that streamed live leaves its Cancel button's display blank: not shown.
        shown.append(([t for t in plain if t not in footers and t], footers[0]))
    return shown


def python_api_output(run: Any) -> str:
    [cell] = [c for c in run.cells if "rt.create_agent" in c.source]
    return "".join(o.get("text", "") for o in cell.outputs)


@pytest.mark.kernel
@pytest.mark.slow
def test_restart_and_run_all_replays_unchanged_cells_and_goes_live_from_an_edit(
    tmp_path: Path,
) -> None:
    notebook: Any = nbformat.read(QUICKSTART, as_version=4)
    first = run_notebook(notebook, tmp_path)
    live = asked(first)
    assert len(live) == 4, live  # three %%agent cells and one Python API turn
    again = run_notebook(notebook, tmp_path)
    assert asked(again) == []
    before, after = agent_outputs(first), agent_outputs(again)
    assert [texts for texts, _ in after] == [texts for texts, _ in before]
    assert all("replayed from the reply cache" in footer for _, footer in after)
    assert not any("replayed" in footer for _, footer in before)
    assert python_api_output(again) == python_api_output(first)
    [edited] = [c for c in notebook.cells if "what is a Jupyter kernel?" in c.source]
    edited.source = edited.source.replace("a Jupyter kernel", "an IPython kernel")
    third = run_notebook(notebook, tmp_path)
    assert asked(third) == [live[0].replace("a Jupyter kernel", "an IPython kernel"), live[1]]
    footers = [footer for _, footer in agent_outputs(third)]
    assert ["replayed" in footer for footer in footers] == [False, False, True]


def kill(kernel: Kernel, pid: int) -> None:
    """kill -9 of the kernel process: nothing of it runs any more, no finalizer, no atexit."""
    os.kill(pid, signal.SIGKILL)
    kernel.km.provisioner.process.wait(timeout=10)


TOOL_CELL = '''
import threading
from agentrt_jupyter.notebook import kernel_runtime
never = threading.Event()
def hold(city: str) -> str:
    """Blocks until the kernel dies."""
    print("tool running", flush=True)
    never.wait()
    return "never"
tooly = kernel_runtime().create_agent(name="tooly", tools=[hold])
tooly.chat("{tag} weather\\n@@call hold {{\\"city\\": \\"Paris\\"}}")
'''


@pytest.mark.kernel
@pytest.mark.slow
def test_kill_9_mid_stream_and_mid_tool_call_then_resume(
    tmp_path: Path, server: LocalServer, tag: str
) -> None:
    notebook = "crash.ipynb"
    with notebook_kernel(tmp_path, notebook, server.url, server.token) as doomed:
        pid = doomed.value("__import__('os').getpid()")
        streaming = doomed.run(f"%%agent streamy --background\n{tag} stream\n{SLOW}")
        assert streaming.ok, streaming.error
        assert doomed.run(TOOL_CELL.format(tag=tag)).ok
        doomed.wait_for(
            lambda m: m["msg_type"] == "stream" and "tool running" in m["content"]["text"]
        )
        doomed.wait_for(
            lambda m: (
                m["msg_type"] == "update_display_data"
                and "w15" in str(m["content"]["data"].get("text/plain", ""))
            )
        )
        kill(doomed, pid)
    stream_request = next(r for r in requests_with(server, tag) if "stream" in texts(r)[-1])
    sent = server.wait_for_request(stream_request["id"])["chunks_sent"]
    with notebook_kernel(tmp_path, notebook, server.url, server.token) as kernel:
        resumed = kernel.run("%agent resume streamy")
        assert resumed.ok, resumed.error
        assert "(its last reply was cut off: incomplete)" in resumed.stdout
        history = kernel.value(
            f"[(m.role, m.status, m.text) for m in {RUNTIME}.history('streamy')]"
        )
        assert [(role, status) for role, status, _ in history] == [
            ("user", "complete"),
            ("model", "incomplete"),
        ]
        kept = history[1][2].split()
        assert kept == WORDS[: len(kept)]
        assert sent - len(kept) <= 1000 // DELAY_MS + 3, (sent, len(kept))
        assert kernel.run("%agent resume tooly").ok
        tool_history = kernel.value(
            f"[(m.role, [type(p).__name__ for p in m.parts]) for m in {RUNTIME}.history('tooly')]"
        )
        assert tool_history == [
            ("user", ["TextPart"]),
            ("model", ["FunctionCallPart"]),
            ("user", ["FunctionResponsePart"]),
        ]
        for name in ("streamy", "tooly"):
            cell = kernel.run(f"%%agent {name}\n{tag} {name} after the crash")
            assert cell.ok, cell.error
        after = requests_with(server, tag)[-2:]
        for request in after:
            assert_valid_conversation(request["body"]["contents"])
        interrupted = [
            p["functionResponse"]
            for c in after[1]["body"]["contents"]
            for p in c["parts"]
            if "functionResponse" in p
        ]
        assert len(interrupted) == 1 and "interrupted" in json.dumps(interrupted[0])


@pytest.fixture
def corrupt_home(tmp_path: Path) -> Path:
    (tmp_path / STORE).write_bytes(os.urandom(4096))
    return tmp_path


@pytest.fixture
def read_only_home(tmp_path: Path) -> Iterator[Path]:
    Store(tmp_path / STORE).close()
    with read_only(tmp_path / STORE):
        yield tmp_path


@pytest.mark.kernel
@pytest.mark.parametrize("home_kind", ["corrupt_home", "read_only_home"])
def test_a_broken_store_is_one_line_and_cells_still_answer(
    request: pytest.FixtureRequest, server: LocalServer, tag: str, home_kind: str
) -> None:
    home: Path = request.getfixturevalue(home_kind)
    path = str(home / STORE)
    with notebook_kernel(home, "broken.ipynb", server.url, server.token) as kernel:
        loaded = [m for m in kernel.messages if m["msg_type"] in ("stream", "error")]
        said = [line for m in loaded for line in m["content"].get("text", "").splitlines()]
        assert len(said) == 1 and path in said[0] and "not stored" in said[0], said
        cell = kernel.run(f"%%agent\n{tag} still here")
        assert cell.ok, cell.error
        assert not [m for m in cell.messages if m["msg_type"] == "stream"]
        assert texts(wait_finished(server, tag)[0]) == [f"{tag} still here"]
        assert "(not used: cannot open the store" in kernel.run("%agent config").stdout
