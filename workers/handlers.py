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
from concurrent.futures import ThreadPoolExecutor

from farm import keys
from farm.chains import release_children
from farm.domain.jobs import JobSpec, JobState
from farm.errors import PoisonJob, ServiceUnavailable
from farm.families import get
from farm.stages import (
    TEXT_PRIOR_TASKS,
    cache_zero_embed,
    png_bytes,
    run_controlnet_prior,
    run_decoder_batch,
    run_prior,
    run_prior_batch,
    run_single_batch,
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


def _started(ctx, campaign_id, jobs, stage, to, allowed, retries) -> list[tuple[dict, JobSpec]]:
    """The message's jobs this delivery runs (the others are cancelled, done or poison)."""
    out = []
    for job in jobs:
        if _start(ctx, job["job_id"], campaign_id, stage, to, allowed, retries):
            out.append((job, JobSpec.model_validate(job["spec"])))
    return out


def _waited(ctx: WorkerContext, jobs: list[dict], name: str, since: str) -> None:
    """Record how long each job waited in the queue for this stage (``farm bench`` reports it)."""
    now = time.time()
    for job, rec in zip(jobs, ctx.records.get_many([j["job_id"] for j in jobs]), strict=True):
        start = (
            (rec.timings.get(since) if since != "created_at" else rec.created_at) if rec else None
        )
        if start:
            ctx.records.add_timing(job["job_id"], name, max(now - start, 0.0))


def _send(ctx: WorkerContext, task: str, campaign_id: str, jobs: list[dict]) -> None:
    """The next hop of these jobs: one message, routed to their family's queue."""
    ctx.app.send_task(
        task,
        kwargs={"campaign_id": campaign_id, "jobs": jobs},
        kwargsrepr=repr({"campaign_id": campaign_id, "jobs": [j["job_id"] for j in jobs]}),
    )


def _per_job(ctx: WorkerContext, campaign_id: str, run, items: list):
    """Run ``run`` on the whole batch; if that raises, on each item alone, so one bad job fails
    alone and its batch mates still render. Returns (item, result) pairs that succeeded."""
    try:
        return list(zip(items, run(items), strict=True))
    except ServiceUnavailable:
        raise  # Redis or S3 away: the whole message is retried, nobody's fault
    except Exception:
        if len(items) == 1:
            raise
        log.warning("batch of %d failed; running its jobs one by one", len(items), exc_info=True)
    done = []
    for item in items:
        try:
            done.append((item, run([item])[0]))
        except ServiceUnavailable:
            raise
        except Exception as e:  # this job's own failure, recorded on it
            fail(ctx, item[0]["job_id"], campaign_id, e)
    return done


def prior(ctx: WorkerContext, campaign_id: str, jobs: list[dict], retries: int) -> dict:
    """A message of compatible jobs through the prior (one call for plain prompts, cached
    results reused), their embeddings stored, one decoder message for those still wanted."""
    started = _started(
        ctx, campaign_id, jobs, "prior", JobState.PRIOR, (JobState.QUEUED, JobState.PRIOR), retries
    )
    if not started:
        return {"jobs": len(jobs), "skipped": True}
    _waited(ctx, [job for job, _ in started], "wait_prior", "created_at")
    first = started[0][1]
    pipe = ctx.models.pipeline(first.model, first.task)
    t0 = time.perf_counter()
    if first.task in TEXT_PRIOR_TASKS:
        cache_zero_embed(pipe)
        cached = ctx.embeddings.cached([spec for _, spec in started])
        todo = [item for item, hit in zip(started, cached, strict=True) if hit is None]

        def run(items):
            embs = run_prior_batch(pipe, [spec for _, spec in items])
            for (_, spec), emb in zip(items, embs, strict=True):
                ctx.embeddings.cache(spec, emb)
            return embs

        computed = dict(
            (item[0]["job_id"], emb) for item, emb in _per_job(ctx, campaign_id, run, todo)
        )
        results = []
        for item, hit in zip(started, cached, strict=True):
            emb = hit if hit is not None else computed.get(item[0]["job_id"])
            if emb is not None:
                results.append((item, emb))
                ctx.records.add_timing(item[0]["job_id"], "prior_cache_hit", float(hit is not None))
    else:
        helpers = get(first.model).tasks[first.task].helpers
        depth = ctx.models.helper(first.model, helpers[0]) if helpers else None

        def run(items):
            out = []
            for job, spec in items:
                images = _images(ctx, spec, job.get("inputs") or {}, "prior")
                if spec.task.startswith("controlnet"):
                    out.append(run_controlnet_prior(pipe, depth, spec, images))
                else:
                    out.append(run_prior(pipe, spec, images))
            return out

        results = _per_job(ctx, campaign_id, run, started)
    each = (time.perf_counter() - t0) / max(len(started), 1)
    onward = []
    for (job, _), emb in results:
        ctx.records.add_timing(job["job_id"], "prior", each)
        ctx.records.add_timing(job["job_id"], "prior_end_at", time.time())
        ctx.records.add_timing(job["job_id"], "prior_batch", float(len(started)))
        ctx.embeddings.put(job["job_id"], emb)
        if ctx.records.state(job["job_id"]) != JobState.PRIOR:
            # Cancelled while the prior ran: enqueue nothing new. (Were the cancel to land after
            # this check, the decoder's own move out of "prior" would refuse the job.)
            ctx.embeddings.delete(job["job_id"])
            continue
        onward.append(job)
    if onward:
        _send(ctx, keys.DECODER_TASK, campaign_id, onward)
    return {"jobs": [j["job_id"] for j in onward]}


def decoder(ctx: WorkerContext, campaign_id: str, jobs: list[dict], retries: int) -> dict:
    """A message of compatible jobs rendered in one pipeline call, each stored and recorded."""
    model = JobSpec.model_validate(jobs[0]["spec"]).model
    two_stage = get(model).two_stage
    # A single-stage job (Kandinsky 3) arrives here straight from the queue.
    allowed = (
        (JobState.PRIOR, JobState.DECODING) if two_stage else (JobState.QUEUED, JobState.DECODING)
    )
    started = _started(ctx, campaign_id, jobs, "decoder", JobState.DECODING, allowed, retries)
    embs: dict[str, object] = {}
    if two_stage and started:
        lost = []
        for job, _ in started:
            emb = ctx.embeddings.get(job["job_id"])
            if emb is None:
                lost.append(job)
            else:
                embs[job["job_id"]] = emb
        if lost:
            # Expired or lost (Redis restart): recompute them. Never borrow another job's.
            log.warning("%d jobs' embeddings are gone: sending them back to the prior", len(lost))
            for job in lost:
                ctx.records.move(job["job_id"], campaign_id, JobState.QUEUED, (JobState.DECODING,))
            _send(ctx, keys.PRIOR_TASK, campaign_id, lost)
            started = [(j, s) for j, s in started if j["job_id"] in embs]
    if not started:
        return {"jobs": len(jobs), "skipped": True}
    since = "prior_end_at" if two_stage else "created_at"
    _waited(ctx, [job for job, _ in started], "wait_decoder", since)
    first = started[0][1]
    pipe = ctx.models.pipeline(first.model, first.task)
    t0 = time.perf_counter()

    def run(items):
        specs = [spec for _, spec in items]
        images: dict = {}
        for job, spec in items:
            images.update(_images(ctx, spec, job.get("inputs") or {}, "decoder"))
        pad = ctx.settings.compile  # few batch shapes for a compiled UNet
        if two_stage:
            rows = [embs[j["job_id"]] for j, _ in items]
            return run_decoder_batch(pipe, specs, rows, images, pad=pad)
        return run_single_batch(pipe, specs, images, pad=pad)

    rendered = _per_job(ctx, campaign_id, run, started)
    each = (time.perf_counter() - t0) / max(len(started), 1)
    with ThreadPoolExecutor(max_workers=min(8, len(rendered) or 1)) as pool:
        # PNG encoding and the upload of each job run side by side (zlib and sockets release
        # the GIL); a job is done only once its objects exist.
        list(
            pool.map(
                lambda item: _store(
                    ctx, campaign_id, item[0][0], item[0][1], item[1], each, len(started)
                ),
                rendered,
            )
        )
    return {"jobs": [job["job_id"] for (job, _), _ in rendered]}


def _store(
    ctx: WorkerContext,
    campaign_id: str,
    job: dict,
    spec: JobSpec,
    pictures: list,
    decode_s: float,
    batch: int,
) -> None:
    """One rendered job: PNGs and its result record to S3, then done, then what waits on it."""
    job_id, key = job["job_id"], job["key"]
    t1 = time.perf_counter()
    targets = keys.image_keys(key, spec.num_images_per_prompt)
    for index, (target, picture) in enumerate(zip(targets, pictures, strict=True)):
        meta = {"job_id": job_id, "campaign_id": campaign_id, "index": index, **job["spec"]}
        ctx.objects.put(
            target,
            png_bytes(picture, meta),
            "image/png",
            metadata={"job-id": job_id, "seed": str(spec.seed)},
        )
    ctx.records.add_timing(job_id, "decode", decode_s)
    ctx.records.add_timing(job_id, "decoder_batch", float(batch))
    ctx.records.add_timing(job_id, "upload", time.perf_counter() - t1)
    rec = ctx.records.get(job_id)
    result = {
        "job_id": job_id,
        "campaign_id": campaign_id,
        "spec": job["spec"],
        "seed": spec.seed,
        "s3_key": key,
        "s3_keys": targets,
        "width": pictures[0].width,
        "height": pictures[0].height,
        "timings": rec.timings,
    }
    ctx.objects.put(
        keys.record_object(key), json.dumps(result, ensure_ascii=False).encode(), "application/json"
    )
    latency = time.time() - rec.created_at if rec.created_at else None
    if latency is not None:
        ctx.records.add_timing(job_id, "latency", latency)
    _, _, complete = ctx.records.move(
        job_id, campaign_id, JobState.DONE, (JobState.DECODING,), s3_key=key
    )
    ctx.embeddings.delete(job_id)
    # Chained jobs waiting for this image run now, without the client in the loop.
    release_children(ctx.redis, ctx.records, ctx.app, job_id, campaign_id, ok=True)
    if complete:
        ctx.app.send_task(keys.FINALIZE_TASK, kwargs={"campaign_id": campaign_id})


def finalize(ctx: WorkerContext, campaign_id: str, retries: int) -> dict:
    from farm.finalize import finalize as write

    return write(ctx.records, ctx.objects, ctx.settings.s3_prefix, campaign_id)
