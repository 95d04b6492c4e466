"""Helpers shared by the benchmark scripts: statistics, rows, result files, the server.

The machine is shared and noisy, so every figure is a distribution (median, p5/p95,
min-max) or a ratio against a baseline measured in the same run. Each script writes
`bench/results/<name>.json` with its rows; `run_all.py` turns them into the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from agentrt_jupyter import RuntimeConfig
from agentrt_jupyter.server.process import LocalServer

RESULTS = Path(__file__).parent / "results"
MODEL = "gemini-2.5-flash"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def dist(values: Iterable[float]) -> dict[str, float]:
    """Median, p5, p95, p99, min, max and count of a sample."""
    sample = list(values)
    if not sample:
        return {"n": 0}
    return {
        "n": len(sample),
        "median": statistics.median(sample),
        "p5": percentile(sample, 5),
        "p95": percentile(sample, 95),
        "p99": percentile(sample, 99),
        "min": min(sample),
        "max": max(sample),
    }


def show(d: dict[str, float], unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    """`12.3 ms [p5 10.1, p95 15.0; n=200]`; min and max instead when n < 20."""
    if not d.get("n"):
        return "—"

    def f(key: str) -> str:
        return f"{d[key] * scale:,.{digits}f}"

    low, high = ("p5", "p95") if d["n"] >= 20 else ("min", "max")
    spread = f"{low} {f(low)}, {high} {f(high)}"
    suffix = f" {unit}" if unit else ""
    return f"{f('median')}{suffix} [{spread}; n={d['n']}]"


def row(
    figure: str,
    metric: str,
    value: str,
    baseline: str,
    ratio: str,
    target: str,
    ok: bool | None,
    note: str = "",
) -> dict[str, Any]:
    """One line of the results table; `ok` None means informational (no target)."""
    status = "—" if ok is None else ("PASS" if ok else "MISS")
    return {
        "figure": figure,
        "metric": metric,
        "value": value,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "status": status,
        "note": note,
    }


def not_run(figure: str, metric: str, target: str, why: str) -> dict[str, Any]:
    return {
        "figure": figure,
        "metric": metric,
        "value": "not run",
        "baseline": "—",
        "ratio": "—",
        "target": target,
        "status": "NOT RUN",
        "note": why,
    }


def write_result(name: str, rows: list[dict[str, Any]], details: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"rows": rows, "details": details}, indent=2, default=str) + "\n")
    return path


def main(name: str, doc: str | None, run: Callable[[bool], tuple[list, dict]]) -> None:
    """The command line every script shares: `python bench/X.py [--quick]`."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    rows, details = run(args.quick)
    details["quick"] = args.quick
    path = write_result(name, rows, details)
    for r in rows:
        print(f"{r['status']:8} {r['metric']}: {r['value']} | baseline {r['baseline']}")
    print(f"wrote {path}")


def runtime_config(server: LocalServer, **overrides: Any) -> RuntimeConfig:
    """As tests/conftest.py builds it: the scripted server, no store."""
    settings: dict[str, Any] = {
        "base_url": server.url,
        "api_key": server.token,
        "api_version": "v1beta",
        "store_path": None,
    }
    settings.update(overrides)
    return RuntimeConfig(**settings)


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "google-genai": package_version("google-genai"),
        "ipykernel": package_version("ipykernel"),
        "aiohttp": package_version("aiohttp"),
    }
