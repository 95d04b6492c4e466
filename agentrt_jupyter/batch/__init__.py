"""An agent over every row of a DataFrame: `runtime.map(df, "Classify: {text}")`.

Each row is one independent single-turn request on a fresh agent; the run adapts its
concurrency to the service's rate limits, writes every finished row as it completes (so
a re-run redoes only the missing rows), keeps to a token or cost budget, and returns a
frame aligned with the input's index. `mode="batch"` sends the rows through the Gemini
Batch API instead (half price, hours of latency).

Importing this package is light (pandas loads with `engine`); the names below load on
first use. Modules: `plan` (options, templates, keys), `schema` (typed result columns),
`prices` (the cost estimate), `records` (the results table), `engine` (the live run),
`remote` (the Batch API run), `accessor` (`DataFrame.agentrt`), `hook` (registering it
when pandas is imported).
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
    "BatchRun": "engine",
    "BatchProgress": "engine",
    "ErrorSummary": "engine",
    "STATUSES": "engine",
    "ModelPrice": "prices",
    "PRICES": "prices",
    "price_for": "prices",
    "register_when_pandas_loads": "hook",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .engine import (
        STATUSES as STATUSES,
    )
    from .engine import (
        BatchProgress as BatchProgress,
    )
    from .engine import (
        BatchRun as BatchRun,
    )
    from .engine import (
        ErrorSummary as ErrorSummary,
    )
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
    from .prices import (
        PRICES as PRICES,
    )
    from .prices import (
        ModelPrice as ModelPrice,
    )
    from .prices import (
        price_for as price_for,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
