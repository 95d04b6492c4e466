"""An agent over every row of a DataFrame: `runtime.map(df, "Classify: {text}")`.

Each row is one independent single-turn request on a fresh agent; the run adapts its
concurrency to the service's rate limits, writes every finished row as it completes (so
a re-run redoes only the missing rows), keeps to a token or cost budget, and returns a
frame aligned with the input's index. `mode="batch"` sends the rows through the provider's
Batch API instead (Gemini, OpenAI, Anthropic: half price, hours of latency).

Importing this package is light (pandas loads with `engine`); the names below load on
first use. Modules: `engine` (the entry points), `plan` (options, templates, keys),
`controller` (concurrency, rpm/tpm, budgets: pure), `run` (`BatchRun`), `live` (rows
answered one request each), `remote` (the Batch API driver; `batchapi` its interface,
`remote_gemini`, `remote_openai`, `remote_anthropic` one provider each), `outcomes` (the
rows' outcomes and the result frame), `progress` (snapshots, listeners, the view),
`records` (the results table), `schema` (typed result columns), `prices` (the cost
estimate), `accessor` (`DataFrame.agentrt`), `hook` (registering it when pandas is
imported).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "map_frame": "engine",
    "amap_frame": "engine",
    "start_map": "engine",
    "running_maps": "engine",
    "cancel_maps": "engine",
    "BatchRun": "run",
    "BatchProgress": "progress",
    "ErrorSummary": "progress",
    "STATUSES": "outcomes",
    "ModelPrice": "prices",
    "PRICES": "prices",
    "price_for": "prices",
    "register_when_pandas_loads": "hook",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .engine import (
        amap_frame as amap_frame,
    )
    from .engine import (
        cancel_maps as cancel_maps,
    )
    from .engine import (
        map_frame as map_frame,
    )
    from .engine import (
        running_maps as running_maps,
    )
    from .engine import (
        start_map as start_map,
    )
    from .hook import (
        register_when_pandas_loads as register_when_pandas_loads,
    )
    from .outcomes import (
        STATUSES as STATUSES,
    )
    from .prices import (
        PRICES as PRICES,
    )
    from .prices import (
        ModelPrice as ModelPrice,
    )
    from .prices import (
        price_for as price_for,
    )
    from .progress import (
        BatchProgress as BatchProgress,
    )
    from .progress import (
        ErrorSummary as ErrorSummary,
    )
    from .run import (
        BatchRun as BatchRun,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
