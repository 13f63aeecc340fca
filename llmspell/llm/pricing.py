"""Prices per million tokens, turning usage into cost. Overridable per model in settings.

The table holds list prices as published by the providers; a model missing from it costs
nothing (and `cost` returns None, so a report can say "unknown" rather than $0).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmspell.llm.types import Usage


@dataclass(frozen=True, slots=True)
class Price:
    input: float  # USD per million input tokens
    output: float  # USD per million output tokens
    cached_input: float | None = None  # USD per million input tokens read from a cache
    cache_write: float | None = None  # USD per million tokens written to a cache


DEFAULT_PRICES: dict[str, Price] = {
    "openai:gpt-4o": Price(2.50, 10.00, 1.25),
    "openai:gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "openai:gpt-4.1": Price(2.00, 8.00, 0.50),
    "openai:gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "openai:gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "openai:o3": Price(2.00, 8.00, 0.50),
    "openai:o4-mini": Price(1.10, 4.40, 0.275),
    "anthropic:claude-opus-4": Price(15.00, 75.00, 1.50, 18.75),
    "anthropic:claude-sonnet-4": Price(3.00, 15.00, 0.30, 3.75),
    "anthropic:claude-3-5-haiku": Price(0.80, 4.00, 0.08, 1.00),
    "local:echo": Price(0.0, 0.0),
}


class PriceTable:
    def __init__(self, overrides: dict[str, Price] | None = None) -> None:
        self.prices = {**DEFAULT_PRICES, **(overrides or {})}

    def price(self, model: str) -> Price | None:
        """The price of `provider:model`; dated snapshots match their family by prefix
        (claude-sonnet-4-20250514 is priced as claude-sonnet-4)."""
        if model in self.prices:
            return self.prices[model]
        matches = [k for k in self.prices if model.startswith(k + "-")]
        return self.prices[max(matches, key=len)] if matches else None

    def cost(self, model: str, usage: Usage) -> float | None:
        price = self.price(model)
        if price is None:
            return None
        fresh = max(0, usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens)
        cached_rate = price.input if price.cached_input is None else price.cached_input
        write_rate = price.input if price.cache_write is None else price.cache_write
        total = (fresh * price.input + usage.cached_tokens * cached_rate
                 + usage.cache_write_tokens * write_rate + usage.output_tokens * price.output)
        return round(total / 1_000_000, 8)
