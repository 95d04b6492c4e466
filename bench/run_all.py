"""Run every benchmark, each in its own process, and write the results table.

    .venv/bin/python bench/run_all.py            # full run, 5-10 minutes
    .venv/bin/python bench/run_all.py --quick    # fewer repetitions, about 3 minutes
    .venv/bin/python bench/run_all.py --only cancel display

Writes bench/results/<figure>.json (one per script), bench/results/results.json (all
rows, the machine, versions) and bench/results/results.md (the Markdown table). A script
that fails or times out is reported as NOT RUN with its last error line, never skipped.
The local model engine figure is reused from bench/results/local_engine.json (run
bench/bench_local_engine.py to refresh it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import RESULTS, machine, not_run

BENCH = Path(__file__).parent
SCRIPTS = {
    "streaming": ("1. Streaming overhead", "bench_streaming.py"),
    "concurrency": ("2. Concurrency", "bench_concurrency.py"),
    "kernel_responsiveness": ("3. Kernel responsiveness", "bench_kernel_responsiveness.py"),
    "cancel": ("4. Cancel latency", "bench_cancel.py"),
    "jupyter_ai": ("5. vs jupyter-ai", "bench_jupyter_ai.py"),
    "display": ("6. Display coalescing", "bench_display.py"),
    "frames": ("7. DataFrames", "bench_frames.py"),
    "shutdown": ("8. Shutdown", "bench_shutdown.py"),
    "conversations": ("9. Conversations", "bench_conversations.py"),
    "store": ("10. Store", "bench_store.py"),
    "fairness": ("11. Fairness", "bench_fairness.py"),
    "shared_quota": ("12. One quota per key", "bench_shared_quota.py"),
    "operators": ("13. Operators", "bench_operators.py"),
    "providers": ("14. Providers' streaming", "bench_providers.py"),
}
TIMEOUT = 900
COLUMNS = ("Figure", "Metric", "Measured", "Baseline (same run)", "Ratio", "Target", "Result")


def run_script(name: str, quick: bool) -> tuple[list[dict[str, Any]], float]:
    """Run one script in a fresh process; its rows, or a NOT RUN row saying why."""
    figure, script = SCRIPTS[name]
    result = RESULTS / f"{name}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, str(BENCH / script), *(["--quick"] if quick else [])]
    start = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=BENCH, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return [not_run(figure, script, "—", f"timed out after {TIMEOUT} s")], TIMEOUT
    elapsed = time.monotonic() - start
    print(done.stdout, end="")
    if done.returncode != 0 or not result.exists():
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit code {done.returncode}"
        print(done.stderr[-3000:], file=sys.stderr)
        return [not_run(figure, script, "—", f"script failed: {why}")], elapsed
    rows: list[dict[str, Any]] = json.loads(result.read_text())["rows"]
    return rows, elapsed


def local_engine_rows() -> list[dict[str, Any]]:
    """The embedded model's figures, from bench_local_engine.py's last run."""
    path = RESULTS / "local_engine.json"
    figure = "Local model engine"
    if not path.exists():
        return [not_run(figure, "SmolLM2 engine", "—", "run bench/bench_local_engine.py")]
    data = json.loads(path.read_text())
    rows = []
    for scenario, values in data["scenarios"].items():
        ttft, decode = values["ttft_ms"], values["decode_tokens_per_s"]
        rows.append(
            {
                "figure": figure,
                "metric": f"{data['model']}, {scenario}: time to first token; decode speed",
                "value": f"{ttft['median']:.0f} ms [min {ttft['min']:.0f}, max {ttft['max']:.0f}]"
                f"; {decode['median']:.0f} tokens/s [min {decode['min']:.0f}, "
                f"max {decode['max']:.0f}]",
                "baseline": "—",
                "ratio": "—",
                "target": "informational",
                "status": "—",
                "note": f"reused from local_engine.json ({data['runs_per_scenario']} runs each, "
                f"{data['machine']['n_threads']} llama.cpp threads on {data['machine']['cpus']} "
                f"CPUs, llama-cpp-python {data['llama_cpp_python']})",
            }
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    info = report["machine"]
    mode = "quick (fewer repetitions)" if report["quick"] else "full"
    lines = [
        "# Benchmark results",
        "",
        f"- Date: {report['date']} ({mode} run, {report['seconds']:.0f} s)",
        f"- Machine: {info['cpu']}, {info['cores']} cores ({info['platform']}); shared and "
        "noisy, so every figure is a distribution or a ratio against a baseline measured in "
        "the same run",
        f"- Python {info['python']}, google-genai {info['google-genai']}, ipykernel "
        f"{info['ipykernel']}, aiohttp {info['aiohttp']}",
        "- Distributions: median [p5, p95; n] (min, max when n < 20)",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    notes = []
    for r in report["rows"]:
        metric = r["metric"]
        if r.get("note"):
            notes.append(r["note"])
            metric += f" [{len(notes)}]"
        cells = (r["figure"], metric, r["value"], r["baseline"], r["ratio"], r["target"])
        status = f"**{r['status']}**" if r["status"] in ("MISS", "NOT RUN") else r["status"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + f" | {status} |")
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"{i}. {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (~3 minutes)")
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), help="run only these")
    args = parser.parse_args()
    start = time.monotonic()
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    for name in args.only or SCRIPTS:
        print(f"== {name}", flush=True)
        figure_rows, seconds[name] = run_script(name, args.quick)
        rows += figure_rows
    rows += local_engine_rows()
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "seconds": time.monotonic() - start,
        "script_seconds": seconds,
        "machine": machine(),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "results.md").write_text(markdown(report))
    print(markdown(report))
    missed = [r for r in rows if r["status"] in ("MISS", "NOT RUN")]
    print(f"{len(missed)} of {len(rows)} rows missed or not run")


if __name__ == "__main__":
    main()
