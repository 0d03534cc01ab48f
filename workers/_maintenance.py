"""The relay, the reconciler and the timers: run by one leader among all worker processes.

Every worker process runs this loop; a Redis lock picks the one that acts. If Redis is wiped
the lock is simply taken again. All decisions come from the store, so a new leader needs no
hand-over.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict

from dramatiq.common import dq_name

from store import (
    Publish,
    due_outbox,
    fire_due_timers,
    mark_seen,
    reissue,
    suspects,
)
from workers._runtime import Runtime

_logger = logging.getLogger("baton.maintenance")
LEADER_KEY = "baton:leader"
# Outbox rows read per page, and how long one round keeps relaying full pages.
OUTBOX_PAGE = 500
RELAY_SECONDS = 0.5

# Extend the lock only if we still hold it: compare-and-set in one round trip.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class Maintenance(threading.Thread):
    """Leader-elected loop: re-publish unconfirmed outbox rows and lost steps, fire timers."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(name="baton-maintenance", daemon=True)
        self.runtime = runtime
        self.identity = uuid.uuid4().hex
        self.interval = runtime.config.reconcile_interval_seconds
        self._stopped = threading.Event()
        self._renew = runtime.broker.client.register_script(_RENEW)
        self.is_leader = False

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.is_leader = self._lead()
                if self.is_leader:
                    self.tick()
            except Exception as error:
                # Redis or the store is away; the next tick tries again.
                self.is_leader = False
                _logger.warning("maintenance skipped a tick: %s", error)

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)
        if self.is_leader:
            try:
                client = self.runtime.broker.client
                if client.get(LEADER_KEY) == self.identity.encode():
                    client.delete(LEADER_KEY)
            except Exception:
                _logger.debug("could not release leadership", exc_info=True)

    def _lead(self) -> bool:
        ttl_ms = int(max(self.interval * 3, 2) * 1000)
        client = self.runtime.broker.client
        if client.set(LEADER_KEY, self.identity, nx=True, px=ttl_ms):
            return True
        return bool(self._renew(keys=[LEADER_KEY], args=[self.identity, ttl_ms]))

    def tick(self) -> int:
        """One round of maintenance; returns how many messages it re-sent."""
        runtime = self.runtime
        config = runtime.config
        sent = 0
        # Timers first: a due timer is ordinary work now.
        sent += self._send(fire_due_timers(runtime.store))
        # Outbox rows nobody confirmed: the publisher died between commit and publish, or
        # left them here (the gateway's sender, past its bound while Redis stalled). Page
        # after full page, for up to RELAY_SECONDS: a backlog drains at thousands a second
        # instead of one page a round. A page Redis refuses ends the round's relaying.
        deadline = time.monotonic() + RELAY_SECONDS
        while True:
            page = due_outbox(runtime.store, config.relay_after_seconds, limit=OUTBOX_PAGE)
            relayed = self._send(reissue(runtime.store, page))
            sent += relayed
            if relayed < OUTBOX_PAGE or time.monotonic() >= deadline:
                break
        for queue in {a.queue_name for a in runtime._bound.values()}:
            runtime.broker.run_maintenance(queue)
            # Delayed messages (retries) a dead consumer had fetched sit in the delay queue.
            runtime.broker.run_maintenance(dq_name(queue))
        # A long round must not outlive the leadership it started under: renew, or stop here.
        if not self._lead():
            return sent
        # Steps that should be moving: expired leases, and pending steps Redis has lost.
        found = suspects(
            runtime.store,
            stale_seconds=config.relay_after_seconds,
            republish_after_seconds=config.republish_after_seconds,
        )
        lost: list[Publish] = [s.publish for s in found if s.reason == "lease-expired"]
        by_queue: dict[str, list[Publish]] = defaultdict(list)
        for suspect in found:
            if suspect.reason == "no-message":
                by_queue[suspect.publish.queue].append(suspect.publish)
        seen: list[str] = []
        for queue, candidates in by_queue.items():
            present = runtime.broker.message_exists(queue, [p.message_id for p in candidates])
            for candidate, exists in zip(candidates, present, strict=True):
                (seen.append(candidate.step_id) if exists else lost.append(candidate))
        mark_seen(runtime.store, seen)
        if not self._lead():
            return sent
        if lost:
            _logger.info("re-publishing %d step(s) whose message or worker was lost", len(lost))
        sent += self._send(reissue(runtime.store, lost))
        return sent

    def _send(self, messages: list[Publish]) -> int:
        """How many of ``messages`` Redis took: all or none."""
        return len(messages) if self.runtime.publish(messages, confirm_now=True) else 0
