"""Figure 5: extension load time and warm cell latency against jupyter-ai.

Each incumbent lives in its own virtualenv (they pull in langchain or litellm):

    python3.11 -m venv /tmp/venv-jai2 && /tmp/venv-jai2/bin/pip install \
        "jupyter-ai-magics>=2,<3" langchain-google-genai ipykernel
    python3.11 -m venv /tmp/venv-jai3 && /tmp/venv-jai3/bin/pip install \
        "jupyter-ai>=3,<4" jupyter-ai-magic-commands ipykernel

(`--jai2`/`--jai3` point elsewhere; a missing venv is reported as not run). Load time is
`%load_ext` timed inside a fresh kernel, several kernels each, interleaved. Cell latency
is measured from the front end (execute_request sent -> execute_reply) in warm kernels,
all three against the same local scripted server: `%%agent` vs `%%ai` (2.x through
langchain-google-genai's REST transport, 3.x through litellm with `--api-base`). Neither
incumbent streams, so our time to first chunk (first reply display update) stands
beside their time to the full reply on a 2 s reply (`@@delay 20`, 100 chunks).

Targets: our load < 150 ms; our full-reply latency <= theirs; our first chunk far
earlier (<= 10% of their full reply) on the long reply.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import dist, row, show, write_result
from _kernel import BenchKernel, agent_kernel, display_updates, first_display_id

from agentrt_jupyter.server.process import LocalServer

FIGURE = "5. vs jupyter-ai"
SHORT = "a short reply please\n@@reply Hello! How can I help you today?"
"""A fixed reply: the echo default would copy jupyter-ai 2.x's history into every reply
(it sends earlier exchanges as text), doubling the prompt each cell."""
LONG_TEXT = " ".join(f"word{i}" for i in range(200))
LONG = f"a long reply please\n@@delay 20\n@@chunks 100\n@@reply {LONG_TEXT}"
"""Directives start on the second line: jupyter-ai 2.x prefixes the prompt with "Human: "."""
KINDS = ("status", "stream", "display_data", "update_display_data", "execute_result", "error")
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
    load_s: list[float] = field(default_factory=list)
    short_s: list[float] = field(default_factory=list)
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


def load_time(system: System, env: dict[str, str]) -> float:
    with BenchKernel(system.python, env) as kernel:
        reply, _ = kernel.run(LOAD_CODE.format(name=system.extension), timeout=180)
        out = kernel.stdout(reply.parent or "").split()
        return float(out[out.index("LOAD_S") + 1])


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
    updates = display_updates(kernel, msg_id, first_display_id(kernel, msg_id))
    return reply.at - sent, (updates[0].at - sent) if updates else None


def measure(system: System, kernel: BenchKernel, prompt: str) -> None:
    """One warm cell; a failure or hang takes the system out with the reason."""
    try:
        full, first = cell(kernel, system.magic, prompt)
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
    with LocalServer.start("scripted") as server, tempfile.TemporaryDirectory() as home:
        systems = [
            System("agentrt %%agent", sys.executable, "agentrt_jupyter", "%%agent bench"),
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
                    system.load_s.append(load_time(system, envs[system.label]))
                except Exception as exc:
                    system.problem = f"load failed: {type(exc).__name__}: {exc}"[:300]
            live = [s for s in live if s.problem is None]
        kernels: dict[str, BenchKernel] = {}
        try:
            for system in live:
                if system is ours:
                    kernels[system.label] = agent_kernel(server, home)
                else:
                    kernel = BenchKernel(system.python, envs[system.label])
                    kernels[system.label] = kernel
                    kernel.run(f"%load_ext {system.extension}", timeout=180)
                try:
                    cell(kernels[system.label], system.magic, SHORT)  # warm-up
                except Exception as exc:
                    system.problem = f"cannot reach the server: {exc}"[:300]
            live = [s for s in live if s.problem is None]
            for prompt, repeat in ((SHORT, shorts), (LONG, longs)):
                for _ in range(repeat):
                    for system in live:
                        measure(system, kernels[system.label], prompt)
                    live = [s for s in live if s.problem is None]
        finally:
            for kernel in kernels.values():
                kernel.close()
    return table(systems), {
        s.label: {
            "load_s": s.load_s,
            "short_s": dist(s.short_s),
            "long_s": dist(s.long_s),
            "long_first_s": dist(s.long_first_s),
            "problem": s.problem,
            "version": s.version,
        }
        for s in systems
    }


def table(systems: list[System]) -> list[dict[str, Any]]:
    ours, incumbents = systems[0], systems[1:]
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
    for system in incumbents:
        if system.problem is not None:
            rows.append(
                {
                    **row(FIGURE, f"{system.label}", "not run", "—", "—", "—", None),
                    "status": "NOT RUN",
                    "note": system.problem,
                }
            )
            continue
        short_ours, short_theirs = dist(ours.short_s), dist(system.short_s)
        rows.append(
            row(
                FIGURE,
                f"warm cell, short reply, full reply: %%agent vs {system.label}",
                show(short_ours, "ms", 1000, 1),
                show(short_theirs, "ms", 1000, 1),
                f"{short_ours['median'] / short_theirs['median']:.2f}",
                "ours <= theirs",
                short_ours["median"] <= short_theirs["median"],
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
