"""A store file with corrupt pages (issue 17 items 1 and 2): found when opened, moved aside,
what reads recovered into a fresh file, and said once; named agents and cells go on.
`resume` on a store that cannot be used says which file and what is wrong with it.

The damage is real: pages of a written store overwritten with zeros or random bytes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentrt_jupyter import AgentConfig, AgentRuntime, InvalidConfig
from agentrt_jupyter import store as store_module
from agentrt_jupyter.content import TextPart
from agentrt_jupyter.conversation import ConversationMessage
from agentrt_jupyter.errors import StoreError
from agentrt_jupyter.recorder import StoreRecorder
from agentrt_jupyter.salvage import RECOVERED_NAMESPACE, open_store, recover
from agentrt_jupyter.server.process import LocalServer
from agentrt_jupyter.store import Store

from .conftest import runtime_config
from .kernel_helpers import notebook_kernel
from .test_store import read_only

NAMES = ("alpha", "beta", "gamma")
TURNS = 30
STORE = "conversations.sqlite3"
CONFIG = AgentConfig(name="delta")


def written(path: Path, namespace: str = "ns") -> dict[str, list[str]]:
    """A store of three conversations; the texts of each, by name."""
    texts: dict[str, list[str]] = {}
    with Store(path) as store:
        for name in NAMES:
            cid = store.create(namespace, name, {"model": "m"})
            texts[name] = [f"{name} {turn} " + "words " * 60 for turn in range(TURNS)]
            for turn, text in enumerate(texts[name]):
                store.append_message(cid, ConversationMessage("user", (TextPart(text),), turn))
    return texts


def page_size(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:18], "big")


def overwrite_page(path: Path, page: int, data: bytes | None = None) -> None:
    """Overwrite page `page` (1 is the header's) with `data`, zeros by default."""
    size = page_size(path)
    with path.open("r+b") as file:
        file.seek((page - 1) * size)
        file.write(data if data is not None else bytes(size))


def records_leaf(path: Path) -> int:
    """The page holding beta's 15th message: a leaf in the middle of the records table."""
    return path.read_bytes().index(b"beta 15 words") // page_size(path) + 1


def damage(path: Path, how: str) -> None:
    if how == "page 2 zeroed":
        overwrite_page(path, 2)
    else:  # garbage mid-file: a leaf of the records table
        overwrite_page(path, records_leaf(path), os.urandom(page_size(path)))


def asides(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*[0-9]"))


DAMAGES = ["page 2 zeroed", "garbage mid-file"]


@pytest.mark.parametrize("how", DAMAGES)
def test_corrupt_pages_are_found_when_the_store_opens(tmp_path: Path, how: str) -> None:
    path = tmp_path / STORE
    written(path)
    damage(path, how)
    before = path.read_bytes()
    with pytest.raises(StoreError) as raised:
        Store(path)
    assert raised.value.path == str(path) and "corrupt pages" in str(raised.value)
    assert path.read_bytes() == before  # never written to


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_store_is_moved_aside_and_what_reads_is_recovered(
    tmp_path: Path, how: str
) -> None:
    path = tmp_path / STORE
    texts = written(path)
    damage(path, how)
    damaged_bytes = path.read_bytes()
    store, recovery = open_store(path)
    with store:
        assert recovery is not None
        (aside,) = asides(path)
        assert recovery.aside == aside and aside.read_bytes() == damaged_bytes
        assert f"kept as {aside}" in str(recovery) and str(path) in str(recovery)
        rows = store.conversations(None)
        assert recovery.conversations == len(rows) == len(NAMES)
        recovered_texts = []
        for row in rows:
            loaded = store.load(row.id)
            assert loaded is not None
            recovered_texts.append([m.text for m in loaded.conversation.messages])
        if how == "page 2 zeroed":  # the conversations' own rows were on page 2
            assert recovery.unnamed == 3 and "3 without their name" in str(recovery)
            assert {r.namespace for r in rows} == {RECOVERED_NAMESPACE}
            assert sorted(recovered_texts) == sorted(texts.values())  # every message
        else:  # the names stay; the damaged page's messages are lost, the rest kept in order
            assert [(r.namespace, r.name) for r in rows] == [("ns", n) for n in NAMES]
            assert recovery.unnamed == 0 and "without their name" not in str(recovery)
            kept = [t for name, got in zip(NAMES, recovered_texts, strict=True) for t in got]
            every = [t for name in NAMES for t in texts[name]]
            assert 0 < len(kept) < len(every)
            for name, got in zip(NAMES, recovered_texts, strict=True):
                assert got == [t for t in texts[name] if t in got]
        assert recovery.records == sum(map(len, recovered_texts)) + len(NAMES)  # + settings
        cid = store.create("ns", "alpha", {})  # the fresh file takes writes
        store.append_message(cid, ConversationMessage("user", (TextPart("new"),), 1))


@pytest.mark.parametrize("how", ["random bytes", "truncated"])
def test_a_file_that_is_not_recognisably_a_store_is_left_where_it_is(
    tmp_path: Path, how: str
) -> None:
    path = tmp_path / STORE
    if how == "random bytes":
        path.write_bytes(os.urandom(16384))
    else:
        written(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = path.read_bytes()
    with pytest.raises(StoreError, match="corrupt"):
        open_store(path)
    assert path.read_bytes() == before and asides(path) == []


def test_a_damaged_store_that_cannot_be_moved_aside_is_a_store_error_and_stays(
    tmp_path: Path,
) -> None:
    path = tmp_path / STORE
    written(path)
    damage(path, "page 2 zeroed")
    before = path.read_bytes()
    with read_only(path), pytest.raises(StoreError) as raised:
        open_store(path)
    assert raised.value.path == str(path) and "cannot be moved aside" in str(raised.value)
    assert path.read_bytes() == before and asides(path) == []


def test_a_sound_file_is_never_moved_aside_for_damage_met_in_another(tmp_path: Path) -> None:
    """Damage a kernel met in the file it opened, when the file now at the path is sound
    (another kernel recovered it meanwhile): nothing is moved."""
    path = tmp_path / STORE
    written(path)
    damage(path, "page 2 zeroed")
    with pytest.raises(StoreError) as raised:
        Store(path)
    path.unlink()
    written(path)
    assert recover(path, raised.value) is None and asides(path) == []


@pytest.mark.parametrize("how", DAMAGES)
def test_named_agents_work_on_the_recovered_store_and_the_runtime_says_so_once(
    server: LocalServer, tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / STORE
    written(path, namespace="default")
    damage(path, how)
    with (
        caplog.at_level(logging.WARNING, logger="agentrt_jupyter"),
        AgentRuntime(runtime_config(server, store_path=path)) as runtime,
    ):
        recovery = runtime.store_recovery
        assert recovery is not None and runtime.store_problem is None
        agent = runtime.create_agent(name="default")
        assert agent.chat("still here").text(timeout=10) == "Echo: still here"
        another = runtime.create_agent(name="other")
        assert another.chat("me too").text(timeout=10) == "Echo: me too"
        assert {"default", "other"} <= set(runtime.stored_conversations())
    said = [r.getMessage() for r in caplog.records]
    assert said == [str(recovery)]
    with Store(path) as reopened:
        kept = {r.name: r.messages for r in reopened.conversations("default")}
        assert kept["default"] == 2 and kept["other"] == 2


def test_damage_the_open_check_does_not_reach_is_recovered_at_the_first_read_meeting_it(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file too big for the whole-file check at open (here: every file) with a damaged
    leaf: the first listing meets it, recovers, and the agent is created on the fresh file."""
    monkeypatch.setattr(store_module, "QUICK_CHECK_MAX_BYTES", 0)
    path = tmp_path / STORE
    written(path, namespace="default")
    damage(path, "garbage mid-file")
    with AgentRuntime(runtime_config(server, store_path=path)) as runtime:
        assert runtime.store_recovery is None and runtime.store_problem is None
        agent = runtime.create_agent(name="delta")  # looks for a stored "delta" first
        recovery = runtime.store_recovery
        assert recovery is not None and recovery.conversations == len(NAMES)
        assert agent.chat("after the repair").text(timeout=10) == "Echo: after the repair"
        assert len(asides(path)) == 1
    with Store(path) as reopened:
        names = [r.name for r in reopened.conversations("default") if r.messages == 2]
        assert names == ["delta"]


def test_a_file_too_big_to_check_at_open_is_checked_in_the_background_and_recovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The damage the background check finds is recovered at the next write, and the
    conversation being written goes on in the fresh file, its lease held."""
    monkeypatch.setattr(store_module, "QUICK_CHECK_MAX_BYTES", 0)
    path = tmp_path / STORE
    written(path)
    damage(path, "garbage mid-file")
    store = Store(path)  # the first pages of each table and index read
    assert not store.pages_checked
    live = store.create("ns", "live", {})
    recorder = StoreRecorder(store)
    found = recorder.page_check.result(timeout=10)
    assert found is not None and found.path == str(path) and "corrupt pages" in str(found)
    assert recorder.recovery is None and recorder.store is store
    with caplog.at_level(logging.WARNING, logger="agentrt_jupyter"):
        recorder.message(live, ConversationMessage("user", (TextPart("goes on"),), 1))
    recovery = recorder.recovery
    assert recovery is not None and [r.getMessage() for r in caplog.records] == [str(recovery)]
    assert recorder.store is not None and recorder.store is not store
    assert recorder.store.held == (live,) and len(asides(path)) == 1
    recorder.message(live, ConversationMessage("user", (TextPart("and on"),), 2))
    loaded = recorder.store.load(live)
    assert loaded is not None
    assert [m.text for m in loaded.conversation.messages] == ["goes on", "and on"]
    recorder.close()


def test_damage_met_after_another_kernel_recovered_the_file_goes_on_with_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "QUICK_CHECK_MAX_BYTES", 0)
    path = tmp_path / STORE
    written(path)
    damage(path, "garbage mid-file")
    store = Store(path)
    recorder = StoreRecorder(store)
    assert recorder.page_check.result(timeout=10) is not None
    for suffix in ("", "-wal", "-shm"):  # another kernel put a sound store in its place
        os.replace(f"{path}{suffix}", tmp_path / f"elsewhere{suffix}")
    written(path)
    cid = recorder.create("ns", "delta", CONFIG)
    assert cid is not None and recorder.recovery is None and asides(path) == []
    assert recorder.store is not None and recorder.store is not store
    assert [r.name for r in recorder.store.conversations("ns")] == [*NAMES, "delta"]
    recorder.close()


# -- item 2: resume on a store that cannot be used ---------------------------------------


@pytest.fixture(params=["random bytes", "truncated", "a directory", "read-only"])
def unusable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A store path that cannot be used, and a word of what the error must say."""
    path = tmp_path / STORE
    if request.param == "random bytes":
        path.write_bytes(os.urandom(16384))
        yield path, "not a readable conversation store"
    elif request.param == "truncated":
        written(path, namespace="default")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        yield path, "corrupt"
    elif request.param == "a directory":
        path.mkdir()
        yield path, "cannot be opened"
    else:
        written(path, namespace="default")
        with read_only(path):
            yield path, "read-only"


def test_resume_on_an_unusable_store_names_the_file_and_what_is_wrong(
    server: LocalServer, unusable: tuple[Path, str]
) -> None:
    path, words = unusable
    with AgentRuntime(runtime_config(server, store_path=path)) as runtime:
        with pytest.raises(StoreError) as raised:
            runtime.resume("alpha")
        assert not isinstance(raised.value, InvalidConfig)
        assert raised.value.path == str(path)
        assert str(path) in str(raised.value) and words in str(raised.value)
        assert "cannot resume 'alpha'" in str(raised.value)


def test_resume_without_a_store_path_is_invalid_config(server: LocalServer) -> None:
    with (
        AgentRuntime(runtime_config(server, store_path=None)) as runtime,
        pytest.raises(InvalidConfig, match="resume needs a store"),
    ):
        runtime.resume("alpha")


# -- the notebook ----------------------------------------------------------------------


@pytest.mark.kernel
def test_load_ext_on_a_damaged_store_says_what_it_recovered_in_one_line_and_cells_answer(
    server: LocalServer, tmp_path: Path
) -> None:
    path = tmp_path / STORE
    written(path, namespace="damaged.ipynb")
    damage(path, "page 2 zeroed")
    with notebook_kernel(tmp_path, "damaged.ipynb", server.url, server.token) as kernel:
        loaded = [m for m in kernel.messages if m["msg_type"] in ("stream", "error")]
        said = [line for m in loaded for line in m["content"].get("text", "").splitlines()]
        (aside,) = asides(path)
        assert len(said) == 1, said
        assert str(path) in said[0] and "recovered 3 conversations" in said[0]
        assert f"the damaged file is kept as {aside}" in said[0]
        for cell in ("%%agent\nhello", "%%agent\nagain"):
            ran = kernel.run(cell)
            assert ran.ok, ran.error
            assert not [m for m in ran.messages if m["msg_type"] in ("stream", "error")]
        assert "(not used" not in kernel.run("%agent config").stdout
