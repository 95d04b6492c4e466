"""`runtime.map(mode="batch")` on OpenAI's Batch API and Anthropic's Message Batches: the
real openai and anthropic SDKs over HTTP to the local server's batch routes.

Each test runs once per provider. The witnesses are the server's request log and the
server's own account of each batch, read back through the provider's SDK: its request
counts must match the rows the frame says were sent, answered, failed or cancelled.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from agentrt_jupyter import AgentRuntime, InvalidConfig
from agentrt_jupyter.batch import PRICES, start_map
from agentrt_jupyter.server.batches import DEFAULT_DELAY
from agentrt_jupyter.server.process import LocalServer

from .conftest import runtime_config
from .killed_kernel import kill_9_midway

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

pytestmark = pytest.mark.timeout(90)


@dataclass(frozen=True)
class Provider:
    """How a map reaches one provider's Batch API on the local server."""

    name: str
    model: str
    state_done: str

    def base_url(self, server: LocalServer) -> str:
        if self.name == "openai":
            return server.openai_base_url
        return server.anthropic_base_url

    def settings(self, server: LocalServer, **more: Any) -> dict[str, Any]:
        """map's keywords for every row's agent on this provider."""
        return {
            "mode": "batch",
            "model": f"{self.name}:{self.model}",
            "api_key": server.token,
            "base_url": self.base_url(server),
            **more,
        }

    def counts(self, server: LocalServer, job: str) -> dict[str, int]:
        """The server's request counts of batch `job`, read through the provider's SDK."""
        if self.name == "openai":
            with openai.OpenAI(
                api_key=server.token, base_url=server.openai_base_url, max_retries=0
            ) as client:
                counts = client.batches.retrieve(job).request_counts
                return {
                    "total": counts.total,
                    "ok": counts.completed,
                    "failed": counts.failed,
                    "cancelled": counts.total - counts.completed - counts.failed,
                }
        with anthropic.Anthropic(
            api_key=server.token, base_url=server.anthropic_base_url, max_retries=0
        ) as client:
            c = client.messages.batches.retrieve(job).request_counts
            return {
                "total": c.succeeded + c.errored + c.canceled + c.expired + c.processing,
                "ok": c.succeeded,
                "failed": c.errored,
                "cancelled": c.canceled,
            }


OPENAI = Provider("openai", "gpt-4.1-mini", "completed")
ANTHROPIC = Provider("anthropic", "claude-sonnet-4-5", "ended")


@pytest.fixture(params=[OPENAI, ANTHROPIC], ids=lambda p: p.name)
def provider(request: pytest.FixtureRequest) -> Provider:
    param: Provider = request.param
    return param


@pytest.fixture
def batch_delay(server: LocalServer) -> Iterator[Any]:
    """Set how long new batches take; the server's default comes back after the test."""
    yield server.set_batch_delay
    server.set_batch_delay(DEFAULT_DELAY)


def rows(n: int) -> pd.DataFrame:
    return pd.DataFrame({"n": range(n)}, index=[f"id{i}" for i in range(n)])


def last_id(server: LocalServer) -> int:
    logged = server.requests()
    return logged[-1]["id"] if logged else 0


def kinds(server: LocalServer, since: int) -> list[str]:
    return [r["kind"] for r in server.requests(since)]


def test_a_batch_map_answers_each_row_with_row_errors_and_half_the_price(
    rt: AgentRuntime, server: LocalServer, tag: str, provider: Provider
) -> None:
    frame = pd.DataFrame({"n": range(5), "fault": ["", "", "@@fault 500", "", ""]})
    template = "{fault}\n" + tag + " [row {n}] go"
    since = last_id(server)

    result = rt.map(
        frame, template, **provider.settings(server, max_output_tokens=20), progress=False
    )

    assert list(result["status"]) == ["ok", "ok", "error", "ok", "ok"]
    assert result.loc[3, "reply"] == f"Echo: {tag} [row 3] go"
    assert "500" in result.loc[2, "error"]
    assert (result.loc[[0, 1, 3, 4], "tokens_out"] == 5).all()
    assert (result.loc[[0, 1, 3, 4], "tokens_in"] > 0).all()
    progress = result.attrs["agentrt"]
    assert progress.mode == "batch" and progress.job_state.startswith(provider.state_done)
    assert provider.counts(server, progress.job) == {
        "total": 5,
        "ok": 4,
        "failed": 1,
        "cancelled": 0,
    }
    logged = kinds(server, since)
    assert logged.count("batch_create") == 1 and "batch_get" in logged
    assert "stream" not in logged and "generate" not in logged  # nothing went live
    price = PRICES[provider.model]
    interactive = price.cost(progress.tokens_in, progress.tokens_out)
    assert progress.cost_usd == pytest.approx(interactive / 2)
    (job_row,) = [e for e in rt.ledger() if e.agent == f"map {progress.run_key[:12]}"]
    assert (job_row.provider, job_row.model, job_row.status) == (
        provider.name,
        provider.model,
        "ok",
    )
    assert job_row.usage.prompt_tokens == progress.tokens_in
    assert job_row.usage.candidates_tokens == progress.tokens_out == 4 * 5

    since = last_id(server)
    again = rt.map(
        frame.drop(index=2),
        template,
        **provider.settings(server, max_output_tokens=20),
        progress=False,
    )
    assert (again["status"] == "cached").all()
    assert kinds(server, since) == []  # the rows answered in the batch are not paid twice


def test_each_row_is_one_request_in_the_providers_own_format(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    since = last_id(server)
    settings = {"system_instruction": "be brief", "max_output_tokens": 20, "temperature": 0.5}
    rt.map(rows(3), tag + " [row {n}]", **OPENAI.settings(server, **settings), progress=False)
    rt.map(rows(3), tag + " [row {n}] a", **ANTHROPIC.settings(server, **settings), progress=False)

    lines = _openai_input_lines(server, since)
    assert len(lines) == 3 and len({line["custom_id"] for line in lines}) == 3
    assert {line["url"] for line in lines} == {"/v1/chat/completions"}
    body = lines[0]["body"]
    assert body["model"] == "gpt-4.1-mini" and "stream" not in body
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert body["max_completion_tokens"] == 20 and body["temperature"] == 0.5

    created = [r for r in server.requests(since) if r["kind"] == "batch_create"][-1]
    requests = created["body"]["requests"]
    assert len(requests) == 3
    params = requests[0]["params"]
    assert params["model"] == "claude-sonnet-4-5" and params["system"] == "be brief"
    assert params["max_tokens"] == 20 and params["temperature"] == 0.5
    assert "extra_body" not in params and "stream" not in params


def _openai_input_lines(server: LocalServer, since: int) -> list[dict[str, Any]]:
    """The JSONL lines of the input file of the first OpenAI batch created after `since`."""
    create = next(r for r in server.requests(since) if r["kind"] == "batch_create")
    with openai.OpenAI(
        api_key=server.token, base_url=server.openai_base_url, max_retries=0
    ) as client:
        data = client.files.content(create["body"]["input_file_id"]).read()
    return [json.loads(line) for line in data.splitlines()]


KILLED_RUN = """
import json, sys
import pandas as pd
from agentrt_jupyter import AgentRuntime, RuntimeConfig
url, token, store, template, settings = sys.argv[1:]
rt = AgentRuntime(RuntimeConfig(base_url=url, api_key=token, api_version="v1beta",
                                store_path=store))
rt.map(pd.DataFrame({"n": range(4)}), template, **json.loads(settings))
print("finished before the kill")
"""


def test_a_job_submitted_before_kill_9_is_collected_by_the_next_call_not_sent_again(
    server: LocalServer, store_path: Path, tag: str, provider: Provider, batch_delay: Any
) -> None:
    template = tag + " [row {n}] go"
    settings = provider.settings(server)
    batch_delay(4.0)  # the job is still running when its kernel dies (killed at its first poll)
    since = last_id(server)
    kill_9_midway(
        KILLED_RUN,
        server.url,
        server.token,
        str(store_path),
        template,
        json.dumps(settings),
        until=lambda: wait_for_kind(server, since, "batch_get"),  # recorded before the first poll
    )
    with sqlite3.connect(store_path) as db:
        ((job, state),) = db.execute("SELECT job, state FROM map_jobs").fetchall()
    assert state == "open"
    batch_delay(0.1)  # (new batches only: the recorded one still takes its 4 s)
    since = last_id(server)

    runtime = AgentRuntime(runtime_config(server, store_path=store_path))
    try:
        run = start_map(runtime, rows(4), template, **settings)
        result = run.result(timeout=60)
    finally:
        runtime.shutdown(10.0)

    assert (result["status"] == "ok").all()
    assert result.attrs["agentrt"].job == job
    logged = kinds(server, since)
    assert "batch_create" not in logged and "file_create" not in logged  # not paid twice
    assert provider.counts(server, job)["total"] == 4
    with sqlite3.connect(store_path) as db:
        assert db.execute("SELECT state FROM map_jobs").fetchall() == [("collected",)]


def wait_for_kind(server: LocalServer, since: int, kind: str, timeout: float = 30.0) -> None:
    """Until a request of `kind` after `since` is logged (woken by the server's log)."""
    while kind not in kinds(server, since):
        server.wait_for_request(last_id(server) + 1, timeout=timeout)


def test_cancel_cancels_the_job_keeps_the_rows_it_finished_and_the_rerun_sends_only_the_rest(
    rt: AgentRuntime, server: LocalServer, tag: str, provider: Provider, batch_delay: Any
) -> None:
    frame = pd.DataFrame({"n": range(5), "slow": [""] + ["@@delay 150"] * 4})
    template = "{slow}\n" + tag + " [row {n}] go"
    batch_delay(60.0)
    submitted = threading.Event()
    run = start_map(rt, frame, template, **provider.settings(server))
    run.add_listener(lambda progress: progress.job_state and submitted.set())
    assert submitted.wait(30)
    run.cancel()
    result = run.result(timeout=30)

    statuses = result["status"].value_counts().to_dict()
    assert statuses["ok"] >= 1 and statuses["cancelled"] >= 1
    assert statuses["ok"] + statuses["cancelled"] == 5
    assert result.loc[0, "status"] == "ok" and result.loc[0, "reply"] == f"Echo: {tag} [row 0] go"
    cancels = [r for r in server.requests() if r["kind"] == "batch_cancel"]
    assert cancels and cancels[-1]["path"].endswith(f"{run.job}/cancel")
    counts = provider.counts(server, run.job)
    assert counts["ok"] == statuses["ok"] and counts["cancelled"] == statuses["cancelled"]

    batch_delay(0.1)
    since = last_id(server)
    again = rt.map(frame, template, progress=False, **provider.settings(server))
    assert (again["status"] == "cached").sum() == statuses["ok"]
    assert (again["status"] == "ok").sum() == statuses["cancelled"]
    resent = again.attrs["agentrt"].job
    assert resent != run.job and provider.counts(server, resent)["total"] == statuses["cancelled"]
    assert kinds(server, since).count("batch_create") == 1


def test_a_host_without_a_batch_api_fails_the_rows_naming_it_and_live_mode(
    rt: AgentRuntime, server: LocalServer, tag: str, provider: Provider
) -> None:
    settings = provider.settings(server)
    settings["base_url"] = provider.base_url(server).replace("/v1", "") + "/no-batches/v1"
    since = last_id(server)

    result = rt.map(rows(3), tag + " [row {n}]", progress=False, **settings)

    assert (result["status"] == "error").all()
    error = result.loc["id0", "error"]
    assert "127.0.0.1" in error and "use mode='live'" in error and "404" in error
    assert [e.kind for e in result.attrs["agentrt"].errors] == ["InvalidConfig"]
    assert "batch_create" not in kinds(server, since)


def test_batch_mode_settings_a_provider_cannot_honour_are_refused_before_anything_runs(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    since = last_id(server)
    with pytest.raises(InvalidConfig, match="top_k") as caught:
        rt.map(rows(2), tag + " {n}", top_k=5, **OPENAI.settings(server))
    assert caught.value.field == "top_k"
    with pytest.raises(InvalidConfig, match="seed"):
        rt.map(rows(2), tag + " {n}", seed=1, **ANTHROPIC.settings(server))
    with pytest.raises(InvalidConfig, match="vertex provider has no Batch API"):
        rt.map(rows(2), tag + " {n}", mode="batch", model="vertex:gemini-2.5-flash")
    assert kinds(server, since) == []


def test_the_progress_view_shows_the_jobs_own_state_and_requests_done(
    rt: AgentRuntime, server: LocalServer, tag: str, provider: Provider
) -> None:
    from agentrt_jupyter.notebook.batchview import BatchProgressView

    states: list[str] = []
    run = start_map(rt, rows(3), tag + " [row {n}]", **provider.settings(server))
    run.add_listener(lambda progress: states.append(progress.job_state or ""))
    view = BatchProgressView(run)
    result = run.result(timeout=30)

    assert (result["status"] == "ok").all()
    assert f"job {provider.state_done} (3/3)" in view.summary.value
    assert view.bar.value == 3 and view.cancel_button.disabled
    assert states[-1] == f"{provider.state_done} (3/3)"


def test_a_job_cancelled_too_slowly_to_settle_stays_recorded_and_the_next_call_collects_it(
    server: LocalServer,
    store_path: Path,
    tag: str,
    batch_delay: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agentrt_jupyter.batch import remote

    monkeypatch.setattr(remote, "CANCEL_SETTLE", 0.0)  # as a service slow to cancel
    frame = pd.DataFrame({"n": range(4), "slow": ["", "", "@@delay 150", "@@delay 150"]})
    template = "{slow}\n" + tag + " [row {n}] go"
    settings = OPENAI.settings(server)
    batch_delay(60.0)
    runtime = AgentRuntime(runtime_config(server, store_path=store_path))
    try:
        submitted = threading.Event()
        run = start_map(runtime, frame, template, **settings)
        run.add_listener(lambda progress: progress.job_state and submitted.set())
        assert submitted.wait(30)
        run.cancel()
        cancelled = run.result(timeout=30)
        assert (cancelled["status"] == "cancelled").all()  # nothing collected yet
        with sqlite3.connect(store_path) as db:
            assert db.execute("SELECT job, state FROM map_jobs").fetchall() == [(run.job, "open")]

        batch_delay(0.1)
        since = last_id(server)
        again = runtime.map(frame, template, progress=False, **settings)
    finally:
        runtime.shutdown(10.0)

    answered = OPENAI.counts(server, run.job)["ok"]
    assert answered >= 1
    assert (again["status"] == "ok").all()
    logged = kinds(server, since)
    assert logged.count("file_download") >= 1  # the cancelled job's finished rows
    if answered < 4:
        resent = again.attrs["agentrt"].job
        assert OPENAI.counts(server, resent)["total"] == 4 - answered
    with sqlite3.connect(store_path) as db:
        states = dict(db.execute("SELECT job, state FROM map_jobs").fetchall())
    assert states[run.job] == "cancelled"
