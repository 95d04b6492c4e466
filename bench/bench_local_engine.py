"""Benchmark the `local` engine (SmolLM2-135M on the CPU) through its engine API.

Measures, over several runs per scenario: time to first token, decode speed
(tokens/s after the first token), end-to-end tokens/s, and the process's peak RSS
before and after loading the model. Prints a Markdown table and writes
bench/results/local_engine.json.

    python bench/bench_local_engine.py [--runs 5] [--max-tokens 256] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from agentrt_jupyter.server.engines.base import GenerateRequest
from agentrt_jupyter.server.engines.local import LocalEngine, create_engine

RESULTS = Path(__file__).parent / "results" / "local_engine.json"
STORY = "Write a long story about a lighthouse keeper and a storm."
LONG_CONTEXT = "Here are my notes from the week. " + "The harbour was calm and grey. " * 180


@dataclass
class Run:
    prompt_tokens: int
    generated_tokens: int
    ttft_s: float
    total_s: float

    @property
    def decode_tps(self) -> float:
        """Tokens after the first, over the time after the first: the sampling speed."""
        return (self.generated_tokens - 1) / max(self.total_s - self.ttft_s, 1e-9)

    @property
    def end_to_end_tps(self) -> float:
        return self.generated_tokens / self.total_s


def peak_rss_mib() -> float:
    """Peak resident set of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def timed(engine: LocalEngine, request: GenerateRequest) -> Run:
    start = time.perf_counter()
    first: float | None = None
    usage: dict[str, int] = {}
    async for chunk in engine.generate(request):
        if first is None and any(part.get("text") for part in chunk.parts):
            first = time.perf_counter() - start
        usage = chunk.usage
    total = time.perf_counter() - start
    return Run(usage["promptTokenCount"], usage["candidatesTokenCount"], first or total, total)


def scenarios(max_tokens: int) -> dict[str, list[GenerateRequest]]:
    """Each scenario is a list of requests run in order; only the last one is timed.

    A seed makes the engine re-evaluate the whole prompt, so "cold" runs pay the full
    prompt cost; "cached" runs repeat a prompt whose prefix is still in the KV cache.
    """

    def req(text: str, **config: Any) -> GenerateRequest:
        return GenerateRequest(
            model="smollm2",
            contents=[{"role": "user", "parts": [{"text": text}]}],
            generation_config={"maxOutputTokens": max_tokens, "temperature": 0.2, **config},
        )

    return {
        "short prompt, cold": [req(STORY, seed=1)],
        "short prompt, cached prefix": [req(STORY), req(STORY)],
        "long prompt, cold": [req(LONG_CONTEXT + STORY, seed=1)],
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def bench(runs: int, max_tokens: int, threads: int | None = None) -> dict[str, Any]:
    rss_before = peak_rss_mib()
    engine = create_engine(n_threads=threads)
    start = time.perf_counter()
    await engine.load()
    load_s = time.perf_counter() - start
    results: dict[str, Any] = {}
    try:
        for name, requests in scenarios(max_tokens).items():
            timings = []
            for _ in range(runs):
                for warmup in requests[:-1]:
                    await timed(engine, warmup)
                timings.append(await timed(engine, requests[-1]))
            results[name] = {
                "prompt_tokens": timings[0].prompt_tokens,
                "generated_tokens": spread([float(t.generated_tokens) for t in timings]),
                "ttft_ms": spread([t.ttft_s * 1000 for t in timings]),
                "decode_tokens_per_s": spread([t.decode_tps for t in timings]),
                "end_to_end_tokens_per_s": spread([t.end_to_end_tps for t in timings]),
                "runs": [asdict(t) for t in timings],
            }
    finally:
        await engine.aclose()
    return {
        "engine": "local",
        "model": engine.model_path.name,
        "llama_cpp_python": version("llama-cpp-python"),
        "machine": {
            "cpu": _cpu_name(),
            "cpus": os.cpu_count(),
            "n_threads": engine.n_threads,
            "python": platform.python_version(),
        },
        "runs_per_scenario": runs,
        "max_output_tokens": max_tokens,
        "load_s": load_s,
        "peak_rss_mib": {"before_load": rss_before, "after_runs": peak_rss_mib()},
        "scenarios": results,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(report: dict[str, Any]) -> str:
    def fmt(stat: dict[str, float], digits: int = 0) -> str:
        return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"

    lines = [
        "| scenario | prompt tok | generated tok | TTFT ms | decode tok/s | end-to-end tok/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["scenarios"].items():
        lines.append(
            f"| {name} | {s['prompt_tokens']} | {fmt(s['generated_tokens'])} | "
            f"{fmt(s['ttft_ms'], 1)} | {fmt(s['decode_tokens_per_s'])} | "
            f"{fmt(s['end_to_end_tokens_per_s'])} |"
        )
    rss = report["peak_rss_mib"]
    machine = report["machine"]
    lines += [
        "",
        f"median (min-max) of {report['runs_per_scenario']} runs, "
        f"maxOutputTokens {report['max_output_tokens']}; model load {report['load_s']:.2f} s; "
        f"peak RSS {rss['before_load']:.0f} MiB before load, {rss['after_runs']:.0f} MiB after; "
        f"{machine['cpu']}, {machine['n_threads']} threads, "
        f"llama-cpp-python {report['llama_cpp_python']}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument(
        "--threads", type=int, default=None, help="llama.cpp threads (default: the engine's)"
    )
    args = parser.parse_args()
    report = asyncio.run(bench(args.runs, args.max_tokens, args.threads))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
