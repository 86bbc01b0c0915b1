"""The floor under the farm's per-job overhead: one Celery hop of a task that does nothing.

    .venv/bin/python bench/celery_hop.py [--n 60] [--pool prefork]

Starts its own Valkey and a bare Celery worker (the farm's settings that matter for latency:
late acks, prefetch 1, JSON, task events on, results ignored) and sends N no-op tasks one at a
time; each records the time from ``send_task`` to the moment its body starts. A two-stage job
crosses two such hops (API -> prior worker -> decoder worker), so twice this median is the least
orchestration a job can cost on this machine, before any Redis or S3 work of the farm's own.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

TASKS = """
import os, time, redis
from celery import Celery
url = os.environ["HOP_URL"]
app = Celery("hop", broker=url)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True,
                worker_send_task_events=True, task_serializer="json", accept_content=["json"])
client = redis.Redis.from_url(url)

@app.task(name="hop")
def hop(sent_at):
    client.rpush("hop:lat", time.time() - sent_at)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    args = ap.parse_args()

    import redis

    from farm.local.servers import free_port, spawn, start_valkey

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        port, password = free_port(), secrets.token_urlsafe(16)
        valkey = start_valkey(tmp / "valkey", port, password)
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        (tmp / "hoptasks.py").write_text(TASKS, encoding="utf-8")
        env = {**os.environ, "HOP_URL": url, "PYTHONPATH": str(tmp)}
        argv = [sys.executable, "-m", "celery", "-A", "hoptasks", "worker", "-P", args.pool]
        worker = spawn("hop-worker", [*argv, "-c", "1", "-l", "warning"], tmp / "w.log", env=env)
        try:
            sys.path.insert(0, str(tmp))
            os.environ["HOP_URL"] = url
            import hoptasks

            client = redis.Redis.from_url(url)
            hoptasks.app.control.ping(timeout=30)  # the worker is consuming
            for _ in range(5):  # warm: connections, the child's first import
                hoptasks.app.send_task("hop", args=[time.time()])
            time.sleep(1)
            client.delete("hop:lat")
            for _ in range(args.n):
                hoptasks.app.send_task("hop", args=[time.time()])
                time.sleep(0.05)  # one at a time: the worker is idle when each arrives
            deadline = time.monotonic() + 30
            while client.llen("hop:lat") < args.n and time.monotonic() < deadline:
                time.sleep(0.05)
            lat = sorted(1000 * float(v) for v in client.lrange("hop:lat", 0, -1))
        finally:
            worker.stop()
            valkey.stop()
    p50 = statistics.median(lat)
    p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
    print(
        f"celery hop ({args.pool}, {len(lat)} tasks, {os.cpu_count()} CPUs): "
        f"p50 {p50:.2f} ms, p95 {p95:.2f} ms; two hops (a two-stage job) p50 {2 * p50:.2f} ms"
    )


if __name__ == "__main__":
    main()
