"""Figure 12: one quota per key — kernels on one key keep to its limit together.

K processes (kernels, each its own AgentRuntime) map R rows each on one key, against the
local server limiting that key to N requests a second (`LocalServer.set_rate_limit`: a
token bucket of one second's worth; past it a per-minute 429 with RetryInfo). Every map
is told the key's limit (`rpm=60*N`). Measured from the server's request log, once the
kernels are ready (the SDK and the map's modules loaded) and told to go:

- **shared**: the kernels share the store's SQLite file, hence the quota board: their
  starts are spaced for the key as a whole, a 429 makes all of them wait;
- **alone**: no store, no board: each kernel keeps to `rpm` by itself (K times the limit
  together), as before issue 19.

Rate: answered requests a second, from the first request to the last answer, over N.
Target (issue 19): shared at ≥ 0.90 of N with few 429s (≤ 5% of the requests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from typing import Any

from _common import main, row

from agentrt_jupyter.server.process import LocalServer

FIGURE = "12. One quota per key"
TARGET_RATE = 0.90
TARGET_LIMITED = 0.05
KERNEL_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import pandas as pd
    from agentrt_jupyter import AgentRuntime, RuntimeConfig
    store = os.environ.get("STORE") or None
    config = RuntimeConfig(base_url=os.environ["URL"], api_key=os.environ["KEY"],
                           api_version="v1beta", store_path=store, idle_chunk_timeout=60.0,
                           quota_max_wait=600.0)
    runtime = AgentRuntime(config)
    runtime.wait_for_quota(60)  # the backend is made: the SDK imported, no request sent
    tag, rows, rpm = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    runtime.map(pd.DataFrame({"text": []}), "Echo {text}")  # the map's modules loaded
    print("ready", flush=True)
    sys.stdin.readline()
    frame = pd.DataFrame({"text": [f"{tag} row{i}" for i in range(rows)]})
    out = runtime.map(frame, "Echo {text}", rpm=rpm, concurrency=2)
    print(json.dumps(out["status"].value_counts().to_dict()), flush=True)
    runtime.shutdown(10)
    """
)


def run_kernels(
    server: LocalServer, store: str | None, kernels: int, rows: int, limit: float
) -> dict[str, Any]:
    """K kernels mapping at once; the server log's figures for their requests."""
    tag = f"q{uuid.uuid4().hex[:8]}"
    home = tempfile.mkdtemp(prefix="agentrt-bench-home-")
    env = dict(os.environ, URL=server.url, KEY=server.token, STORE=store or "", AGENTRT_HOME=home)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", KERNEL_SCRIPT, f"{tag}k{k}x", str(rows), str(60 * limit)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for k in range(kernels)
    ]
    statuses: dict[str, int] = {}
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            assert process.stdout is not None
            for status, count in json.loads(process.stdout.readline()).items():
                statuses[status] = statuses.get(status, 0) + count
    finally:
        for process in processes:
            process.wait(60)
    requests = [r for r in server.requests() if tag in json.dumps(r.get("body"))]
    answered = [r for r in requests if r["status"] == 200]
    span = max(r["finished"] for r in answered) - min(r["received"] for r in requests)
    return {
        "requests": len(requests),
        "answered": len(answered),
        "limited": sum(1 for r in requests if r["status"] == 429),
        "rate": len(answered) / span,
        "span_s": span,
        "rows": statuses,
    }


def run(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    kernels, rows, limit = (10, 6, 5.0) if quick else (10, 15, 5.0)
    results: dict[str, dict[str, Any]] = {}
    with LocalServer.start("scripted") as server, tempfile.TemporaryDirectory() as folder:
        server.set_rate_limit(limit)
        results["shared"] = run_kernels(server, f"{folder}/store.sqlite3", kernels, rows, limit)
        time.sleep(2.0)  # the server's bucket refills: each run starts from a full second
        results["alone"] = run_kernels(server, None, kernels, rows, limit)
    shared, alone = results["shared"], results["alone"]
    rows_out = []
    for name, values in (("shared (quota board)", shared), ("alone (no board)", alone)):
        limited_share = values["limited"] / values["requests"]
        good = name.startswith("shared")
        rows_out.append(
            row(
                FIGURE,
                f"{kernels} kernels x {rows} rows on one key limited to {limit:g}/s: {name}",
                f"{values['rate']:.2f}/s, {values['limited']} of {values['requests']} requests 429",
                f"alone {alone['rate']:.2f}/s, {alone['limited']} 429s" if good else "—",
                f"{values['rate'] / limit:.2f} of N",
                f"≥ {TARGET_RATE:.2f} of N, ≤ {TARGET_LIMITED:.0%} 429s" if good else "—",
                (values["rate"] / limit >= TARGET_RATE and limited_share <= TARGET_LIMITED)
                if good
                else None,
                f"rows {values['rows']}",
            )
        )
    details = {"kernels": kernels, "rows": rows, "limit": limit, "results": results}
    return rows_out, details


if __name__ == "__main__":
    main("shared_quota", __doc__, run)
