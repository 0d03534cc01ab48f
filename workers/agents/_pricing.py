"""Prices per million tokens and the cost of one model call.

The defaults are list prices as published for common models; deployments override or extend
them with BATON_MODEL_PRICES. A model with no price costs 0 and says so once in the log;
an agent with ``max_cost_usd`` refuses to call it (a budget it cannot measure is no budget).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

_logger = logging.getLogger("baton.agents")


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "o3": Price(2.00, 8.00, 0.50),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "gpt-5": Price(1.25, 10.00, 0.125),
    "gpt-5-mini": Price(0.25, 2.00, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
}

_warned: set[str] = set()


def price_of(model: str, prices: Mapping[str, Price]) -> Price | None:
    """The price of ``model``; a dated snapshot (gpt-4.1-mini-2025-04-14) takes its family's."""
    if model in prices:
        return prices[model]
    family = max((name for name in prices if model.startswith(name + "-")), key=len, default=None)
    return None if family is None else prices[family]


def cost_usd(
    model: str,
    prices: Mapping[str, Price],
    *,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int,
    asked: str | None = None,
) -> float:
    """The cost of one call at ``model``'s price, else (when ``model`` has none) at the price
    of the model ``asked`` for."""
    price = price_of(model, prices)
    if price is None and asked is not None:
        model, price = asked, price_of(asked, prices)
    if price is None:
        if model not in _warned:
            _warned.add(model)
            _logger.warning(
                "no price for model %r; its calls count as $0 (set BATON_MODEL_PRICES)", model
            )
        return 0.0
    cached = min(cached_tokens, input_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    return (
        (input_tokens - cached) * price.input + cached * cached_price + output_tokens * price.output
    ) / 1_000_000
