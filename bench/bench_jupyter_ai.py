"""Figure 5: extension load time, the first cell, and warm cell latency against jupyter-ai.

Each incumbent lives in its own virtualenv (they pull in langchain or litellm):

    python3.11 -m venv /tmp/venv-jai2 && /tmp/venv-jai2/bin/pip install \
        "jupyter-ai-magics>=2,<3" langchain-google-genai ipykernel
    python3.11 -m venv /tmp/venv-jai3 && /tmp/venv-jai3/bin/pip install \
        "jupyter-ai>=3,<4" jupyter-ai-magic-commands ipykernel

(`--jai2`/`--jai3` point elsewhere; a missing venv is reported as not run). Load time is
`%load_ext` timed inside a fresh kernel, several kernels each, interleaved, every package
imported from current bytecode as installed (pip compiled the incumbents'; ours is
compiled first: a tree edited under PYTHONDONTWRITEBYTECODE would be compiled again in
every kernel). In the same fresh kernel, `FIRST_CELL_AFTER` seconds after the load (a
person writing their first cell), the first cell's short reply is timed from the front
end: execute_request sent -> the first IOPub message showing reply text ("time to first
words"; our `%load_ext` started the warm-up in the background: the SDK import, client,
server and the SDK's models, about 1 s of CPU itself, so the first cell may wait for the
rest of it). Warm cell latency is measured from the front end (execute_request sent ->
execute_reply) in warm kernels, all three against the same local scripted server: `%%agent`
vs `%%ai` (2.x through langchain-google-genai's REST transport, 3.x through litellm with
`--api-base`). Both incumbents send the last two exchanges with each prompt, while a
notebook's agent sends its whole conversation (and the SDK's request building costs ~0.5 ms
of CPU per earlier message): so our compared cells run on a conversation cut back as often
(an untimed `%agent reset` every third cell), and a second agent's cells, on the whole
conversation, are reported beside them (informational). Neither incumbent streams, so on a
2 s reply (`@@delay 20`, 100 chunks) our time to first chunk (the reply display's first
text; a reply still running after `live_after`, 0.15 s, opens it) stands beside their time
to the full reply.

Targets: our load < 150 ms; our first cell's first words <= 300 ms; our warm full-reply
latency <= theirs; our first chunk far earlier (<= 10% of their full reply) on the long
reply.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import dist, row, show, write_result
from _kernel import BenchKernel, agent_kernel, first_display_id

import agentrt_jupyter
from agentrt_jupyter.server.process import LocalServer

FIGURE = "5. vs jupyter-ai"
SHORT = "a short reply please\n@@reply Hello! How can I help you today?"
"""A fixed reply: the echo default would copy jupyter-ai 2.x's history into every reply
(it sends earlier exchanges as text), doubling the prompt each cell."""
LONG_TEXT = " ".join(f"word{i}" for i in range(200))
LONG = f"a long reply please\n@@delay 20\n@@chunks 100\n@@reply {LONG_TEXT}"
"""Directives start on the second line: jupyter-ai 2.x prefixes the prompt with "Human: "."""
KINDS = ("status", "stream", "display_data", "update_display_data", "execute_result", "error")
SHOWN = ("stream", "display_data", "update_display_data", "execute_result")
FIRST_WORD = "Hello"
"""The reply to SHORT starts with it: the first message holding it is its first words."""
FIRST_CELL_AFTER = 1.0
"""Seconds between `%load_ext` and the first cell in a fresh kernel."""
KEPT = 2
"""Earlier exchanges jupyter-ai sends with each `%%ai` prompt (2.x and 3.x alike)."""
LOAD_CODE = (
    "import time as _t\n_s = _t.perf_counter()\n"
    "get_ipython().run_line_magic('load_ext', {name!r})\nprint('LOAD_S', _t.perf_counter() - _s)"
)


@dataclass
class System:
    label: str
    python: str
    extension: str
    magic: str = ""
    arguments: tuple[str, ...] = ()
    whole_magic: str = ""
    """Ours: the magic of a second agent whose conversation is never cut back."""
    load_s: list[float] = field(default_factory=list)
    first_words_s: list[float] = field(default_factory=list)
    short_s: list[float] = field(default_factory=list)
    short_whole_s: list[float] = field(default_factory=list)
    long_s: list[float] = field(default_factory=list)
    long_first_s: list[float] = field(default_factory=list)
    problem: str | None = None
    version: str = ""


def installed_version(python: str, distribution: str) -> str:
    """The version of `distribution` in the virtualenv of `python`."""
    code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else "not installed"


def incumbent_env(server: LocalServer, home: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "GOOGLE_API_KEY": server.token,
        "GEMINI_API_KEY": server.token,
        # litellm would fetch its model price map from the internet (unreachable here,
        # and retried with sleeps): use the copy it ships.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }


def fresh_kernel(system: System, env: dict[str, str], home: str) -> tuple[float, float]:
    """In a new kernel, on an empty store and reply cache under `home`: (`%load_ext`
    seconds, the first cell's time to first words)."""
    env = {**env, "AGENTRT_HOME": tempfile.mkdtemp(dir=home)}
    with BenchKernel(system.python, env, system.arguments) as kernel:
        reply, _ = kernel.run(LOAD_CODE.format(name=system.extension), timeout=180)
        out = kernel.stdout(reply.parent or "").split()
        load = float(out[out.index("LOAD_S") + 1])
        time.sleep(FIRST_CELL_AFTER)  # the scenario: a person writes the first cell
        msg_id, sent = kernel.send(f"{system.magic}\n{SHORT}")
        reply = kernel.reply(msg_id, 180)
        if reply.content.get("status") != "ok":
            raise RuntimeError(f"the first cell failed: {kernel.error_text(msg_id)}")
        shown = [m for m in kernel.of(msg_id, *SHOWN) if FIRST_WORD in json.dumps(m.content)]
        if not shown:
            raise RuntimeError(f"the first cell showed no reply: {kernel.stdout(msg_id)[-300:]}")
        return load, shown[0].at - sent


def cell(kernel: BenchKernel, magic: str, prompt: str) -> tuple[float, float | None]:
    """(seconds to the full reply, seconds to the first reply update or None)."""
    msg_id, sent = kernel.send(f"{magic}\n{prompt}")
    try:
        reply = kernel.reply(msg_id, 60)
    except TimeoutError:
        seen = [m.type for m in kernel.of(msg_id, *KINDS)]
        raise TimeoutError(f"no reply in 60 s; the cell sent {seen}") from None
    if reply.content.get("status") != "ok" or kernel.of(msg_id, "error"):
        raise RuntimeError(kernel.error_text(msg_id))
    text = kernel.stdout(msg_id)
    if "Error calling" in text or not kernel.of(msg_id, "execute_result", "display_data"):
        raise RuntimeError(text.strip()[-300:] or "no output")
    ident = first_display_id(kernel, msg_id)
    shown = [
        m
        for m in kernel.of(msg_id, "display_data", "update_display_data")
        if ident is not None
        and m.content.get("transient", {}).get("display_id") == ident
        and m.content.get("data", {}).get("text/plain")
    ]
    return reply.at - sent, (shown[0].at - sent) if shown else None


def measure(system: System, kernel: BenchKernel, prompt: str, index: int) -> None:
    """The `index`th warm cell; a failure or hang takes the system out with the reason.

    Ours is measured twice: on a conversation cut back as often as jupyter-ai's (which
    sends the last `KEPT` exchanges; an untimed `%agent reset` every `KEPT + 1` cells),
    and on the whole conversation, which a notebook's agent really sends."""
    try:
        if system.whole_magic and index % (KEPT + 1) == 0:
            kernel.run(f"%agent reset {system.magic.split()[1]}")
        full, first = cell(kernel, system.magic, prompt)
        if system.whole_magic and prompt == SHORT:
            system.short_whole_s.append(cell(kernel, system.whole_magic, prompt)[0])
    except Exception as exc:
        system.problem = f"a warm cell failed: {type(exc).__name__}: {exc}"[:300]
        return
    if prompt == SHORT:
        system.short_s.append(full)
    else:
        system.long_s.append(full)
        if first is not None:
            system.long_first_s.append(first)


def run(quick: bool, jai2: str, jai3: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    loads = 3 if quick else 6
    shorts = 8 if quick else 25
    longs = 2 if quick else 5
    compileall.compile_dir(Path(agentrt_jupyter.__file__).parent, quiet=1)
    with LocalServer.start("scripted") as server, tempfile.TemporaryDirectory() as home:
        systems = [
            System(
                "agentrt %%agent",
                sys.executable,
                "agentrt_jupyter",
                "%%agent bench",
                (f"--AgentMagics.base_url={server.url}",),
                "%%agent whole",
            ),
            System(
                "jupyter-ai-magics 2.x %%ai",
                f"{jai2}/bin/python",
                "jupyter_ai_magics",
                '%%ai gemini:gemini-2.5-flash -m {"transport":"rest","client_options":'
                f'{{"api_endpoint":"{server.url}"}}}}',
            ),
            System(
                "jupyter-ai 3.x %%ai",
                f"{jai3}/bin/python",
                "jupyter_ai_magic_commands",
                f"%%ai gemini/gemini-2.5-flash --api-base {server.url}/v1beta",
            ),
        ]
        ours = systems[0]
        ours_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRT_")}
        ours_env.update(GOOGLE_API_KEY=server.token, AGENTRT_HOME=home)
        envs = {ours.label: ours_env}
        for system in systems[1:]:
            envs[system.label] = incumbent_env(server, home)
            if not Path(system.python).exists():
                system.problem = f"no virtualenv at {Path(system.python).parents[1]}"
                continue
            distribution = system.extension.replace("_", "-")
            system.version = installed_version(system.python, distribution)
        live = [s for s in systems if s.problem is None]
        for _ in range(loads):
            for system in live:
                try:
                    load, first_words = fresh_kernel(system, envs[system.label], home)
                except Exception as exc:
                    system.problem = f"a fresh kernel failed: {type(exc).__name__}: {exc}"[:300]
                    continue
                system.load_s.append(load)
                system.first_words_s.append(first_words)
            live = [s for s in live if s.problem is None]
        kernels: dict[str, BenchKernel] = {}
        try:
            for system in live:
                if system is ours:
                    kernels[system.label] = agent_kernel(server, home)
                    # Live calls only: after a reset, a cell would replay the reply cache.
                    kernels[system.label].run("%config AgentMagics.cache = False")
                else:
                    kernel = BenchKernel(system.python, envs[system.label])
                    kernels[system.label] = kernel
                    kernel.run(f"%load_ext {system.extension}", timeout=180)
                try:  # warm-up: theirs then keep KEPT exchanges from the first timed cell on
                    for _ in range(KEPT):
                        cell(kernels[system.label], system.magic, SHORT)
                    if system.whole_magic:
                        cell(kernels[system.label], system.whole_magic, SHORT)
                except Exception as exc:
                    system.problem = f"cannot reach the server: {exc}"[:300]
            live = [s for s in live if s.problem is None]
            for prompt, repeat in ((SHORT, shorts), (LONG, longs)):
                for index in range(repeat):
                    for system in live:
                        measure(system, kernels[system.label], prompt, index)
                    live = [s for s in live if s.problem is None]
        finally:
            for kernel in kernels.values():
                kernel.close()
    return table(systems), {
        s.label: {
            "load_s": s.load_s,
            "first_words_s": s.first_words_s,
            "short_s": dist(s.short_s),
            "short_whole_s": dist(s.short_whole_s),
            "long_s": dist(s.long_s),
            "long_first_s": dist(s.long_first_s),
            "problem": s.problem,
            "version": s.version,
        }
        for s in systems
    }


def table(systems: list[System]) -> list[dict[str, Any]]:
    ours, incumbents = systems[0], systems[1:]
    rows = [*_first_cell_rows(ours, incumbents)]
    for system in incumbents:
        rows.extend(_warm_rows(ours, system))
    whole, capped = dist(ours.short_whole_s), dist(ours.short_s)
    if whole.get("n") and capped.get("n"):
        rows.append(
            row(
                FIGURE,
                f"warm short reply, %%agent sending the whole conversation (1 to {whole['n']} "
                "earlier exchanges, as a notebook's agent does)",
                show(whole, "ms", 1000, 1),
                f"the same cut back to <= {KEPT}: {show(capped, 'ms', 1000, 1)}",
                f"{whole['median'] / capped['median']:.2f}",
                "informational",
                None,
            )
        )
    return rows


def _first_cell_rows(ours: System, incumbents: list[System]) -> list[dict[str, Any]]:
    rows = []
    ok = [s for s in incumbents if s.problem is None]
    theirs = "; ".join(f"{s.label}: {show(dist(s.load_s), 'ms', 1000, 0)}" for s in ok)
    ours_load = dist(ours.load_s)
    rows.append(
        row(
            FIGURE,
            "`%load_ext` in a fresh kernel (agentrt_jupyter)",
            show(ours_load, "ms", 1000, 0),
            theirs or "—",
            ", ".join(
                f"{ours_load['median'] / dist(s.load_s)['median']:.2f} of {s.label.split()[0]} "
                f"{s.label.split()[1]}"
                for s in ok
            )
            or "—",
            "< 150 ms",
            ours_load["median"] < 0.150,
            ours.problem or "",
        )
    )
    theirs_first = "; ".join(f"{s.label}: {show(dist(s.first_words_s), 'ms', 1000, 0)}" for s in ok)
    ours_first = dist(ours.first_words_s)
    rows.append(
        row(
            FIGURE,
            f"first cell {FIRST_CELL_AFTER:g} s after `%load_ext`: time to first words",
            show(ours_first, "ms", 1000, 0),
            theirs_first or "—",
            ", ".join(
                f"{ours_first['median'] / dist(s.first_words_s)['median']:.2f} of "
                f"{s.label.split()[0]} {s.label.split()[1]}"
                for s in ok
            )
            or "—",
            "<= 300 ms",
            bool(ours_first.get("n")) and ours_first["median"] <= 0.300,
            ours.problem or "",
        )
    )
    return rows


def _warm_rows(ours: System, system: System) -> list[dict[str, Any]]:
    """Warm cells of ours against one incumbent (NOT RUN with the reason if it failed).

    Cells run in turns (ours, then each incumbent's), so the ratio of each pair is taken
    in the same moment of a noisy machine; their median decides the short reply."""
    rows = []
    if system.problem is not None:
        rows.append(
            {
                **row(FIGURE, f"{system.label}", "not run", "—", "—", "—", None),
                "status": "NOT RUN",
                "note": system.problem,
            }
        )
        return rows
    short_ours, short_theirs = dist(ours.short_s), dist(system.short_s)
    short_ratio = dist(a / b for a, b in zip(ours.short_s, system.short_s, strict=False))
    rows.append(
        row(
            FIGURE,
            f"warm short reply, full reply (each sending <= {KEPT} earlier exchanges): "
            f"%%agent vs {system.label}",
            show(short_ours, "ms", 1000, 1),
            show(short_theirs, "ms", 1000, 1),
            f"{show(short_ratio, digits=2)} (paired)",
            "ours <= theirs (median of paired ratios <= 1)",
            short_ratio["median"] <= 1.0,
            f"{system.extension} {system.version}",
        )
    )
    long_ours, long_theirs = dist(ours.long_s), dist(system.long_s)
    first = dist(ours.long_first_s)
    rows.append(
        row(
            FIGURE,
            f"warm cell, 2 s reply: our first chunk / full vs {system.label} full",
            f"first {show(first, 'ms', 1000, 0)}; full {show(long_ours, 'ms', 1000, 0)}",
            show(long_theirs, "ms", 1000, 0),
            f"first {first['median'] / long_theirs['median']:.3f}, full "
            f"{long_ours['median'] / long_theirs['median']:.2f}",
            "full <= theirs; first <= 0.10 of theirs",
            long_ours["median"] <= long_theirs["median"]
            and first["median"] <= 0.10 * long_theirs["median"],
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--jai2", default="/tmp/venv-jai2", help="venv with jupyter-ai-magics 2")
    parser.add_argument("--jai3", default="/tmp/venv-jai3", help="venv with jupyter-ai 3")
    args = parser.parse_args()
    rows, details = run(args.quick, args.jai2, args.jai3)
    details["quick"] = args.quick
    path = write_result("jupyter_ai", rows, details)
    for r in rows:
        print(f"{r['status']:8} {r['metric']}: {r['value']} | baseline {r['baseline']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
