"""Actors for the wait tests: one waits for an approval signal, one sleeps on a durable timer."""

from __future__ import annotations

import os
import time

from events import Event
from workers import Context, actor


class RefundRequested(Event, type="t_waits.refund_requested"):
    amount: int


class RefundApproved(Event, type="t_waits.refund_approved"):
    amount: int
    approved_by: str
    worker_pid: int


class ReminderScheduled(Event, type="t_waits.reminder_scheduled"):
    note: str


class ReminderSent(Event, type="t_waits.reminder_sent"):
    note: str
    sent_at: float
    worker_pid: int


@actor(on=RefundRequested)
def await_approval(event: RefundRequested, ctx: Context) -> RefundApproved:
    approval = ctx.wait_for("approve")
    return RefundApproved(amount=event.amount, approved_by=approval["by"], worker_pid=os.getpid())


@actor(on=ReminderScheduled)
def send_reminder(event: ReminderScheduled, ctx: Context) -> ReminderSent:
    ctx.sleep("2s")
    return ReminderSent(note=event.note, sent_at=time.time(), worker_pid=os.getpid())
