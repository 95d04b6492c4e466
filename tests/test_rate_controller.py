"""The map run's rate controller on its own: no runtime, no loop, a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from agentrt_jupyter.batch.controller import Estimate, RateController, Start, Stop, Wait
from agentrt_jupyter.batch.prices import ModelPrice

PROMPT = "x" * 40
"""10 tokens in and (before any row is seen) 10 out: an estimate of 20 tokens."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def controller(clock: Clock | None = None, **options: Any) -> RateController:
    settings: dict[str, Any] = {"concurrency": 2, "max_concurrency": 8, **options}
    return RateController(clock=clock or Clock(), **settings)


def started(admission: object) -> Estimate:
    assert isinstance(admission, Start), admission
    return admission.estimate


def test_the_first_estimate_is_four_characters_a_token_and_as_much_output() -> None:
    assert controller().estimate(PROMPT) == Estimate(10, 10, 0.0)
    assert controller(max_output_tokens=50).estimate(PROMPT).tokens_out == 50
    assert controller(system_chars=40).estimate(PROMPT).tokens_in == 20


def test_later_estimates_scale_by_the_largest_rows_seen() -> None:
    rc = controller()
    rc.row_succeeded(PROMPT, 20, 30, limited=False)  # 2 characters a token, 30 out
    assert rc.estimate("y" * 10) == Estimate(5, 30, 0.0)
    rc.row_succeeded(PROMPT, 4, 2, limited=False)  # a smaller row lowers no estimate
    assert rc.estimate("y" * 10) == Estimate(5, 30, 0.0)


def test_rows_start_up_to_the_concurrency_then_wait_for_one_to_end() -> None:
    rc = controller()
    first = started(rc.admit(PROMPT))
    started(rc.admit(PROMPT))
    assert rc.in_flight == 2 and rc.reserved_tokens == 40
    assert rc.admit(PROMPT) == Wait(None)
    rc.release(first)
    assert rc.in_flight == 1 and rc.reserved_tokens == 20
    started(rc.admit(PROMPT))


def test_concurrency_grows_by_one_per_round_of_clean_rows_up_to_the_most() -> None:
    rc = controller(concurrency=2, max_concurrency=3)
    for _ in range(2):
        rc.row_succeeded(PROMPT, 10, 10, limited=False)
    assert rc.concurrency == 2 and rc.limit == pytest.approx(2.5 + 1 / 2.5)
    for _ in range(10):
        rc.row_succeeded(PROMPT, 10, 10, limited=False)
    assert rc.limit == 3.0
    rc.row_succeeded(PROMPT, 10, 10, limited=True)
    assert rc.limit == 3.0


def test_a_row_that_met_a_429_does_not_grow_the_concurrency() -> None:
    rc = controller(concurrency=4)
    rc.row_succeeded(PROMPT, 10, 10, limited=True)
    assert rc.limit == 4.0


def test_each_new_rate_limit_episode_halves_the_concurrency_once() -> None:
    rc = controller(concurrency=8)
    rc.quota_baseline(total_hits=5, episode=1.0)  # the key's 429s before the run
    assert rc.observe_quota(5, 1.0) is False and rc.rate_limited == 0
    assert rc.observe_quota(7, 2.0) is True
    assert (rc.concurrency, rc.decreases, rc.rate_limited) == (4, 1, 2)
    assert rc.observe_quota(9, 2.0) is False  # more hits, the same episode
    assert (rc.concurrency, rc.decreases, rc.rate_limited) == (4, 1, 4)
    for hits, episode in ((10, 3.0), (11, 4.0), (12, 5.0), (13, 6.0)):
        rc.observe_quota(hits, episode)
    assert rc.limit == 1.0 and rc.decreases == 5  # never below one


def test_a_blocked_key_makes_rows_wait_and_a_long_block_stops_the_run() -> None:
    rc = controller(quota_max_wait=30.0)
    assert rc.admit(PROMPT, blocked=12.5) == Wait(12.5, rate_limited=True)
    stop = rc.admit(PROMPT, blocked=31.0)
    assert isinstance(stop, Stop) and "quota_max_wait=30 s" in stop.reason
    assert rc.in_flight == 0


def test_rpm_spaces_the_starts() -> None:
    clock = Clock()
    rc = controller(clock, concurrency=8, rpm=30)
    started(rc.admit(PROMPT))
    assert rc.admit(PROMPT) == Wait(2.0)
    clock.now += 1.5
    assert rc.admit(PROMPT) == Wait(pytest.approx(0.5))
    clock.now += 0.5
    started(rc.admit(PROMPT))


def test_tpm_holds_a_row_until_the_minute_has_room() -> None:
    clock = Clock()
    rc = controller(clock, concurrency=8, tpm=50)
    first = started(rc.admit(PROMPT))
    started(rc.admit(PROMPT))
    assert rc.admit(PROMPT) == Wait(None)  # 40 reserved + 20 > 50: when a row ends
    rc.release(first)
    rc.spend(10, 10)
    clock.now += 20
    assert rc.admit(PROMPT) == Wait(pytest.approx(40.0))  # when the first row's minute ends
    clock.now += 40
    started(rc.admit(PROMPT))


def test_a_row_alone_always_starts_whatever_tpm_says() -> None:
    rc = controller(tpm=5)
    started(rc.admit(PROMPT))


def sized(rc: RateController) -> None:
    """One row of 20 tokens (10 in, 10 out) ran and ended: the estimates are no guess."""
    rc.release(started(rc.admit(PROMPT)))
    rc.spend(10, 10)
    rc.row_succeeded(PROMPT, 10, 10, limited=False)


def test_with_a_budget_no_more_rows_are_in_flight_than_have_ended() -> None:
    rc = controller(concurrency=8, budget_tokens=1000)
    first = started(rc.admit(PROMPT))
    assert rc.admit(PROMPT) == Wait(None)  # the first row runs alone to size the others
    rc.release(first)
    second = started(rc.admit(PROMPT))
    assert rc.admit(PROMPT) == Wait(None)  # one ended: one in flight
    rc.release(second)
    started(rc.admit(PROMPT))
    started(rc.admit(PROMPT))
    assert rc.admit(PROMPT) == Wait(None)  # two ended: two in flight


def test_the_estimates_of_rows_in_flight_count_against_the_token_budget() -> None:
    rc = controller(concurrency=8, budget_tokens=150)
    for _ in range(3):
        sized(rc)
    rows = [started(rc.admit(PROMPT)) for _ in range(3)]  # 60 spent, 60 reserved
    assert rc.admit(PROMPT) == Wait(None)  # 140 fits, but not beside the rows in flight
    for row in rows:
        rc.release(row)
        rc.spend(10, 10)
    rc.release(started(rc.admit(PROMPT)))  # 120 spent: the last row runs alone
    rc.spend(10, 10)
    stop = rc.admit(PROMPT)
    assert isinstance(stop, Stop)
    assert stop.reason == "stopped at budget_tokens=150: 140 spent, the next row needs about 20"


def test_beside_rows_in_flight_a_row_starts_only_with_room_for_one_more() -> None:
    rc = controller(concurrency=8, budget_tokens=90)
    for _ in range(2):
        sized(rc)
    first = started(rc.admit(PROMPT))  # 40 spent + 20
    assert rc.admit(PROMPT) == Wait(None)  # 40 + 20 + 20 fits, + 20 to spare does not
    rc.release(first)
    rc.spend(10, 10)
    started(rc.admit(PROMPT))  # alone: 60 spent + 20


def test_an_admission_estimates_from_the_rows_that_ended_while_it_waited() -> None:
    rc = controller(concurrency=1, budget_tokens=100)
    first = started(rc.admit(PROMPT))
    assert rc.admit(PROMPT) == Wait(None)
    rc.release(first)
    rc.spend(10, 50)
    rc.row_succeeded(PROMPT, 10, 50, limited=False)
    stop = rc.admit(PROMPT)  # 60 spent + 60 now expected > 100 (the stale guess was 20)
    assert isinstance(stop, Stop) and "needs about 60" in stop.reason


def test_the_dollar_budget_uses_the_price_and_the_batch_discount() -> None:
    price = ModelPrice(input=1_000_000.0, output=2_000_000.0)  # $1 a token in, $2 out
    live = controller(price=price, budget_usd=35.0)
    assert live.estimate(PROMPT).usd == pytest.approx(30.0)
    started(live.admit(PROMPT))
    assert live.admit(PROMPT) == Wait(None)  # $30 reserved + $30 > $35
    batch = controller(price=price, budget_usd=35.0, batch_price=True)
    assert batch.estimate(PROMPT).usd == pytest.approx(15.0)
    batch.spend(10, 10)
    batch.spend(10, 10)
    assert batch.usd == pytest.approx(30.0)
    over = batch.over_budget(batch.estimate(PROMPT))
    assert over is not None and "budget_usd=35" in over


def test_release_all_empties_what_is_in_flight() -> None:
    rc = controller()
    rc.reserve(Estimate(5, 5, 1.0))
    rc.reserve(Estimate(5, 5, 1.0))
    rc.release_all()
    assert (rc.in_flight, rc.reserved_tokens, rc.reserved_usd) == (0, 0, 0.0)
