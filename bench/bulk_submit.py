"""Bulk submission: 10,000 jobs accepted through the HTTP API vs a naive one-message-at-a-time loop.

    .venv/bin/python bench/bulk_submit.py [--jobs 10000]

Starts its own Valkey, SeaweedFS and API server (no workers: nothing renders), then times
  A) POST /v1/campaigns with N jobs: validation, manifest to S3, records, pipelined enqueue;
  B) the baseline: the same N prior messages sent with Celery's send_task one by one (no batch,
     task-sent events on), as a producer written without care would;
and prints both and the ratio B/A. The queues are checked to hold exactly N messages each time.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from farm import keys
from farm.domain.batching import RENDERS_PER_MESSAGE
from farm.local.servers import free_port, spawn, start_valkey, start_weed, wait_port
from farm.settings import Settings

QUEUE = "prior.kandinsky-2.2"  # the default family's first queue


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10_000)
    args = ap.parse_args()
    n = args.jobs
    tmp = Path(tempfile.mkdtemp(prefix="farm-bulk-"))
    rport, password = free_port(), secrets.token_urlsafe(16)
    s3port, access, secret = free_port(), "bench" + secrets.token_hex(4), secrets.token_urlsafe(24)
    procs = []
    try:
        procs.append(start_valkey(tmp / "valkey", rport, password))
        procs.append(start_weed(tmp / "s3", s3port, access, secret))
        token = secrets.token_urlsafe(24)
        settings = Settings(
            state_dir=tmp,
            redis_url=f"redis://:{password}@127.0.0.1:{rport}/0",
            s3_endpoint=f"http://127.0.0.1:{s3port}",
            s3_access_key=access,
            s3_secret_key=secret,
            api_tokens=f"bench:{token}",
        )
        from farm.local.stack import Stack

        Stack(settings)._ensure_bucket(settings)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("FARM_")
        } | settings.worker_env()
        api_port = free_port()
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "api.app:create_app",
            "--factory",
            "--port",
            str(api_port),
            "--no-access-log",
        ]
        procs.append(spawn("api", argv, tmp / "api.log", env, "uvicorn"))
        wait_port(api_port, 30, procs[-1])
        r = redis.Redis.from_url(settings.redis_url)
        jobs = [
            {"prompt": f"bulk job {i}, a red cat, 4k photo", "seed": i, "height": 512, "width": 512}
            for i in range(n)
        ]

        with httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=300,
        ) as http:
            http.post("/v1/campaigns", json={"jobs": jobs[:10]}).raise_for_status()  # warm-up
            r.delete(QUEUE)
            t = time.perf_counter()
            resp = http.post("/v1/campaigns", json={"jobs": jobs})
            farm_s = time.perf_counter() - t
            resp.raise_for_status()
        # Compatible jobs travel in messages of up to FARM_BATCH_MAX.
        per_message = settings.batch_max * RENDERS_PER_MESSAGE
        assert resp.json()["job_count"] == n and r.llen(QUEUE) == -(-n // per_message)
        r.delete(QUEUE)

        from workers.app import create_app

        app = create_app(settings)
        t = time.perf_counter()
        for i, job in enumerate(jobs):
            app.send_task(
                keys.PRIOR_TASK,
                kwargs={"job_id": f"{i:032d}", "campaign_id": "c" * 32, "spec": job, "key": "k"},
                queue=QUEUE,
            )
        base_s = time.perf_counter() - t
        assert r.llen(QUEUE) == n
    finally:
        for p in reversed(procs):
            p.stop()
    print(f"jobs: {n}")
    print(
        f"farm API, POST /v1/campaigns (validate + manifest + records + enqueue): {farm_s:.2f} s ({n / farm_s:,.0f} jobs/s)"
    )
    print(
        f"baseline, send_task one by one (enqueue only):                         {base_s:.2f} s ({n / base_s:,.0f} jobs/s)"
    )
    print(f"ratio baseline/farm: {base_s / farm_s:.2f}x")


if __name__ == "__main__":
    main()
