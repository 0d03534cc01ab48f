"""Actors for the failure tests: an order whose charge step fails while a flag file exists."""

from __future__ import annotations

from pathlib import Path

from events import Event
from tests.actors import effects
from workers import Context, actor


class PaymentDown(Exception):
    """The payment service is unavailable."""


class OrderPlaced(Event, type="t_flaky.order_placed"):
    """``ledger``: the effects ledger's path; ``outage``: while this file exists, charging fails."""

    ledger: str
    outage: str


class StockReserved(Event, type="t_flaky.stock_reserved"):
    ledger: str
    outage: str


class PaymentTaken(Event, type="t_flaky.payment_taken"):
    ledger: str


def _apply(ledger: str, ctx: Context, label: str) -> None:
    effects.record_call(ledger, ctx.idempotency_key, label, ctx.attempt)
    effects.record_effect(ledger, ctx.idempotency_key, label)


@actor(on=OrderPlaced, retries=0)
def reserve_stock(event: OrderPlaced, ctx: Context) -> StockReserved:
    _apply(event.ledger, ctx, "reserve")
    return StockReserved(ledger=event.ledger, outage=event.outage)


@actor(on=StockReserved, retries=3)
def take_payment(event: StockReserved, ctx: Context) -> PaymentTaken:
    effects.record_call(event.ledger, ctx.idempotency_key, "charge", ctx.attempt)
    if Path(event.outage).exists():
        raise PaymentDown(f"payment service unavailable (attempt {ctx.attempt})")
    effects.record_effect(event.ledger, ctx.idempotency_key, "charge")
    return PaymentTaken(ledger=event.ledger)


@actor(on=PaymentTaken, retries=0)
def ship(event: PaymentTaken, ctx: Context) -> None:
    _apply(event.ledger, ctx, "ship")
