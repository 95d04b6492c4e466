"""A small price table, for the cost *estimate* shown with a run and for `budget_usd`.

The prices are Google's list prices for text on the paid tier (US dollars per million
tokens, prompts up to 200k tokens) as published in 2025; they change, and they leave out
context caching, long prompts, audio and images, grounding and the free tier. Treat the
estimate as a guide, not a bill: the bill is on the Google Cloud console. Output prices
cover thinking tokens (billed as output). The Batch API is billed at `BATCH_DISCOUNT` of
these. Add or correct a model with `PRICES["name"] = ModelPrice(input, output)`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelPrice:
    """US dollars per million tokens."""

    input: float
    output: float

    def cost(self, tokens_in: int, tokens_out: int, *, batch: bool = False) -> float:
        dollars = (tokens_in * self.input + tokens_out * self.output) / 1e6
        return dollars * BATCH_DISCOUNT if batch else dollars


BATCH_DISCOUNT = 0.5
"""The Batch API costs half the interactive price."""

PRICES: dict[str, ModelPrice] = {
    "gemini-2.5-pro": ModelPrice(1.25, 10.00),
    "gemini-2.5-flash": ModelPrice(0.30, 2.50),
    "gemini-2.5-flash-lite": ModelPrice(0.10, 0.40),
    "gemini-2.0-flash": ModelPrice(0.10, 0.40),
    "gemini-2.0-flash-lite": ModelPrice(0.075, 0.30),
    "smollm2": ModelPrice(0.0, 0.0),
}
"""Model name (or the start of one: `gemini-2.5-flash-preview-09-2025` is priced as
`gemini-2.5-flash`) to its price; the longest matching name wins."""


def price_for(model: str) -> ModelPrice | None:
    """The price of `model` (with or without `models/`), or None if the table lacks it."""
    name = model.removeprefix("models/")
    matches = [known for known in PRICES if name == known or name.startswith(f"{known}-")]
    return PRICES[max(matches, key=len)] if matches else None
