"""`farm export` against plain parallel GETs of the same objects, from a real SeaweedFS S3.

    .venv/bin/python bench/export.py [--n 10000] [--concurrency 16] [--mem 2000,20000] [--json F]

Starts its own SeaweedFS, stores ``--n`` tiny PNGs (64x64, as the tiny models render), then in
one run (``--rounds`` times, the best time kept):
1. copy: every object fetched with ``--concurrency`` parallel GETs (boto3 ``get_object``, as
   ``aws s3 cp --recursive`` does, and httpx on presigned URLs) into one file each;
2. export: ``export_campaign`` of the same objects, as WebDataset and as Parquet, from job
   records shaped as the API's ``jobs.jsonl`` serves them (presigned URLs made as they stream);
3. memory: tracemalloc's peak of an export of ``--mem`` synthetic jobs each (no S3), to show it
   flat in the campaign's size.
Issue 20's target: export within 2x of the copy's time; memory flat in the campaign size.
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BUCKET = "bench-export"


def tiny_png(i: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(i)
    pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def job_id(i: int) -> str:
    return f"{i:032x}"


def object_key(i: int) -> str:
    return f"renders/bench/{'b' * 32}/{job_id(i)}.png"


class Campaign:
    """A finished campaign as the client sees it: ``status()`` and ``stream("jobs")`` yielding
    records shaped as the API's, their URLs presigned as they are streamed (as the API does)."""

    def __init__(self, s3, n: int):
        self.id = "b" * 32
        self.s3, self.n = s3, n

    def status(self) -> dict:
        return {"state": "finished", "total": self.n, "counts": {"done": self.n}}

    def stream(self, what: str = "jobs", state: str | None = None):
        for i in range(self.n):
            key = object_key(i)
            url = self.s3.generate_presigned_url(
                "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=900
            )
            spec = {"prompt": f"bench {i}", "seed": i, "model": "kandinsky-2.2", "width": 64}
            yield {
                "job_id": job_id(i),
                "state": "done",
                "spec": {**spec, "task": "text2img", "height": 64},
                "seed": i,
                "s3_key": key,
                "s3_keys": [key],
                "url": url,
                "urls": [url],
                "timings": {"prior": 0.01, "decode": 0.02},
                "error": None,
            }


def copy_boto3(s3, n: int, out: Path, concurrency: int) -> float:
    out.mkdir(parents=True)

    def one(i: int) -> None:
        body = s3.get_object(Bucket=BUCKET, Key=object_key(i))["Body"].read()
        (out / f"{job_id(i)}.png").write_bytes(body)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - start


def copy_httpx(campaign: Campaign, out: Path, concurrency: int) -> float:
    import httpx

    out.mkdir(parents=True)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    start = time.perf_counter()
    with httpx.Client(limits=limits, timeout=60) as http:

        def one(job: dict) -> None:
            resp = http.get(job["url"])
            resp.raise_for_status()
            (out / f"{job['job_id']}.png").write_bytes(resp.content)

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, campaign.stream("jobs")))
    return time.perf_counter() - start


def export_once(campaign: Campaign, out: Path, fmt: str, concurrency: int) -> tuple[float, int]:
    from farm.export import export_campaign

    start = time.perf_counter()
    stats = export_campaign(campaign, out, format=fmt, concurrency=concurrency)
    elapsed = time.perf_counter() - start
    assert stats.samples == campaign.n and not stats.skipped, stats.summary()
    return elapsed, stats.bytes


class Synthetic:
    """n jobs with no S3 behind them (the memory check): records made on the fly."""

    def __init__(self, n: int):
        self.id, self.n = "a" * 32, n

    def status(self) -> dict:
        return {"state": "finished", "total": self.n, "counts": {"done": self.n}}

    def stream(self, what: str = "jobs", state: str | None = None):
        for i in range(self.n):
            key = object_key(i)
            yield {
                "job_id": job_id(i),
                "state": "done",
                "spec": {"prompt": f"p {i}", "seed": i, "model": "kandinsky-2.2"},
                "seed": i,
                "s3_key": key,
                "s3_keys": [key],
                "url": f"http://s3.invalid/{key}",
                "urls": [f"http://s3.invalid/{key}"],
                "timings": {"decode": 0.02},
            }


def memory_peak(n: int, out: Path, image: bytes) -> int:
    from farm.export import export_campaign

    tracemalloc.start()
    try:
        export_campaign(Synthetic(n), out, fetch=lambda url: image, concurrency=16)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000, help="objects in the campaign (10000)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=1, help="runs of each side; the best kept")
    ap.add_argument("--mem", default="2000,20000", help="job counts for the memory check")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()

    import boto3
    from botocore.config import Config

    from farm.local.servers import free_port, start_weed

    result: dict = {"n": args.n, "concurrency": args.concurrency}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        port, access, secret = (
            free_port(),
            "bench" + secrets.token_hex(4),
            secrets.token_urlsafe(24),
        )
        weed = start_weed(tmp / "weed", port, access, secret)
        try:
            s3 = boto3.client(
                "s3",
                endpoint_url=f"http://127.0.0.1:{port}",
                aws_access_key_id=access,
                aws_secret_access_key=secret,
                region_name="us-east-1",
                config=Config(
                    s3={"addressing_style": "path"},
                    max_pool_connections=max(args.concurrency, 32),
                    retries={"max_attempts": 5, "mode": "standard"},
                ),
            )
            deadline = time.monotonic() + 30
            while True:
                try:
                    s3.create_bucket(Bucket=BUCKET)
                    break
                except Exception:  # S3 answers about a second after its port opens
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
            images = [tiny_png(i) for i in range(64)]
            start = time.perf_counter()
            with ThreadPoolExecutor(32) as pool:
                list(
                    pool.map(
                        lambda i: s3.put_object(
                            Bucket=BUCKET, Key=object_key(i), Body=images[i % 64]
                        ),
                        range(args.n),
                    )
                )
            result["seed_s"] = round(time.perf_counter() - start, 2)
            result["object_bytes"] = sum(len(images[i % 64]) for i in range(args.n))
            print(
                f"stored {args.n} PNGs ({result['object_bytes'] / 1e6:.1f} MB) in {result['seed_s']} s"
            )

            campaign = Campaign(s3, args.n)
            times: dict[str, list[float]] = {}
            for round_ in range(args.rounds):
                times.setdefault("copy_boto3", []).append(
                    copy_boto3(s3, args.n, tmp / f"boto3-{round_}", args.concurrency)
                )
                times.setdefault("copy_httpx", []).append(
                    copy_httpx(campaign, tmp / f"httpx-{round_}", args.concurrency)
                )
                for fmt in ("webdataset", "parquet"):
                    elapsed, size = export_once(
                        campaign, tmp / f"{fmt}-{round_}", fmt, args.concurrency
                    )
                    times.setdefault(f"export_{fmt}", []).append(elapsed)
                    result[f"export_{fmt}_bytes"] = size
            best = {k: min(v) for k, v in times.items()}
            copy = min(best["copy_boto3"], best["copy_httpx"])
            for name, seconds in best.items():
                result[f"{name}_s"] = round(seconds, 3)
                result[f"{name}_per_s"] = round(args.n / seconds)
            for fmt in ("webdataset", "parquet"):
                result[f"ratio_{fmt}"] = round(best[f"export_{fmt}"] / copy, 3)
        finally:
            weed.stop()

        sizes = [int(x) for x in args.mem.split(",")]
        image = tiny_png(0)
        memory_peak(200, tmp / "mem-warm", image)  # imports and first-use caches
        for n in sizes:
            result[f"peak_bytes_{n}"] = memory_peak(n, tmp / f"mem-{n}", image)

    for name in ("copy_boto3", "copy_httpx", "export_webdataset", "export_parquet"):
        print(f"{name:18} {result[f'{name}_s']:8.3f} s  {result[f'{name}_per_s']:6d} objects/s")
    for fmt in ("webdataset", "parquet"):
        ok = "ok" if result[f"ratio_{fmt}"] <= 2 else "OVER the 2x target"
        print(f"export {fmt} / fastest copy: {result[f'ratio_{fmt}']:.2f}x ({ok})")
    for n in sizes:
        print(
            f"export of {n:>7} jobs: tracemalloc peak {result[f'peak_bytes_{n}'] / 2**20:.2f} MiB"
        )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
