"""A worker's place in the fleet: its heartbeat, and which of its families' queues it consumes.

A worker serving more families than it keeps loaded (``--resident N``) consumes only its resident
families' queues. When those are empty (for SWITCH_IDLE_S, with nothing in hand) and another
family it serves has work, it stops consuming the least recently used family's queue and starts
on the one with the most waiting; the pool process loads that family on its first job and evicts
the least recently used. So an interleaved campaign drains one family at a time instead of
reloading models per job (the thrashing Ray Serve, InvokeAI and ComfyUI users report).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery import bootsteps

from farm import fleet, keys
from farm.families import get
from farm.settings import Settings
from farm.stores.connect import redis_client, text

log = logging.getLogger("farm.worker")
SWITCH_IDLE_S = 1.0  # hysteresis: a queue refilled by a prior within this is not abandoned
TICK_S = 0.5


@dataclass(frozen=True)
class Plan:
    """What one worker serves: set at boot, before the pool forks."""

    node: str
    stage: str
    families: tuple[str, ...]
    redis_url: str | None
    resident: int = 0  # 0: every family stays loaded and every queue is consumed

    def queue(self, family: str) -> str:
        return get(family).queue(self.stage)


plan: Plan | None = None
settings: Settings | None = None  # both set by workers.main when the worker starts


class Placement(bootsteps.StartStopStep):
    """Consumer bootstep: heartbeat thread + (with ``resident``) the queue switcher."""

    requires = {"celery.worker.consumer.tasks:Tasks"}
    plan: Plan  # the worker's plan (the module's), from start() on; nothing runs before that

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.current: list[str] = []
        self.switches = 0
        self.idle_since: float | None = None
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.tref = None
        self.redis: redis.Redis | None = None  # made by start()

    def start(self, c):
        if plan is None:
            return
        self.plan = plan
        self.redis = redis_client(settings, health_check_interval=30)
        self.current = list(plan.families[: plan.resident] if plan.resident else plan.families)
        if plan.resident:
            for family in plan.families:
                if family not in self.current and c.task_consumer.consuming_from(
                    plan.queue(family)
                ):
                    c.cancel_task_queue(plan.queue(family))
            self.tref = c.timer.call_repeatedly(TICK_S, self.tick, (c,), priority=10)
        self.stop_event.clear()
        # A thread, not the consumer's timer: a solo-pool worker runs its task on the timer's
        # thread, and a long render must not make it vanish from the fleet.
        self.thread = threading.Thread(target=self._beat, name="farm-heartbeat", daemon=True)
        self.thread.start()

    def stop(self, c):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        self.stop_event.set()
        if plan is not None and self.redis is not None:
            try:
                fleet.remove_heartbeat(self.redis, plan.node)
            except Exception:  # shutting down with Redis gone: the record expires anyway
                pass

    def shutdown(self, c):
        self.stop(c)

    # -- heartbeat ---------------------------------------------------------------------------

    def fields(self) -> dict:
        from workers import context

        fields = {
            "stage": self.plan.stage,
            "families": list(self.plan.families),
            "serves": [*(self.plan.queue(f) for f in self.plan.families), fleet.FINALIZE_QUEUE],
            "consuming": [self.plan.queue(f) for f in self.current],
            "resident_families": list(self.current),
            "resident_capacity": self.plan.resident or len(self.plan.families),
            "switches": self.switches,
            "pid": os.getpid(),
        }
        if context._current is None:  # prefork: the pool processes report their own memory
            from workers import memory  # RSS, PSS, USS: it may hold the pool's shared weights

            fields.update(memory.usage())
        return fields

    def _prune(self) -> None:
        """Drop the reports of pool processes that are gone (recycled, or killed and respawned)."""
        client, key = self.redis, keys.worker(self.plan.node)
        if client is None:  # not started
            return
        gone = [
            f
            for f in (text(k) for k in client.hkeys(key))
            if f.startswith("proc.") and not os.path.exists(f"/proc/{f.removeprefix('proc.')}")
        ]
        if gone:
            client.hdel(key, *gone)

    def _beat(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._prune()
                fleet.write_heartbeat(self.redis, self.plan.node, self.fields())
            except Exception as e:  # Redis away: say so, keep beating
                log.warning("heartbeat failed: %s", e)
            self.stop_event.wait(fleet.HEARTBEAT_S)

    # -- multiplexing ------------------------------------------------------------------------

    def tick(self, c) -> None:
        from celery.worker import state

        try:
            counts = fleet.depths(self.redis, [self.plan.queue(f) for f in self.plan.families])
            depth = dict(zip(self.plan.families, counts, strict=True))
        except Exception:  # Redis away: keep what we consume
            return
        for family in [f for f in self.current if depth[f]]:
            self.current.remove(family)
            self.current.append(family)  # most recently used last
        if state.active_requests or state.reserved_requests or any(depth[f] for f in self.current):
            self.idle_since = None
            return
        now = time.monotonic()
        if self.idle_since is None:
            self.idle_since = now
            return
        waiting = [f for f in self.plan.families if f not in self.current and depth[f]]
        if now - self.idle_since < SWITCH_IDLE_S or not waiting:
            return
        pick = max(waiting, key=lambda f: depth[f])
        out = self.current.pop(0)
        c.cancel_task_queue(self.plan.queue(out))
        c.add_task_queue(self.plan.queue(pick))
        self.current.append(pick)
        self.switches += 1
        self.idle_since = None
        log.info("switched from %s to %s (%d waiting)", out, pick, depth[pick])
        try:  # say so now, not at the next beat
            fleet.write_heartbeat(self.redis, self.plan.node, self.fields())
        except Exception:
            pass
