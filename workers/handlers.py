"""What each task does around its stage function: guards, IO, records, the next hop.

Kept apart from the Celery adapters so the logic reads (and tests) without a broker.
"""

from __future__ import annotations

import json
import logging
import time

from farm import keys
from farm.errors import PoisonJob
from farm.jobs import JobSpec, JobState
from farm.stages import png_bytes, run_decoder, run_prior
from workers.context import WorkerContext

log = logging.getLogger("farm.worker")


def _count_delivery(ctx: WorkerContext, job_id: str, stage: str, retries: int) -> int:
    """Count a delivery of (job, stage); retries we asked for ourselves do not count."""
    key = keys.attempts(job_id, stage)
    pipe = ctx.redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, ctx.settings.record_ttl_s)
    return int(pipe.execute()[0]) - retries


def _guard(ctx: WorkerContext, job_id: str, stage: str, retries: int) -> bool:
    """Whether to run this delivery: not for a finished job, not past the attempt limit."""
    state = ctx.records.state(job_id)
    if state is not None and state.terminal:
        # A duplicate delivery (redelivery after a crash, a resume): observed once, done once.
        log.info("job %s already %s: %s delivery skipped", job_id, state.value, stage)
        return False
    attempts = _count_delivery(ctx, job_id, stage, retries)
    if attempts > ctx.settings.max_attempts:
        err = PoisonJob(f"{stage} stage delivered {attempts} times; a worker died each time")
        fail(ctx, job_id, err)
        return False
    return True


def fail(ctx: WorkerContext, job_id: str, exc: BaseException) -> None:
    error = {"type": type(exc).__name__, "message": str(exc)[:2000]}
    ctx.records.update(job_id, JobState.FAILED, error=error)


def prior(ctx: WorkerContext, job_id: str, campaign_id: str, spec: dict, retries: int) -> dict:
    if not _guard(ctx, job_id, "prior", retries):
        return {"job_id": job_id, "skipped": True}
    job = JobSpec.model_validate(spec)
    ctx.records.update(job_id, JobState.PRIOR)
    t0 = time.perf_counter()
    emb = run_prior(ctx.pipeline("prior"), job)
    ctx.records.add_timing(job_id, "prior", time.perf_counter() - t0)
    emb_key = ctx.embeddings.put(job_id, emb)
    ctx.app.send_task(
        keys.DECODER_TASK,
        kwargs={"job_id": job_id, "campaign_id": campaign_id, "spec": spec, "emb_key": emb_key},
    )
    return {"job_id": job_id, "emb_key": emb_key}


def decoder(
    ctx: WorkerContext, job_id: str, campaign_id: str, spec: dict, emb_key: str, retries: int
) -> dict:
    if not _guard(ctx, job_id, "decoder", retries):
        return {"job_id": job_id, "skipped": True}
    emb = ctx.embeddings.get(job_id)
    if emb is None:
        # Expired or lost (Redis restart): recompute them. Never borrow another job's.
        log.warning("job %s: embeddings %s gone, sending it back to the prior", job_id, emb_key)
        ctx.records.update(job_id, JobState.QUEUED)
        ctx.app.send_task(
            keys.PRIOR_TASK, kwargs={"job_id": job_id, "campaign_id": campaign_id, "spec": spec}
        )
        return {"job_id": job_id, "requeued": "prior"}
    job = JobSpec.model_validate(spec)
    ctx.records.update(job_id, JobState.DECODING)
    t0 = time.perf_counter()
    image = run_decoder(ctx.pipeline("decoder"), job, emb)
    t1 = time.perf_counter()
    data = png_bytes(image, {"job_id": job_id, "campaign_id": campaign_id, **spec})
    prefix = ctx.settings.s3_prefix
    key = keys.image_object(prefix, campaign_id, job_id)
    ctx.objects.put(key, data, "image/png", metadata={"job-id": job_id, "seed": str(job.seed)})
    t2 = time.perf_counter()
    ctx.records.add_timing(job_id, "decode", t1 - t0)
    ctx.records.add_timing(job_id, "upload", t2 - t1)
    record = ctx.records.get(job_id)
    result = {
        "job_id": job_id,
        "campaign_id": campaign_id,
        "spec": spec,
        "seed": job.seed,
        "s3_key": key,
        "width": image.width,
        "height": image.height,
        "timings": record.timings,
    }
    ctx.objects.put(
        keys.record_object(prefix, campaign_id, job_id),
        json.dumps(result, ensure_ascii=False).encode(),
        "application/json",
    )
    ctx.records.update(job_id, JobState.DONE, s3_key=key)
    ctx.embeddings.delete(job_id)
    return {"job_id": job_id, "s3_key": key}
