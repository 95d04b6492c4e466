"""A small price table, for the cost *estimate* shown with a run and for `budget_usd`.

The prices are the providers' list prices for text (US dollars per million tokens) as
published in 2025: Google's paid tier (prompts up to 200k tokens), OpenAI's standard
tier and Anthropic's base input and output prices. They change, and they leave out
context caching, long prompts, audio and images, grounding and free tiers. Treat the
estimate as a guide, not a bill: the bill is on the provider's console. Output prices
cover thinking tokens (billed as output). The Batch APIs of all three (`mode="batch"`)
are billed at `BATCH_DISCOUNT` of these. Add or correct a model with
`PRICES["name"] = ModelPrice(input, output)` (the name without its provider prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import split_model


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
    "gpt-5": ModelPrice(1.25, 10.00),
    "gpt-5-mini": ModelPrice(0.25, 2.00),
    "gpt-5-nano": ModelPrice(0.05, 0.40),
    "gpt-4.1": ModelPrice(2.00, 8.00),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40),
    "gpt-4o": ModelPrice(2.50, 10.00),
    "gpt-4o-mini": ModelPrice(0.15, 0.60),
    "claude-opus-4": ModelPrice(15.00, 75.00),
    "claude-opus-4-1": ModelPrice(15.00, 75.00),
    "claude-sonnet-4": ModelPrice(3.00, 15.00),
    "claude-sonnet-4-5": ModelPrice(3.00, 15.00),
    "claude-haiku-4-5": ModelPrice(1.00, 5.00),
    "claude-3-5-haiku": ModelPrice(0.80, 4.00),
}
"""Model name (or the start of one: `gemini-2.5-flash-preview-09-2025` is priced as
`gemini-2.5-flash`) to its price; the longest matching name wins. A provider prefix
(`openai:`, `anthropic:`, `vertex:`) is not part of the name."""


def price_for(model: str) -> ModelPrice | None:
    """The price of `model` (with or without `models/` or its provider prefix), or None if
    the table lacks it."""
    name = split_model(model)[1].removeprefix("models/")
    matches = [known for known in PRICES if name == known or name.startswith(f"{known}-")]
    return PRICES[max(matches, key=len)] if matches else None
