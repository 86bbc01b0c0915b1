"""A render's outputs: its PNGs and result records to S3, then its jobs marked done.

Split from ``handlers`` so a decoder can hand each render's stores to one finisher thread: the
jobs of a render turn done as soon as their objects exist, while the next render runs (not
after it), and renders finish in the order they ran.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from farm import keys, metrics
from farm.chains import release_children
from farm.domain.jobs import JobSpec, JobState
from farm.domain.usage import usage_field
from farm.stages import png_bytes
from farm.stores.records import own_fence
from workers.context import WorkerContext


def by_campaign(items: list, job=lambda item: item) -> dict[str, list]:
    """``items`` grouped by their job's campaign, in order."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(job(item)["campaign_id"], []).append(item)
    return groups


def finish(ctx: WorkerContext, stores, timings, recs, token: str) -> tuple[list[str], set[str]]:
    """Wait for one render's stores, then mark its jobs done (one round trip per campaign) and
    release what waits on them. Returns the jobs and the campaigns they finished. A job that a
    newer execution holds now is left to it (its image, the same pixels, is stored either way)."""
    t0 = time.perf_counter()
    stored = [f.result() for f in stores]
    waited, now = time.perf_counter() - t0, time.time()
    for job, _ in stored:
        # How long the render's objects took to store after it ended (the next render, if any,
        # runs meanwhile), per job.
        timings[job["job_id"]]["store"] = waited / max(len(stored), 1)
        rec = recs.get(job["job_id"])
        if rec and rec.created_at:
            timings[job["job_id"]]["latency"] = now - rec.created_at
    complete: set[str] = set()
    ended: list[str] = []
    drop: list[str] = []
    for cid, mine in by_campaign(stored, job=lambda item: item[0]).items():
        family = JobSpec.model_validate(mine[0][0]["spec"]).model
        spent = {
            "images": float(sum(job["spec"].get("num_images_per_prompt") or 1 for job, _ in mine)),
            usage_field("decoder", family, ctx.settings.device): sum(
                timings[job["job_id"]]["decode"] for job, _ in mine
            ),
        }
        moved = ctx.records.moves(
            cid,
            [(job["job_id"], {"s3_key": key}) for job, key in mine],
            JobState.DONE,
            (JobState.DECODING,),
            timings={job["job_id"]: timings[job["job_id"]] for job, _ in mine},
            usage=spent,
            fence=own_fence(token),
        )
        for (job, _), (ok, was, done) in zip(mine, moved, strict=True):
            if ok or was != JobState.DECODING:
                drop.append(job["job_id"])
            if ok:
                ended.append(job["job_id"])
                # Chained jobs waiting for this image run now, without the client in the loop.
                release_children(ctx.redis, ctx.records, ctx.app, job["job_id"], cid, ok=True)
            if done:
                complete.add(cid)
    # Embeddings of a job another execution holds now are that execution's to use.
    ctx.embeddings.delete_many(drop)
    metrics.decoded(ctx.settings, stored, timings)
    return ended, complete


def store(
    ctx: WorkerContext,
    job: dict,
    spec: JobSpec,
    pictures: list,
    recs: dict,
    timings: dict[str, dict[str, float]],
    puts: ThreadPoolExecutor,
) -> tuple[dict, str]:
    """One rendered job's PNGs (parameters in a text chunk) and result record to S3, the
    uploads side by side (each is a round trip to S3; a lone job waits for all of them)."""
    job_id, key, campaign_id = job["job_id"], job["key"], job["campaign_id"]
    t0 = time.perf_counter()
    targets = keys.image_keys(key, spec.num_images_per_prompt)
    uploads = []
    for index, (target, picture) in enumerate(zip(targets, pictures, strict=True)):
        meta = {"job_id": job_id, "campaign_id": campaign_id, "index": index, **job["spec"]}
        data = png_bytes(picture, meta)
        headers = {"job-id": job_id, "seed": str(spec.seed)}
        uploads.append(puts.submit(ctx.objects.put, target, data, "image/png", metadata=headers))
    # The record uploads beside the images, so it holds the encoding time, not the upload's
    # (the job record in Redis has both).
    timings[job_id]["encode"] = time.perf_counter() - t0
    rec = recs.get(job_id)
    result = {
        "job_id": job_id,
        "campaign_id": campaign_id,
        "spec": job["spec"],
        "seed": spec.seed,
        "s3_key": key,
        "s3_keys": targets,
        "width": pictures[0].width,
        "height": pictures[0].height,
        "timings": {**(rec.timings if rec else {}), **timings[job_id]},
    }
    record = json.dumps(result, ensure_ascii=False).encode()
    uploads.append(
        puts.submit(ctx.objects.put, keys.record_object(key), record, "application/json")
    )
    for upload in uploads:
        upload.result()
    timings[job_id]["upload"] = time.perf_counter() - t0
    return job, key
