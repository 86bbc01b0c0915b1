"""What each task does around its stage function: state moves, guards, IO, the next hop.

Kept apart from the Celery adapters (``tasks.py``), which only unpack messages and map errors to
Celery's retries: these functions take a ``WorkerContext`` (its Redis, S3, Celery app to send the
next hop with, and the worker's models). Every state change goes through RecordStore.move, which
checks the state it leaves: a cancelled or finished job is never picked up again, whatever
messages are still queued for it.
"""

from __future__ import annotations

import json
import logging
import time

from farm import keys
from farm.chains import release_children
from farm.domain.jobs import JobSpec, JobState
from farm.errors import PoisonJob
from farm.families import get
from farm.stages import (
    png_bytes,
    run_controlnet_prior,
    run_decoder,
    run_prior,
    run_single,
)
from farm.stores.records import ACTIVE
from workers.context import WorkerContext

log = logging.getLogger("farm.worker")


def _count_delivery(ctx: WorkerContext, job_id: str, stage: str, retries: int) -> int:
    """Count a delivery of (job, stage); retries we asked for ourselves do not count."""
    key = keys.attempts(job_id, stage)
    pipe = ctx.redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, ctx.settings.record_ttl_s)
    return int(pipe.execute()[0]) - retries


def _start(
    ctx: WorkerContext, job_id: str, cid: str, stage: str, to: JobState, allowed, retries: int
) -> bool:
    """Move the job into this stage, or say why not; fail it once it has killed too many workers."""
    moved, was, _ = ctx.records.move(job_id, cid, to, allowed)
    if not moved:
        # Cancelled, finished, reset by a resume, or unknown: this delivery has nothing to do.
        log.info(
            "job %s is %s: %s delivery skipped", job_id, was.value if was else "unknown", stage
        )
        return False
    attempts = _count_delivery(ctx, job_id, stage, retries)
    if attempts > ctx.settings.max_attempts:
        fail(
            ctx,
            job_id,
            cid,
            PoisonJob(f"{stage} stage delivered {attempts} times; a worker died each time"),
        )
        return False
    return True


def fail(ctx: WorkerContext, job_id: str, campaign_id: str, exc: BaseException) -> None:
    error = {"type": type(exc).__name__, "message": str(exc)[:2000]}
    moved, _, complete = ctx.records.move(job_id, campaign_id, JobState.FAILED, ACTIVE, error=error)
    if complete:
        ctx.app.send_task(keys.FINALIZE_TASK, kwargs={"campaign_id": campaign_id})
    if moved:
        # Chained jobs that read this job's image can never run: fail them too.
        release_children(ctx.redis, ctx.records, ctx.app, job_id, campaign_id, ok=False)


def _images(ctx: WorkerContext, job: JobSpec, inputs: dict[str, str], stage: str) -> dict:
    """Fetch and decode the inputs this stage reads (masks as greyscale)."""
    from farm.stores.inputs import load

    if stage == "prior":
        refs = [i.image for i in job.interpolate or () if i.image]
        if job.task.startswith("controlnet"):
            # The prior worker makes the depth hint (and the img2img embeddings) from these.
            refs += [r for r in (job.image, job.hint) if r]
    else:
        refs = [r for r in (job.image, job.mask) if r and job.task != "controlnet-depth"]
    grey = {job.mask, job.hint} - {None}
    return {ref: load(ctx.objects.get(inputs[ref]), "L" if ref in grey else "RGB") for ref in refs}


def prior(
    ctx: WorkerContext,
    job_id: str,
    campaign_id: str,
    spec: dict,
    key: str,
    retries: int,
    inputs: dict | None = None,
) -> dict:
    if not _start(
        ctx,
        job_id,
        campaign_id,
        "prior",
        JobState.PRIOR,
        (JobState.QUEUED, JobState.PRIOR),
        retries,
    ):
        return {"job_id": job_id, "skipped": True}
    job = JobSpec.model_validate(spec)
    images = _images(ctx, job, inputs or {}, "prior")
    t0 = time.perf_counter()
    pipe = ctx.models.pipeline(job.model, job.task)
    helpers = get(job.model).tasks[job.task].helpers
    if job.task.startswith("controlnet"):
        depth = ctx.models.helper(job.model, helpers[0]) if helpers else None
        emb = run_controlnet_prior(pipe, depth, job, images)
    else:
        emb = run_prior(pipe, job, images)
    ctx.records.add_timing(job_id, "prior", time.perf_counter() - t0)
    emb_key = ctx.embeddings.put(job_id, emb)
    if ctx.records.state(job_id) != JobState.PRIOR:
        # Cancelled while the prior ran: enqueue nothing new. (Were the cancel to land after this
        # check, the decoder's own move out of "prior" would refuse the job.)
        ctx.embeddings.delete(job_id)
        return {"job_id": job_id, "skipped": True}
    ctx.app.send_task(
        keys.DECODER_TASK,
        kwargs={
            "job_id": job_id,
            "campaign_id": campaign_id,
            "spec": spec,
            "key": key,
            "emb_key": emb_key,
            "inputs": inputs or {},
        },
        kwargsrepr=f"{{'job_id': '{job_id}', 'campaign_id': '{campaign_id}'}}",
    )
    return {"job_id": job_id, "emb_key": emb_key}


def decoder(
    ctx: WorkerContext,
    job_id: str,
    campaign_id: str,
    spec: dict,
    key: str,
    emb_key: str | None,
    retries: int,
    inputs: dict | None = None,
) -> dict:
    job = JobSpec.model_validate(spec)
    two_stage = get(job.model).two_stage
    # A single-stage job (Kandinsky 3) arrives here straight from the queue.
    allowed = (
        (JobState.PRIOR, JobState.DECODING) if two_stage else (JobState.QUEUED, JobState.DECODING)
    )
    if not _start(ctx, job_id, campaign_id, "decoder", JobState.DECODING, allowed, retries):
        return {"job_id": job_id, "skipped": True}
    emb = ctx.embeddings.get(job_id) if two_stage else None
    if two_stage and emb is None:
        # Expired or lost (Redis restart): recompute them. Never borrow another job's.
        log.warning("job %s: embeddings %s gone, sending it back to the prior", job_id, emb_key)
        ctx.records.move(job_id, campaign_id, JobState.QUEUED, (JobState.DECODING,))
        ctx.app.send_task(
            keys.PRIOR_TASK,
            kwargs={
                "job_id": job_id,
                "campaign_id": campaign_id,
                "spec": spec,
                "key": key,
                "inputs": inputs or {},
            },
        )
        return {"job_id": job_id, "requeued": "prior"}
    images = _images(ctx, job, inputs or {}, "decoder")
    pipe = ctx.models.pipeline(job.model, job.task)
    t0 = time.perf_counter()
    pictures = run_decoder(pipe, job, emb, images) if two_stage else run_single(pipe, job, images)
    t1 = time.perf_counter()
    targets = keys.image_keys(key, job.num_images_per_prompt)
    for index, (target, picture) in enumerate(zip(targets, pictures, strict=True)):
        meta = {"job_id": job_id, "campaign_id": campaign_id, "index": index, **spec}
        data = png_bytes(picture, meta)
        ctx.objects.put(
            target, data, "image/png", metadata={"job-id": job_id, "seed": str(job.seed)}
        )
    t2 = time.perf_counter()
    ctx.records.add_timing(job_id, "decode", t1 - t0)
    ctx.records.add_timing(job_id, "upload", t2 - t1)
    result = {
        "job_id": job_id,
        "campaign_id": campaign_id,
        "spec": spec,
        "seed": job.seed,
        "s3_key": key,
        "s3_keys": targets,
        "width": pictures[0].width,
        "height": pictures[0].height,
        "timings": ctx.records.get(job_id).timings,
    }
    ctx.objects.put(
        keys.record_object(key), json.dumps(result, ensure_ascii=False).encode(), "application/json"
    )
    _, _, complete = ctx.records.move(
        job_id, campaign_id, JobState.DONE, (JobState.DECODING,), s3_key=key
    )
    ctx.embeddings.delete(job_id)
    # Chained jobs waiting for this image run now, without the client in the loop.
    release_children(ctx.redis, ctx.records, ctx.app, job_id, campaign_id, ok=True)
    if complete:
        ctx.app.send_task(keys.FINALIZE_TASK, kwargs={"campaign_id": campaign_id})
    return {"job_id": job_id, "s3_key": key}


def finalize(ctx: WorkerContext, campaign_id: str, retries: int) -> dict:
    from farm.finalize import finalize as write

    return write(ctx.records, ctx.objects, ctx.settings.s3_prefix, campaign_id)
