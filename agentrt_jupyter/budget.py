"""Daily budgets per user, set by an admin, kept across all of the user's kernels.

A user may spend `tokens_per_day` tokens and `usd_per_day` dollars (an estimate from
`batch.prices`) a UTC day. The admin sets them, never the user's cell: in a policy file
(`$AGENTRT_POLICY`, else `/etc/agentrt-jupyter/policy.toml`; TOML or JSON), or in
`$AGENTRT_BUDGET_TOKENS_PER_DAY` / `$AGENTRT_BUDGET_USD_PER_DAY`, which a hub's spawner
sets. The variables are read from the environment the kernel was started with
(`/proc/self/environ` on Linux), so a cell's `os.environ` edit does not lift them; they
win over the file. The file:

    [budget]                    # everyone
    tokens_per_day = 200000
    usd_per_day = 2.0
    [budget.users.alice]        # one user (the JupyterHub name)
    tokens_per_day = 1000000

What a user spent is counted per (user, UTC day) on the quota board, so every kernel of
the user sees it; without a store, in the process. Past the budget every model call fails
at once with `QuotaExceeded(scope="budget")` saying when it resets (UTC midnight).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidConfig, QuotaExceeded

if TYPE_CHECKING:
    from .conversation import Usage
    from .quotaboard import QuotaBoard

POLICY_VARIABLE = "AGENTRT_POLICY"
DEFAULT_POLICY = Path("/etc/agentrt-jupyter/policy.toml")
TOKENS_VARIABLE = "AGENTRT_BUDGET_TOKENS_PER_DAY"
USD_VARIABLE = "AGENTRT_BUDGET_USD_PER_DAY"
LAUNCH_ENVIRON = Path("/proc/self/environ")


@dataclass(frozen=True)
class BudgetPolicy:
    """One user's daily limits (None: no limit) and where they were read."""

    tokens_per_day: int | None = None
    usd_per_day: float | None = None
    source: str = ""

    @property
    def limited(self) -> bool:
        return self.tokens_per_day is not None or self.usd_per_day is not None


@dataclass(frozen=True)
class BudgetStatus:
    """What a user spent today and has left; `resets_at` is the next UTC midnight."""

    user: str
    tokens_spent: int
    usd_spent: float
    tokens_per_day: int | None
    usd_per_day: float | None
    resets_at: datetime

    @property
    def tokens_left(self) -> int | None:
        return None if self.tokens_per_day is None else self.tokens_per_day - self.tokens_spent

    @property
    def usd_left(self) -> float | None:
        return None if self.usd_per_day is None else self.usd_per_day - self.usd_spent

    @property
    def exhausted(self) -> bool:
        tokens, usd = self.tokens_left, self.usd_left
        return (tokens is not None and tokens <= 0) or (usd is not None and usd <= 0)

    def line(self) -> str:
        """`budget: 12,000 of 50,000 tokens left today (resets 00:00 UTC)`."""
        parts = []
        if self.tokens_per_day is not None:
            left = max(0, self.tokens_left or 0)
            parts.append(f"{left:,} of {self.tokens_per_day:,} tokens")
        if self.usd_per_day is not None:
            parts.append(f"${max(0.0, self.usd_left or 0.0):.4f} of ${self.usd_per_day:g}")
        return f"budget: {' and '.join(parts)} left today (resets 00:00 UTC)"


def launch_environment() -> Mapping[str, str]:
    """The environment the process started with (what the spawner set), where the OS
    keeps it; else `os.environ`."""
    try:
        raw = LAUNCH_ENVIRON.read_bytes()
    except OSError:  # not Linux
        return os.environ
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in pairs}


def load_policy(user: str, environ: Mapping[str, str] | None = None) -> BudgetPolicy:
    """`user`'s limits from the policy file and the spawner's variables (they win).

    A file or value the admin got wrong is `InvalidConfig` naming it: a budget must not be
    silently dropped."""
    env = launch_environment() if environ is None else environ
    tokens: int | None = None
    usd: float | None = None
    sources = []
    path = Path(env[POLICY_VARIABLE]) if env.get(POLICY_VARIABLE) else DEFAULT_POLICY
    if env.get(POLICY_VARIABLE) or path.exists():
        section = _file_budget(path, user)
        tokens = _tokens(section.get("tokens_per_day"), str(path))
        usd = _usd(section.get("usd_per_day"), str(path))
        sources.append(str(path))
    if env.get(TOKENS_VARIABLE, "").strip():
        tokens = _tokens(env[TOKENS_VARIABLE].strip(), f"${TOKENS_VARIABLE}")
        sources.append(f"${TOKENS_VARIABLE}")
    if env.get(USD_VARIABLE, "").strip():
        usd = _usd(env[USD_VARIABLE].strip(), f"${USD_VARIABLE}")
        sources.append(f"${USD_VARIABLE}")
    return BudgetPolicy(tokens, usd, ", ".join(sources))


def _file_budget(path: Path, user: str) -> dict[str, Any]:
    """The file's `[budget]` table with `[budget.users.USER]` over it."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidConfig(
            f"cannot read the budget policy {path}: {exc}", field="budget_policy"
        ) from None
    budget = data.get("budget", {}) if isinstance(data, dict) else None
    users = budget.get("users", {}) if isinstance(budget, dict) else None
    own = users.get(user, {}) if isinstance(users, dict) else None
    if not isinstance(budget, dict) or not isinstance(own, dict):
        raise InvalidConfig(
            f"the budget policy {path} needs a [budget] table (and [budget.users.NAME] tables)",
            field="budget_policy",
        )
    return {**{k: v for k, v in budget.items() if k != "users"}, **own}


def _tokens(value: object, source: str) -> int | None:
    if value is None:
        return None
    try:
        tokens = int(str(value))
    except ValueError:
        tokens = -1
    if tokens < 0:
        raise InvalidConfig(
            f"tokens_per_day from {source} must be a whole number >= 0, got {value!r}",
            field="budget_tokens_per_day",
        )
    return tokens


def _usd(value: object, source: str) -> float | None:
    if value is None:
        return None
    try:
        usd = float(str(value))
    except ValueError:
        usd = math.nan
    if not (usd >= 0 and math.isfinite(usd)):
        raise InvalidConfig(
            f"usd_per_day from {source} must be a number >= 0, got {value!r}",
            field="budget_usd_per_day",
        )
    return usd


def utc_day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


def next_midnight(at: float) -> datetime:
    day = datetime.fromtimestamp(at, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=1)


class UserBudget:
    """One user's policy, enforced: `check` before each model call, `spend` after it.

    Spending is counted on the board (every kernel of the user adds to one counter), or
    in this process when there is no board or it is down."""

    def __init__(
        self,
        policy: BudgetPolicy,
        user: str,
        board: QuotaBoard | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.user = user
        self._board = board
        self._clock = clock
        self._lock = threading.Lock()
        self._local: dict[str, tuple[int, float]] = {}

    def status(self) -> BudgetStatus:
        now = self._clock()
        day = utc_day(now)
        shared = self._board.spent(self.user, day) if self._board is not None else None
        with self._lock:
            tokens, usd = (
                (shared.tokens, shared.usd)
                if shared is not None
                else self._local.get(day, (0, 0.0))
            )
        return BudgetStatus(
            self.user,
            tokens,
            usd,
            self.policy.tokens_per_day,
            self.policy.usd_per_day,
            next_midnight(now),
        )

    def check(self) -> None:
        """`QuotaExceeded(scope="budget")` if the user's budget for today is spent."""
        status = self.status()
        if not status.exhausted:
            return
        wait = max(0.0, status.resets_at.timestamp() - self._clock())
        what = (
            f"{status.tokens_spent:,} of {status.tokens_per_day:,} tokens"
            if status.tokens_left is not None and status.tokens_left <= 0
            else f"${status.usd_spent:.4f} of ${status.usd_per_day:g}"
        )
        hours, minutes = divmod(int(wait // 60), 60)
        raise QuotaExceeded(
            f"daily budget of user {self.user!r} used up ({what} spent today, set by "
            f"{self.policy.source}): it resets at 00:00 UTC, in {hours} h {minutes:02d} min",
            retry_after=wait,
            scope="budget",
        )

    def spend(self, model: str, usage: Usage) -> None:
        """Count a call's tokens (and their estimated price) for today."""
        reported_in, reported_out = usage.split()
        tokens_in, tokens_out = reported_in or 0, reported_out or 0  # unreported: not counted
        tokens = tokens_in + tokens_out
        if tokens <= 0:
            return
        from .batch.prices import price_for

        price = price_for(model.split(":", 1)[-1])
        usd = price.cost(tokens_in, tokens_out) if price is not None else 0.0
        day = utc_day(self._clock())
        with self._lock:
            spent_tokens, spent_usd = self._local.get(day, (0, 0.0))
            self._local = {day: (spent_tokens + tokens, spent_usd + usd)}
        if self._board is not None:
            self._board.add_usage(self.user, day, tokens, usd)
