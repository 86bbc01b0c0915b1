"""The feeder process: keeps each family's queues topped up from the campaigns in S3.

    python -m farm.feeder          (``farm up`` starts one; ``farm feeder`` runs one by hand)

Every ``TICK_S`` it makes one fair feeding pass (``Farm.feed_once``); every few seconds it also
publishes each queue's backlog for autoscalers, sends again the ranges a dead feeder claimed
but never sent, and checks that Redis still holds the farm's state: when it does not (Redis
restarted empty, or flushed), it rebuilds every unfinished campaign from its manifest in S3.
Every ``FARM_RECONCILE_INTERVAL_S`` it sends again the jobs in flight that no message carries
any more and that no live execution runs, idle for ``FARM_RECONCILE_GRACE_S`` (``Farm.reconcile``):
no fault leaves a job waiting for a human.
Several feeders may run at once; each job is still fed once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import redis

from farm.errors import FarmError
from farm.settings import Settings

log = logging.getLogger("farm.feeder")

TICK_S = 0.05
HOUSEKEEPING_S = 2.0


def run(settings: Settings, stop: threading.Event) -> None:
    from farm.service import Farm

    farm = Farm(settings)
    last = last_reconcile = 0.0
    while not stop.is_set():
        try:
            now = time.monotonic()
            if now - last > HOUSEKEEPING_S:
                rebuilt = farm.recover()
                if rebuilt:
                    log.warning("Redis had lost %d campaigns: rebuilt from S3", len(rebuilt))
                farm.refeed_stale()
                farm.publish_backlog()
                last = now
            if now - last_reconcile > settings.reconcile_interval_s:
                sent = farm.reconcile(grace_s=settings.reconcile_grace_s)
                if sent:
                    log.warning("sent %d stranded jobs again", len(sent))
                last_reconcile = now
            fed = farm.feed_once()
        except (FarmError, redis.RedisError) as e:  # Redis or S3 away: one line, keep trying
            log.warning("feeder: %s", e)
            fed = 0
            stop.wait(1.0)
        except Exception:  # noqa: BLE001 - a feeder that dies feeds nobody; log and go on
            log.exception("feeder pass failed")
            fed = 0
            stop.wait(1.0)
        if not fed:
            stop.wait(TICK_S)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.load().with_stack()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("feeder up")
    run(settings, stop)
    log.info("feeder down")


if __name__ == "__main__":
    main()
