"""An agent over every row of a DataFrame: `runtime.map`, against the local server.

Rows are told apart in the server's request log by the test's tag and a `[row N]` marker
in each prompt; each test reads only its own requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict

from agentrt_jupyter import AgentRuntime, InvalidConfig
from agentrt_jupyter.batch import PRICES, BatchProgress, cancel_maps, running_maps, start_map
from agentrt_jupyter.server.process import LocalServer

from .conftest import requests_with, runtime_config
from .killed_kernel import kill_9_midway

pytestmark = pytest.mark.timeout(60)


def rows(n: int, *, start: int = 0) -> pd.DataFrame:
    """`n` rows with a non-default index, so alignment is visible."""
    return pd.DataFrame(
        {"n": range(start, start + n)}, index=[f"id{i}" for i in range(start, start + n)]
    )


def row_of(request: dict[str, Any]) -> int:
    text = json.dumps(request["body"])
    return int(text.split("[row ", 1)[1].split("]", 1)[0])


def generates(server: LocalServer, tag: str, since: int = 0) -> list[dict[str, Any]]:
    """This test's model calls (not batch-API calls), oldest first."""
    return [
        r
        for r in requests_with(server, tag)
        if r["kind"] in ("stream", "generate") and r["id"] > since
    ]


def last_id(server: LocalServer) -> int:
    logged = server.requests()
    return logged[-1]["id"] if logged else 0


def wait_for_answers(server: LocalServer, tag: str, count: int, timeout: float = 30.0) -> None:
    """Until `count` of this test's calls have completed (woken by the server's log)."""
    while True:
        done = [r for r in generates(server, tag) if r["outcome"] == "complete"]
        if len(done) >= count:
            return
        server.wait_for_request(last_id(server) + 1, timeout=timeout)


@pytest.fixture
def stored_rt(server: LocalServer, store_path: Path) -> Iterator[AgentRuntime]:
    runtime = AgentRuntime(runtime_config(server, store_path=store_path))
    yield runtime
    runtime.shutdown(10.0)


def test_each_row_is_one_fresh_request_and_the_frame_is_aligned(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = rows(12)
    frame.loc["id3", "n"] = 3
    result = rt.map(frame, f"{tag} [row {{n}}] hello", system_instruction="Be brief.")

    assert list(result.index) == list(frame.index)
    assert result.dtypes.astype(str).to_dict() == {
        "reply": "string",
        "status": "category",
        "error": "string",
        "tokens_in": "Int64",
        "tokens_out": "Int64",
        "latency": "float64",
        "attempts": "int64",
    }
    assert list(result["status"].cat.categories) == [
        "ok",
        "error",
        "cancelled",
        "skipped",
        "cached",
    ]
    assert (result["status"] == "ok").all()
    assert result.loc["id7", "reply"] == f"Echo: {tag} [row 7] hello"
    assert (result["tokens_in"] == 6).all() and (result["tokens_out"] == 5).all()
    assert (result["attempts"] == 1).all() and result["error"].isna().all()
    calls = generates(server, tag)
    assert sorted(row_of(c) for c in calls) == list(range(12))
    for call in calls:  # no row sees another's history; the shared settings reach each
        assert len(call["body"]["contents"]) == 1
        assert call["body"]["systemInstruction"]["parts"][0]["text"] == "Be brief."
    progress = result.attrs["agentrt"]
    assert isinstance(progress, BatchProgress)
    assert (progress.state, progress.ok, progress.total) == ("done", 12, 12)
    assert progress.tokens_in == 72 and progress.cost_usd is not None
    assert rt.agents() == []  # the row agents are gone


def test_429s_with_retry_info_slow_the_run_and_every_row_still_finishes_once(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = rows(40)
    server.push_faults(*["429 minute 0.05s"] * 4, match=tag)  # 10 % of the rows' first calls

    result = rt.map(frame, f"{tag} [row {{n}}] go", concurrency=8)

    assert (result["status"] == "ok").all()
    calls = generates(server, tag)
    complete = Counter(row_of(c) for c in calls if c["outcome"] == "complete")
    assert complete == Counter(range(40))  # every row answered exactly once
    limited = [c for c in calls if c["status"] == 429]
    assert len(limited) == 4 and len(calls) == 44
    assert int(result["attempts"].sum()) == 44
    progress = result.attrs["agentrt"]
    assert progress.rate_limited == 4
    assert progress.concurrency_decreases >= 1  # the controller slowed down


def test_a_daily_quota_stops_the_run_and_keeps_the_finished_rows(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = rows(10)
    template = f"{tag} [row {{n}}] go"
    server.push_faults("429 day", match=f"{tag} [row 5]")

    first = rt.map(frame, template, concurrency=1, max_concurrency=1)

    assert list(first["status"]) == ["ok"] * 5 + ["error"] + ["skipped"] * 4
    assert "daily quota" in first.loc["id5", "error"]
    assert first.loc["id6":, "error"].str.contains("daily quota").all()
    assert first.attrs["agentrt"].state == "stopped"
    errors = first.attrs["agentrt"].errors
    assert [(e.kind, e.count, e.row) for e in errors] == [("QuotaExceeded (day)", 1, "id5")]

    since = last_id(server)
    second = rt.map(frame, template, concurrency=1, max_concurrency=1)
    assert list(second["status"]) == ["cached"] * 5 + ["ok"] * 5
    assert sorted(row_of(c) for c in generates(server, tag, since)) == [5, 6, 7, 8, 9]


def test_a_rerun_requests_only_the_missing_rows_and_refresh_redoes_them_all(
    stored_rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    template = f"{tag} [row {{n}}] go"
    stored_rt.map(rows(6), template)
    since = last_id(server)

    again = stored_rt.map(rows(10), template)

    assert list(again["status"]) == ["cached"] * 6 + ["ok"] * 4
    assert again.loc["id2", "reply"] == f"Echo: {tag} [row 2] go"
    assert (again.loc[:"id5", "attempts"] == 0).all() and (again["tokens_in"] == 4).all()
    assert sorted(row_of(c) for c in generates(server, tag, since)) == [6, 7, 8, 9]

    since = last_id(server)
    fresh = stored_rt.map(rows(10), template, refresh=True)
    assert (fresh["status"] == "ok").all()
    assert sorted(row_of(c) for c in generates(server, tag, since)) == list(range(10))

    since = last_id(server)
    renamed = stored_rt.map(rows(10), template, key="another run")
    assert (renamed["status"] == "ok").all()  # a run of its own: nothing reused
    assert len(generates(server, tag, since)) == 10


KILLED_RUN = """
import sys
import pandas as pd
from agentrt_jupyter import AgentRuntime, RuntimeConfig
url, token, store, template = sys.argv[1:]
rt = AgentRuntime(RuntimeConfig(base_url=url, api_key=token, api_version="v1beta",
                                store_path=store))
frame = pd.DataFrame({"n": range(30)})
rt.map(frame, template, concurrency=3, max_concurrency=3)
print("finished before the kill")
"""


def test_after_kill_9_mid_run_a_rerun_requests_only_the_missing_rows(
    server: LocalServer, store_path: Path, tag: str
) -> None:
    template = "@@delay 40\n" + tag + " [row {n}] one two three"
    kill_9_midway(
        KILLED_RUN,
        server.url,
        server.token,
        str(store_path),
        template,
        until=lambda: wait_for_answers(server, tag, 9),
    )
    with sqlite3.connect(store_path) as db:
        kept = db.execute("SELECT count(*) FROM map_rows").fetchone()[0]
    assert 6 <= kept < 30  # at most the 3 in flight were answered but not yet written
    since = last_id(server)

    runtime = AgentRuntime(runtime_config(server, store_path=store_path))
    try:
        result = runtime.map(pd.DataFrame({"n": range(30)}), template)
    finally:
        runtime.shutdown(10.0)

    counts = result["status"].value_counts().to_dict()
    assert counts["cached"] == kept and counts["ok"] == 30 - kept
    again = generates(server, tag, since)
    assert len(again) == 30 - kept  # exactly the missing rows, each once
    assert len({row_of(c) for c in again}) == 30 - kept
    cached_rows = {int(i) for i in result.index[result["status"] == "cached"]}
    assert cached_rows.isdisjoint(row_of(c) for c in again)


def test_the_budget_stops_the_run_before_it_would_be_passed(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = rows(10)
    template = f"{tag} [row {{n}}] a b c d"  # 7 words in, 8 out: 15 tokens a row

    result = rt.map(frame, template, budget_tokens=50, concurrency=1, max_concurrency=1)

    progress = result.attrs["agentrt"]
    ok = int((result["status"] == "ok").sum())
    assert ok >= 1 and progress.tokens_in + progress.tokens_out <= 50
    assert (result["status"].iloc[ok:] == "skipped").all()
    assert result["error"].iloc[ok:].str.contains("budget_tokens=50").all()
    assert progress.state == "stopped" and "budget_tokens" in progress.stop_reason
    assert len(generates(server, tag)) == ok

    more = rt.map(frame, template, budget_tokens=1_000)
    assert list(more["status"]) == ["cached"] * ok + ["ok"] * (10 - ok)


def test_the_budget_holds_with_rows_in_parallel(rt: AgentRuntime, tag: str) -> None:
    """Rows cost more than the first guess (4 characters a token, as much out as in): the
    rows started together on that guess used to pass the budget."""
    template = f"{tag} [row {{n}}] a b c d e f g h i j k l"
    for budget in (50, 100, 200):
        result = rt.map(rows(20), template + f" {budget}", budget_tokens=budget, concurrency=8)
        progress = result.attrs["agentrt"]
        assert progress.ok >= 1 and progress.state == "stopped"
        assert progress.tokens_in + progress.tokens_out <= budget


def test_a_dollar_budget_uses_the_price_table(rt: AgentRuntime, tag: str) -> None:
    price = PRICES["gemini-2.5-flash"]
    per_row = price.cost(4, 5)
    result = rt.map(
        rows(10),
        f"{tag} [row {{n}}] go",
        budget_usd=per_row * 4.5,
        concurrency=1,
        max_concurrency=1,
    )
    assert 1 <= (result["status"] == "ok").sum() <= 4
    assert result.attrs["agentrt"].cost_usd <= per_row * 4.5
    with pytest.raises(InvalidConfig, match="no price is known"):
        rt.map(rows(1), "{n}", budget_usd=1.0, model="my-own-model")


class Review(BaseModel):
    label: Literal["pos", "neg"]
    score: float
    stars: int
    spam: bool
    note: str | None = None
    seen: datetime
    tags: list[str] = []


@dataclasses.dataclass
class Count:
    word: str
    times: int


class Flag(TypedDict):
    flagged: bool


def test_schema_columns_have_the_right_dtypes(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    replies = [
        {"label": "pos", "score": 0.9, "stars": 5, "spam": False, "seen": "2025-01-02T03:04:05Z"},
        {
            "label": "neg",
            "score": 1,
            "stars": 2,
            "spam": True,
            "note": "meh",
            "seen": "2025-02-03T00:00:00+00:00",
        },
    ]
    replies[0]["tags"] = ["a"]
    frame = pd.DataFrame({"json": [json.dumps(r) for r in replies] + ["not json at all"]})

    result = rt.map(frame, "@@reply {json}\n" + tag, schema=Review)

    assert result.dtypes.astype(str).to_dict() == {
        "label": "category",
        "score": "Float64",
        "stars": "Int64",
        "spam": "boolean",
        "note": "string",
        "seen": "datetime64[us, UTC]",
        "tags": "object",
        "status": "category",
        "error": "string",
        "tokens_in": "Int64",
        "tokens_out": "Int64",
        "latency": "float64",
        "attempts": "int64",
    }
    assert list(result["label"].cat.categories) == ["pos", "neg"]
    assert list(result["status"]) == ["ok", "ok", "error"]
    assert result.loc[0, "stars"] == 5 and result.loc[1, "score"] == 1.0
    assert result.loc[1, "note"] == "meh" and pd.isna(result.loc[0, "note"])
    assert result.loc[0, "seen"] == pd.Timestamp("2025-01-02T03:04:05Z")
    assert result.loc[0, "tags"] == ["a"]
    assert result.iloc[2][["label", "score", "stars", "spam", "seen"]].isna().all()
    assert "does not match the schema" in result.loc[2, "error"]
    call = generates(server, tag)[0]["body"]["generationConfig"]
    assert call["responseMimeType"] == "application/json"
    assert call["responseJsonSchema"]["properties"]["label"]["enum"] == ["pos", "neg"]
    assert [e.kind for e in result.attrs["agentrt"].errors] == ["SchemaMismatch"]

    one_count = pd.DataFrame({"json": ['{"word": "x", "times": 3}']})
    counts = rt.map(one_count, "@@reply {json}\n" + tag, schema=Count)
    assert counts.dtypes[["word", "times"]].astype(str).tolist() == ["string", "Int64"]
    assert counts.loc[0, "times"] == 3
    one_flag = pd.DataFrame({"json": ['{"flagged": true}']})
    flags = rt.map(one_flag, "@@reply {json}\n" + tag, schema=Flag)
    assert flags.dtypes["flagged"] == "boolean" and bool(flags.loc[0, "flagged"])
    as_dict = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "kind": {"type": "string", "enum": ["a", "b"]}},
        "required": ["n"],
    }
    replies_n = ['{"n": 2, "kind": "b"}', '{"n": "two"}', '{"kind": "a"}']
    plain = rt.map(pd.DataFrame({"json": replies_n}), "@@reply {json}\n" + tag, schema=as_dict)
    assert plain.dtypes[["n", "kind"]].astype(str).tolist() == ["Int64", "category"]
    assert list(plain["status"]) == ["ok", "error", "error"]
    assert "$.n should be integer, got string 'two'" in plain.loc[1, "error"]
    assert "$.n is required but missing" in plain.loc[2, "error"]


def test_rows_can_call_tools(rt: AgentRuntime, tag: str) -> None:
    def population(city: str) -> int:
        """How many people live in a city."""
        return {"Oslo": 700_000, "Lima": 10_000_000}[city]

    frame = pd.DataFrame({"city": ["Oslo", "Lima"]})
    template = '@@call population {{"city": "{city}"}}\n' + tag + " {city}?"
    result = rt.map(frame, template, tools=[population])
    assert list(result["status"]) == ["ok", "ok"]
    assert "700000" in result.loc[0, "reply"] and "10000000" in result.loc[1, "reply"]
    assert list(result["attempts"]) == [2, 2]


def test_errors_are_summarised_by_kind_with_the_first_example(rt: AgentRuntime, tag: str) -> None:
    frame = pd.DataFrame({"fault": ["", "@@fault 400", "", "@@fault 400", "@@fault 403"]})
    result = rt.map(frame, "{fault}\n" + tag + " go")
    assert list(result["status"]) == ["ok", "error", "ok", "error", "error"]
    errors = {e.kind: e for e in result.attrs["agentrt"].errors}
    assert set(errors) == {"BackendError 400", "BackendError 403"}
    assert (errors["BackendError 400"].count, errors["BackendError 400"].row) == (2, 1)
    assert "400" in errors["BackendError 400"].message


def test_cancel_stops_promptly_and_keeps_every_finished_row(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    template = "@@delay 50\n" + tag + " [row {n}] one two three four"
    three_done = threading.Event()

    def watch(progress: BatchProgress) -> None:
        if progress.ok >= 3:
            three_done.set()

    run = start_map(rt, rows(16), template, concurrency=2, max_concurrency=2)
    run.add_listener(watch)
    assert running_maps(rt) == [run]
    assert three_done.wait(30)
    assert cancel_maps(rt) == 1
    result = run.result(timeout=30)

    ok = result["status"] == "ok"
    assert ok.sum() >= 3 and (result.loc[~ok, "status"] == "cancelled").all()
    assert result.attrs["agentrt"].state == "cancelled"
    assert len(generates(server, tag)) < 16  # stopped early
    cut = [c for c in generates(server, tag) if c["outcome"] != "complete"]
    assert all(server.wait_for_request(c["id"])["outcome"] == "client_closed" for c in cut)
    assert running_maps(rt) == []

    since = last_id(server)
    rest = rt.map(rows(16), template, concurrency=8)
    assert (rest["status"][ok] == "cached").all() and (rest["status"][~ok] == "ok").all()
    assert len(generates(server, tag, since)) == int((~ok).sum())


def test_ctrl_c_cancels_a_blocking_map_keeps_the_finished_rows_and_reraises(
    rt: AgentRuntime, server: LocalServer, tag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    template = "@@delay 50\n" + tag + " [row {n}] one two three four"
    in_map = threading.Event()

    def interrupt_when_rows_are_done() -> None:
        wait_for_answers(server, tag, 3)
        if in_map.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    def on_sigint(signum: int, frame: object) -> None:
        if in_map.is_set():
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    helper = threading.Thread(target=interrupt_when_rows_are_done, daemon=True)
    try:
        in_map.set()
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            rt.map(rows(16), template, concurrency=2, max_concurrency=2)
    finally:
        in_map.clear()
        signal.signal(signal.SIGINT, previous)
        helper.join(30)
    assert "map interrupted" in capsys.readouterr().err
    since = last_id(server)
    rest = rt.map(rows(16), template, concurrency=8)
    cached = int((rest["status"] == "cached").sum())
    assert cached >= 1 and (rest["status"] != "error").all()
    assert len(generates(server, tag, since)) == 16 - cached


def test_an_rpm_ceiling_spaces_the_starts(rt: AgentRuntime, server: LocalServer, tag: str) -> None:
    rt.map(rows(4), f"{tag} [row {{n}}] go", rpm=300, concurrency=4)  # one start per 0.2 s
    received = sorted(c["received"] for c in generates(server, tag))
    gaps = [b - a for a, b in itertools.pairwise(received)]
    assert len(received) == 4 and min(gaps) >= 0.1


def test_options_are_checked_before_anything_runs(rt: AgentRuntime, server: LocalServer) -> None:
    def tool(city: str) -> str:
        """A tool."""
        return city

    frame = pd.DataFrame({"text": ["a"], "label": ["b"]})
    cases: list[tuple[dict[str, Any], str]] = [
        ({"template": "Classify {txt}"}, "did you mean {text}"),
        ({"template": "Classify {}"}, "positional"),
        ({"template": "Classify {text"}, "literal braces"),
        ({"template": ""}, "non-empty"),
        ({"concurrency": 0}, "concurrency: must be between 1"),
        ({"concurrency": 4, "max_concurrency": 2}, "max_concurrency"),
        ({"name": "x"}, "fresh unnamed agent"),
        ({"mode": "later"}, "mode"),
        ({"mode": "batch", "tools": [tool]}, "tools cannot run"),
        ({"budget_tokens": -1}, "budget_tokens"),
        ({"rpm": 0}, "rpm"),
        ({"schema": int}, "schema"),
        ({"schema": list[Review]}, "describes one row"),
        ({"schema": {"type": "object", "properties": {"status": {"type": "string"}}}}, "clashes"),
        ({"temprature": 0.5}, "did you mean 'temperature'"),
    ]
    before = last_id(server)
    for options, message in cases:
        template = options.pop("template", "Classify {text}")
        with pytest.raises(InvalidConfig, match=message):
            rt.map(frame, template, **options)
    with pytest.raises(InvalidConfig, match="to_frame"):
        rt.map(frame["text"], "{text}")
    assert last_id(server) == before  # nothing was sent


def test_the_dataframe_accessor_and_the_async_form(rt: AgentRuntime, tag: str) -> None:
    frame = rows(3)
    result = frame.agentrt.map(f"{tag} [row {{n}}] go", runtime=rt)
    assert (result["status"] == "ok").all()

    async def main() -> pd.DataFrame:
        return await rt.aio.map(frame, f"{tag} [row {{n}}] go")  # type: ignore[no-any-return]

    assert (asyncio.run(main())["status"] == "cached").all()
    with pytest.raises(InvalidConfig, match="runtime="):
        frame.agentrt.map("{n}")


def test_the_accessor_is_registered_when_pandas_is_imported_and_not_before() -> None:
    code = (
        "import sys, agentrt_jupyter.batch as b;"
        "b.register_when_pandas_loads();"
        "assert 'pandas' not in sys.modules, 'pandas was imported';"
        "import pandas as pd;"
        "accessor = pd.DataFrame({'a': [1]}).agentrt;"
        "print(hasattr(pd.DataFrame, 'agentrt'), type(accessor).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "AgentrtAccessor"]


def test_batch_mode_round_trip_inline_and_through_a_jsonl_file(
    rt: AgentRuntime, server: LocalServer, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentrt_jupyter.batch import remote

    frame = pd.DataFrame({"n": range(5), "fault": ["", "", "@@fault 500", "", ""]})
    template = "{fault}\n" + tag + " [row {n}] go"
    since = last_id(server)

    inline = rt.map(frame, template, mode="batch", max_output_tokens=20)

    assert list(inline["status"]) == ["ok", "ok", "error", "ok", "ok"]
    assert inline.loc[3, "reply"] == f"Echo: {tag} [row 3] go"
    assert "500" in inline.loc[2, "error"]
    assert (inline.loc[[0, 1, 3, 4], "tokens_out"] == 5).all()
    kinds = [r["kind"] for r in server.requests(since)]
    assert kinds[0] == "batch_create" and set(kinds[1:]) == {"batch_get"}
    sent = server.requests(since)[0]["body"]["batch"]["inputConfig"]["requests"]["requests"]
    assert len(sent) == 5 and sent[0]["request"]["generationConfig"]["maxOutputTokens"] == 20
    progress = inline.attrs["agentrt"]
    assert progress.mode == "batch" and progress.job_state == "JOB_STATE_SUCCEEDED"
    interactive = PRICES["gemini-2.5-flash"].cost(progress.tokens_in, progress.tokens_out)
    assert progress.cost_usd == pytest.approx(interactive / 2)  # half price

    monkeypatch.setattr(remote, "INLINE_LIMIT_BYTES", 0)
    since = last_id(server)
    by_file = rt.map(frame, template, mode="batch", max_output_tokens=20)
    assert list(by_file["status"]) == ["cached", "cached", "error", "cached", "cached"]
    kinds = [r["kind"] for r in server.requests(since)]
    assert kinds[:3] == ["file_create", "file_upload", "batch_create"]
    assert kinds[-1] == "file_download"
    created = server.requests(since)[2]["body"]["batch"]["inputConfig"]
    assert created["fileName"].startswith("files/")

    since = last_id(server)
    again = rt.map(frame.drop(index=2), template, mode="live", max_output_tokens=20)
    assert (again["status"] == "cached").all()  # batch results serve a live run too
    assert generates(server, tag, since) == []


def test_batch_mode_cancel_cancels_the_job(rt: AgentRuntime, server: LocalServer, tag: str) -> None:
    server.set_batch_delay(60)
    try:
        submitted = threading.Event()
        run = start_map(rt, rows(3), f"{tag} [row {{n}}] go", mode="batch")
        run.add_listener(lambda progress: progress.job_state and submitted.set())
        assert submitted.wait(30)
        run.cancel()
        result = run.result(timeout=30)
    finally:
        server.set_batch_delay(0.2)
    assert (result["status"] == "cancelled").all()
    cancelled = [r for r in server.requests() if r["kind"] == "batch_cancel"]
    assert cancelled and cancelled[-1]["path"].endswith(f"{run.job}:cancel")


def test_batch_mode_picks_up_a_job_left_by_a_runtime_that_stopped(
    server: LocalServer, store_path: Path, tag: str
) -> None:
    frame = rows(4)
    template = f"{tag} [row {{n}}] go"
    server.set_batch_delay(2.0)
    try:
        first = AgentRuntime(runtime_config(server, store_path=store_path))
        submitted = threading.Event()
        run = start_map(first, frame, template, mode="batch")
        run.add_listener(lambda progress: progress.job_state and submitted.set())
        assert submitted.wait(30)
        first.shutdown(10.0)  # as a kernel that died: the job goes on at the service
    finally:
        server.set_batch_delay(0.2)
    since = last_id(server)
    second = AgentRuntime(runtime_config(server, store_path=store_path))
    try:
        result = second.map(frame, template, mode="batch")
    finally:
        second.shutdown(10.0)
    assert (result["status"] == "ok").all()
    kinds = [r["kind"] for r in server.requests(since)]
    assert "batch_create" not in kinds and "batch_get" in kinds  # the rows were not paid twice
    assert result.attrs["agentrt"].job == run.job


def test_the_progress_widget_and_the_terminal_bar(
    rt: AgentRuntime, tag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from agentrt_jupyter.notebook.batchview import BatchProgressView, map_cell

    frame = pd.DataFrame({"fault": ["", "@@fault 400", ""]})
    run = start_map(rt, frame, "{fault}\n" + tag + " go")
    view = BatchProgressView(run)
    result = run.result(timeout=30)
    assert view.bar.value == 3 and view.bar.bar_style == "warning"
    assert "3/3 rows" in view.summary.value and "failed 1" in view.summary.value
    assert "BackendError 400 x1" in view.errors.value
    assert view.cancel_button.disabled and list(result["status"]) == ["ok", "error", "ok"]

    rt.map(frame, "{fault}\n" + tag + " again", progress=True)
    err = capsys.readouterr().err
    assert "agentrt map" in err and "3/3" in err and "BackendError 400 x1" in err

    namespace: dict[str, Any] = {}
    cell = map_cell(
        rt, frame, "{fault}\n" + tag + " cell", out="res", namespace=namespace, progress=False
    )
    returned = asyncio.run(cell)
    assert namespace["res"] is returned and list(returned["status"]) == ["ok", "error", "ok"]


def test_cancelling_the_awaiting_cell_cancels_the_run_and_keeps_the_partial_frame(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    from agentrt_jupyter.notebook.batchview import map_cell

    template = "@@delay 50\n" + tag + " [row {n}] one two three four"
    namespace: dict[str, Any] = {}

    async def interrupted_cell() -> None:
        cell = asyncio.create_task(
            map_cell(
                rt,
                rows(20),
                template,
                out="partial",
                namespace=namespace,
                concurrency=2,
                max_concurrency=2,
                progress=False,
            )
        )
        await asyncio.to_thread(wait_for_answers, server, tag, 3)
        cell.cancel()  # what a kernel interrupt does to an awaiting cell
        with pytest.raises(asyncio.CancelledError):
            await cell

    asyncio.run(interrupted_cell())
    partial = namespace["partial"]
    assert (partial["status"] == "ok").sum() >= 1
    assert set(partial["status"]) <= {"ok", "cancelled"} and "cancelled" in set(partial["status"])
    assert running_maps(rt) == []


def test_batch_mode_submits_only_the_rows_within_the_budget(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    since = last_id(server)
    result = rt.map(rows(6), f"{tag} [row {{n}}] go", mode="batch", budget_tokens=30)
    submitted = int((result["status"] == "ok").sum())
    assert 1 <= submitted < 6 and (result["status"].iloc[submitted:] == "skipped").all()
    assert result["error"].iloc[submitted:].str.contains("budget_tokens=30").all()
    create = next(r for r in server.requests(since) if r["kind"] == "batch_create")
    assert len(create["body"]["batch"]["inputConfig"]["requests"]["requests"]) == submitted
