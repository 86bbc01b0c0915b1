"""A million-job grid through the API with no workers: acceptance time, Redis and API memory.

    .venv/bin/python bench/million.py [--prompts 1000] [--seeds 1000] [--json FILE]

Starts its own Valkey, SeaweedFS and API (uvicorn, as ``farm up`` runs it; no workers, no
feeder), then:
1. submits a grid of prompts x seeds (1,000 x 1,000 = 1,000,000 jobs) and times the POST;
2. reports Redis ``used_memory`` growth per job and the API process's peak RSS growth
   (``VmHWM``) across the submission;
3. times 20 status requests of that campaign;
4. submits a 10,000,000-job grid, beyond the limit, and times its refusal (and the peak RSS
   after it).
Issue 10's targets: accepted in <= 60 s, <= 200 bytes of Redis per job, <= 200 MiB of API
peak RSS, status <= 50 ms; the 10 M grid refused in <= 1 s with no memory growth.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()

    import httpx
    import redis

    from farm.local.servers import free_port, spawn, start_valkey, start_weed, wait_http
    from farm.settings import Settings
    from farm.stores.objects import ObjectStore

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vport, password = free_port(), secrets.token_urlsafe(16)
        valkey = start_valkey(tmp / "valkey", vport, password)
        sport, access, secret = (
            free_port(),
            "bench" + secrets.token_hex(4),
            secrets.token_urlsafe(24),
        )
        weed = start_weed(tmp / "weed", sport, access, secret)
        token = secrets.token_urlsafe(24)
        settings = Settings(
            state_dir=tmp / "state",
            redis_url=f"redis://:{password}@127.0.0.1:{vport}/0",
            s3_endpoint=f"http://127.0.0.1:{sport}",
            s3_access_key=access,
            s3_secret_key=secret,
            api_tokens=f"bench:{token}",
        )
        api = None
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    ObjectStore.from_settings(settings).ensure_bucket()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
            port = free_port()
            env = {**os.environ, **settings.worker_env(), "PYTHONPATH": str(Path.cwd())}
            argv = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
            api = spawn("api", argv, tmp / "api.log", env, "uvicorn")
            wait_http(f"http://127.0.0.1:{port}/healthz", '"ok":true', 30, api)
            r = redis.Redis.from_url(settings.redis_url)
            http = httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=300,
            )
            small = {"grid": {"prompts": ["warm"], "seeds": 1}}
            http.post("/v1/campaigns", json=small).raise_for_status()  # imports, connections
            grid = {
                "grid": {
                    "prompts": [f"a study of light, variation {i}" for i in range(args.prompts)],
                    "seeds": args.seeds,
                },
                "defaults": {"height": 64, "width": 64, "num_inference_steps": 2},
            }
            total = args.prompts * args.seeds
            mem0, hwm0 = int(r.info("memory")["used_memory"]), _hwm_kib(api.pid)
            t0 = time.perf_counter()
            resp = http.post("/v1/campaigns", json=grid)
            accept_s = time.perf_counter() - t0
            resp.raise_for_status()
            cid = resp.json()["campaign_id"]
            mem1, hwm1 = int(r.info("memory")["used_memory"]), _hwm_kib(api.pid)
            lat = []
            for _ in range(20):
                t = time.perf_counter()
                http.get(f"/v1/campaigns/{cid}").raise_for_status()
                lat.append(1000 * (time.perf_counter() - t))
            huge = {"grid": {"prompts": ["x"] * 10_000, "seeds": 1000}}
            t = time.perf_counter()
            refused = http.post("/v1/campaigns", json=huge)
            refuse_s = time.perf_counter() - t
            hwm2 = _hwm_kib(api.pid)
        finally:
            if api is not None:
                api.stop()
            weed.stop()
            valkey.stop()
    result = {
        "jobs": total,
        "accept_s": round(accept_s, 2),
        "redis_bytes_per_job": round((mem1 - mem0) / total, 2),
        "api_peak_rss_growth_mib": round((hwm1 - hwm0) / 1024, 1),
        "status_ms_p50": round(statistics.median(lat), 2),
        "status_ms_max": round(max(lat), 2),
        "ten_million_status": refused.status_code,
        "ten_million_refused_s": round(refuse_s, 3),
        "ten_million_rss_growth_mib": round((hwm2 - hwm1) / 1024, 1),
        "cpus": os.cpu_count(),
    }
    for name, value in result.items():
        print(f"{name:28} {value}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
