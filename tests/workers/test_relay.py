"""The relay: outbox rows nobody confirmed reach Redis, a backlog of them within a round."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from store import NewEvent, Store, create_run
from tests.actors.chaos import ChaosStep
from tests.conftest import FAST
from workers import Runtime, _maintenance
from workers._maintenance import Maintenance


def _outbox_rows(store: Store) -> int:
    with store.read() as connection:
        return int(connection.execute(text("SELECT count(*) FROM outbox")).scalar_one())


def test_one_round_relays_a_backlog_of_several_pages(
    store: Store, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given pages of 100 rows, and time enough in a round for all of them
    monkeypatch.setattr(_maintenance, "OUTBOX_PAGE", 100)
    monkeypatch.setattr(_maintenance, "RELAY_SECONDS", 60.0)
    # And 350 runs whose first messages never reached Redis, long enough ago to be relayed
    runtime = Runtime(store, redis_url, FAST)
    trigger = NewEvent(ChaosStep.type, ChaosStep(effects=str(tmp_path / "ledger")).model_dump())
    for _ in range(350):
        create_run(store, trigger, runtime.route)
    with store.transaction() as connection:
        connection.execute(text("UPDATE outbox SET created_at = created_at - 60"))
    assert _outbox_rows(store) == 350
    # When the relay runs one round
    sent = Maintenance(runtime).tick()
    # Then every row went out, not one page of them, and the outbox is empty
    assert sent == 350
    assert _outbox_rows(store) == 0
    assert redis.Redis.from_url(redis_url).llen("baton:default") == 350
    runtime.broker.close()
