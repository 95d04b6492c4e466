"""The reliability suite's figures as a Markdown table (for the README's Reliability section).

    export AGENTRT_RELIABILITY_REPORT=/tmp/figures.jsonl
    .venv/bin/python -m pytest tests/test_reliability_*.py
    .venv/bin/python scripts/reliability_figures.py /tmp/figures.jsonl

Each line of the report is one suite (or one case of a parametrized suite), written by
`tests/reliability_helpers.suite_figures`; this sums them per suite.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def table(lines: list[dict[str, object]]) -> str:
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in lines:
        suite = totals[str(line["suite"])]
        suite["cases"] += 1
        suite["failed cases"] += line["outcome"] != "passed"
        suite["trials"] += float(str(line["trials"]))
        suite["passed"] += float(str(line["passed"]))
        suite["seconds"] += float(str(line["elapsed_s"]))
    rows = [
        "| suite | cases | trials | passed | failed cases | time |",
        "|---|---|---|---|---|---|",
    ]
    for name, suite in totals.items():
        rows.append(
            f"| {name} | {suite['cases']:.0f} | {suite['trials']:,.0f} | {suite['passed']:,.0f} "
            f"| {suite['failed cases']:.0f} | {suite['seconds']:.0f} s |"
        )
    return "\n".join(rows)


def main() -> int:
    if len(sys.argv) != 2 or not Path(sys.argv[1]).exists():
        print(__doc__, file=sys.stderr)
        return 2
    text = Path(sys.argv[1]).read_text(encoding="utf-8")
    print(table([json.loads(line) for line in text.splitlines() if line.strip()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
