"""A team on one PostgreSQL database: each user connects as their own role, and the
database (row-level security), not only our queries, keeps their records apart; a
team-scoped reply cache shares replies and nothing else; an admin reads everyone's usage."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentrt_jupyter import AgentRuntime, FakeBackend, RuntimeConfig
from agentrt_jupyter.errors import AgentNotFound
from agentrt_jupyter.notebook.display import footer_line
from agentrt_jupyter.stores.pgstore import PgStore
from agentrt_jupyter.stores.postgres import create_user_role, setup, usage_report

from .postgres import with_credentials

pytestmark = pytest.mark.timeout(60)
MODEL = "gemini-2.5-flash"
ROOT = Path(__file__).parent.parent


@dataclass(frozen=True)
class Team:
    superuser: str
    alice: str
    bob: str
    admin: str


@pytest.fixture
def team(postgres_database: str) -> Team:
    """A database set up for a team: two users and an admin, each with a login role."""
    setup(postgres_database)
    urls = {}
    for name in ("alice", "bob", "admin"):
        create_user_role(postgres_database, name, f"{name}-pw", admin=name == "admin")
        urls[name] = with_credentials(postgres_database, name, f"{name}-pw")
    return Team(postgres_database, urls["alice"], urls["bob"], urls["admin"])


def runtime_for(url: str, echo: FakeBackend, **overrides: object) -> AgentRuntime:
    config = RuntimeConfig(store_url=url, store_path=None, namespace="course.ipynb", **overrides)  # type: ignore[arg-type]
    return AgentRuntime(config, backend_factory=lambda endpoint: echo)


@pytest.fixture
def echo() -> FakeBackend:
    return FakeBackend(lambda request: f"Echo: {request.messages[-1].text}")


@pytest.fixture
def alice_rows(team: Team, echo: FakeBackend) -> str:
    """Alice's stored conversation "helper" (one turn, her kernel gone); its id."""
    with runtime_for(team.alice, echo) as runtime:
        runtime.create_agent(name="helper", model=MODEL).chat("alice's secret").text(timeout=10)
        (row,) = runtime.conversations()
    return row.id


def test_raw_sql_as_one_user_cannot_read_or_change_anothers_rows(
    team: Team, alice_rows: str
) -> None:
    import psycopg
    from psycopg import errors

    tables = ("conversations", "records", "leases", "replies")
    with psycopg.connect(team.bob, autocommit=True) as bob:
        for table in tables:
            assert bob.execute(f"SELECT count(*) FROM agentrt.{table}").fetchone() == (0,)
        assert bob.execute("UPDATE agentrt.records SET data = '{}'").rowcount == 0
        assert bob.execute("DELETE FROM agentrt.records").rowcount == 0
        assert bob.execute("DELETE FROM agentrt.conversations").rowcount == 0
        with pytest.raises(errors.InsufficientPrivilege):
            bob.execute(
                "INSERT INTO agentrt.records (conversation, owner, kind, written, data)"
                " VALUES (%s, 'alice', 'message', 0, '{}')",
                (alice_rows,),
            )
        with pytest.raises(errors.InsufficientPrivilege):
            bob.execute("SELECT * FROM agentrt.agentrt_usage_daily")
    with psycopg.connect(team.alice, autocommit=True) as alice:
        texts = [d for (d,) in alice.execute("SELECT data FROM agentrt.records")]
    assert any("alice's secret" in text for text in texts)


def test_each_user_lists_and_resumes_only_their_own_conversations(
    team: Team, echo: FakeBackend, alice_rows: str
) -> None:
    with runtime_for(team.bob, echo) as bob:
        assert bob.stored_conversations() == []
        with pytest.raises(AgentNotFound):
            bob.resume("helper")
        bob.create_agent(name="helper", model=MODEL).chat("bob's own").text(timeout=10)
        assert bob.stored_conversations() == ["helper"]
    with runtime_for(team.alice, echo) as alice:
        history = alice.resume("helper").history()
        assert [m.text for m in history] == ["alice's secret", "Echo: alice's secret"]
        assert [r.id for r in alice.conversations()] == [alice_rows]


def test_a_second_user_replays_a_team_cached_reply_with_zero_requests(team: Team) -> None:
    import psycopg

    first, second = FakeBackend(lambda r: "the shared answer"), FakeBackend(lambda r: "live")
    settings = {"reply_cache": True, "cache_scope": "team"}
    with runtime_for(team.alice, first, **settings) as alice:
        alice.create_agent(name="tutor", model=MODEL).chat("What is 2 + 2?").text(timeout=10)
    with runtime_for(team.bob, second, **settings) as bob:
        result = bob.create_agent(model=MODEL).chat("What is 2 + 2?").result(timeout=10)
    assert (len(first.requests), len(second.requests)) == (1, 0)
    assert result.text == "the shared answer" and "replayed" in footer_line(result)
    with psycopg.connect(team.superuser, autocommit=True) as su:
        rows = su.execute("SELECT scope, conversation, data FROM agentrt.replies").fetchall()
    assert [(scope, conversation) for scope, conversation, _ in rows] == [("team", None)]
    assert "2 + 2" not in rows[0][2]  # the request is a hash; only the reply is kept


def test_the_default_cache_is_per_user(team: Team) -> None:
    first, second = FakeBackend(lambda r: "alice's"), FakeBackend(lambda r: "bob's")
    with runtime_for(team.alice, first, reply_cache=True) as alice:
        alice.create_agent(model=MODEL).chat("same question").text(timeout=10)
    with runtime_for(team.bob, second, reply_cache=True) as bob:
        assert bob.create_agent(model=MODEL).chat("same question").text(timeout=10) == "bob's"
    assert len(second.requests) == 1


def test_the_admin_reads_every_users_usage_per_day(team: Team, echo: FakeBackend) -> None:
    for url, turns in ((team.alice, 2), (team.bob, 1)):
        with runtime_for(url, echo) as runtime:
            agent = runtime.create_agent(name="worker", model=MODEL)
            for turn in range(turns):
                agent.chat(f"question {turn}").text(timeout=10)
    report = usage_report(team.admin)
    by_user = report.set_index("user")
    assert sorted(report["user"]) == ["alice", "bob"]
    assert (by_user.loc["alice", "calls"], by_user.loc["bob", "calls"]) == (2, 1)
    assert set(report["model"]) == {MODEL} and set(report["provider"]) == {"gemini"}
    assert (report["tokens_in"] > 0).all() and (report["usd"] > 0).all()


def test_the_setup_command_applies_the_schema_and_never_prints_the_password(
    postgres_url: str, postgres_database: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agentrt_jupyter.stores.postgres", "setup", postgres_database],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    password = postgres_url.split(":")[2].split("@")[0]
    assert password not in done.stdout + done.stderr and "***" in done.stdout
    with PgStore(postgres_database) as store:
        assert store.conversations() == []


def test_map_keeps_its_rows_per_user_in_the_database(team: Team) -> None:
    import pandas as pd
    import psycopg

    echo = FakeBackend(lambda request: f"Echo: {request.messages[-1].text}")
    frame = pd.DataFrame({"n": [1, 2, 3]})
    with runtime_for(team.alice, echo) as alice:
        assert list(alice.map(frame, "row {n}")["status"]) == ["ok"] * 3
        again = alice.map(frame, "row {n}")
    assert list(again["status"]) == ["cached"] * 3 and len(echo.requests) == 3
    with runtime_for(team.bob, echo) as bob:
        assert list(bob.map(frame, "row {n}")["status"]) == ["ok"] * 3
    with psycopg.connect(team.superuser, autocommit=True) as su:
        owners = su.execute("SELECT owner, count(*) FROM agentrt.map_rows GROUP BY 1 ORDER BY 1")
        assert owners.fetchall() == [("alice", 3), ("bob", 3)]


def test_a_team_scoped_map_replays_another_users_rows_with_zero_requests(team: Team) -> None:
    import pandas as pd

    first, second = FakeBackend(lambda r: "shared"), FakeBackend(lambda r: "live")
    frame = pd.DataFrame({"n": [1, 2]})
    for url, echo in ((team.alice, first), (team.bob, second)):
        with runtime_for(url, echo) as runtime:
            done = runtime.map(frame, "row {n}", reply_cache=True, cache_scope="team")
            assert list(done["reply"]) == ["shared", "shared"]
    assert (len(first.requests), len(second.requests)) == (2, 0)


def test_a_notebook_keeps_its_conversations_in_the_database_set_by_config(
    team: Team, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg
    from IPython.core.error import UsageError

    from .shell_helpers import agent_shell, run

    with agent_shell(tmp_path) as ip:
        ip.run_line_magic("config", "AgentMagics.store_url = 'mysql://alice:alice-pw@db/x'")
        refused = run(ip, "%%agent\nhi")
        assert isinstance(refused, UsageError) and "store_url" in str(refused)
        assert "alice-pw" not in str(refused)
        ip.run_line_magic("config", f"AgentMagics.store_url = {team.alice!r}")
        try:
            assert run(ip, "%%agent helper\nhello from a notebook") is None
            assert "helper" in ip.run_line_magic("agent", "runtime").stored_conversations()
            assert "alice-pw" not in repr(ip.run_line_magic("agent", "runtime").config)
            capsys.readouterr()
            ip.run_line_magic("agent", "config")
            shown = capsys.readouterr().out
            assert "store: postgresql://alice:***@" in shown and "alice-pw" not in shown
        finally:
            ip.run_line_magic("config", "AgentMagics.store_url = None")
    with psycopg.connect(team.superuser, autocommit=True) as su:
        rows = su.execute("SELECT owner, name FROM agentrt.conversations").fetchall()
    assert rows == [("alice", "helper")]


def test_on_one_shared_role_the_hub_user_names_the_owner(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTERHUB_USER", "carol")
    with PgStore(postgres_database) as carol:
        carol.create("nb", "notes", {})
        assert carol.owner == "carol"
    monkeypatch.setenv("JUPYTERHUB_USER", "dave")
    with PgStore(postgres_database) as dave:
        assert dave.conversations() == [] and dave.latest("nb", "notes") is None


def test_the_store_url_and_cache_scope_are_checked_and_the_password_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agentrt_jupyter import AgentConfig, InvalidConfig

    with pytest.raises(InvalidConfig) as wrong:
        RuntimeConfig(store_url="mysql://u:hunter2@h/db")
    assert wrong.value.field == "store_url" and "hunter2" not in str(wrong.value)
    shown = repr(RuntimeConfig(store_url="postgresql://u:hunter2@h/db", store_path=None))
    assert "store_url='postgresql://u:***@h/db'" in shown and "hunter2" not in shown
    monkeypatch.setenv("AGENTRT_STORE_URL", "postgresql://hub@db/agentrt")
    assert RuntimeConfig().store_location == "postgresql://hub@db/agentrt"
    for make in (RuntimeConfig, AgentConfig):
        with pytest.raises(InvalidConfig) as scope:
            make(cache_scope="class")  # type: ignore[arg-type]
        assert scope.value.field == "cache_scope"
