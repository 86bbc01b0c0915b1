"""What each task does around its stage function: state moves, guards, IO, the next hop.

Kept apart from the Celery adapters (``tasks.py``), which only unpack messages and map errors to
Celery's retries: these functions take a ``WorkerContext`` (its Redis, S3, Celery app to send the
next hop with, and the worker's models). A message carries a batch of compatible jobs; Redis
work is done a batch at a time (one round trip per step, not per job). Every state change goes
through RecordStore's transition script, which checks the state it leaves: a cancelled or
finished job is never picked up again, whatever messages are still queued for it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from farm import fleet, keys, metrics
from farm.chains import release_children
from farm.domain.batching import batch_key
from farm.domain.jobs import JobSpec, JobState
from farm.domain.usage import usage_field
from farm.errors import PoisonJob, ServiceUnavailable
from farm.families import get
from farm.stages import (
    TEXT_PRIOR_TASKS,
    cache_zero_embed,
    run_controlnet_prior,
    run_decoder_batch,
    run_prior,
    run_prior_batch,
    run_single_batch,
)
from farm.stores.gather import offer_for
from farm.stores.records import ACTIVE, own_fence, start_fence
from workers import liveness
from workers.context import WorkerContext
from workers.storing import by_campaign as _by_campaign
from workers.storing import finish, store

log = logging.getLogger("farm.worker")


@dataclass(frozen=True)
class Execution:
    """One execution of one message: the fencing token of every job move it makes.

    ``message_id`` is the Celery task id (the same on a redelivery or a retry); ``token`` is new
    for each execution, so after a redelivery only the newest execution can finish a job.
    """

    message_id: str
    token: str
    retries: int = 0
    last_try: bool = False  # Redis or S3 away now fails the jobs instead of a retry

    @classmethod
    def of(cls, message_id: str | None, retries: int, last_try: bool = False) -> Execution:
        token = uuid.uuid4().hex
        return cls(message_id or token, token, retries, last_try)


def fail(
    ctx: WorkerContext, job_id: str, campaign_id: str, exc: BaseException, execution: str = ""
) -> None:
    """Record the job failed, unless a later execution (its message delivered again) holds it."""
    error = {"type": type(exc).__name__, "message": str(exc)[:2000]}
    fence = own_fence(execution) if execution else ""
    moved, _, complete = ctx.records.move(
        job_id, campaign_id, JobState.FAILED, ACTIVE, fence=fence, error=error
    )
    if complete:
        ctx.app.send_task(keys.FINALIZE_TASK, kwargs={"campaign_id": campaign_id})
    if moved:
        metrics.job_failed(ctx.stage, exc)
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


def _started(
    ctx, campaign_id, jobs, stage, to, allowed, ex: Execution
) -> list[tuple[dict, JobSpec]]:
    """Move the message's jobs into this stage (one round trip); the ones that did not move are
    cancelled, finished, reset by a resume, unknown, or running under another message (a stale
    or duplicate copy of this one), and a job delivered more often than ``max_attempts`` (it
    killed a worker each time) fails as a poison job."""
    ids = [job["job_id"] for job in jobs]
    fence = start_fence(ex.message_id, ex.token)
    moved = ctx.records.moves(campaign_id, [(j, {}) for j in ids], to, allowed, fence=fence)
    runs = []
    for job, (ok, was, _) in zip(jobs, moved, strict=True):
        if ok:
            runs.append(job)
        else:
            state = was.value if was else "unknown"
            log.info("job %s is %s: %s delivery skipped", job["job_id"], state, stage)
    # Retries we asked for ourselves (Redis or S3 away) are not deliveries that killed a worker.
    counts = ctx.records.count_deliveries([j["job_id"] for j in runs], stage)
    out = []
    for job, count in zip(runs, counts, strict=True):
        if count - ex.retries > ctx.settings.max_attempts:
            error = PoisonJob(f"{stage} stage delivered {count} times; a worker died each time")
            fail(ctx, job["job_id"], campaign_id, error, ex.token)
        else:
            out.append((job, JobSpec.model_validate(job["spec"])))
    return out


def _waits(records, since: str) -> dict[str, float]:
    """How long each job waited in the queue for this stage (``farm bench`` reports it)."""
    now, out = time.time(), {}
    for rec in records:
        start = rec.created_at if since == "created_at" else rec.timings.get(since)
        if start:
            out[rec.job_id] = max(now - start, 0.0)
    return out


def _send(ctx: WorkerContext, task: str, campaign_id: str, jobs: list[dict]) -> None:
    """The next hop of these jobs: one message, routed to their family's queue; a decoder
    message with room in its render is offered to other decoders first (``farm.stores.gather``)."""
    message_id, payload = str(uuid.uuid4()), {"campaign_id": campaign_id, "jobs": jobs}
    if task == keys.DECODER_TASK:
        spec = JobSpec.model_validate(jobs[0]["spec"])
        queue = get(spec.model).queue("decoder")
        offer = offer_for(queue, spec, message_id, payload, ctx.settings.batch_max)
        ctx.gathering.offer([offer] if offer else [])
    ctx.app.send_task(
        task,
        kwargs=payload,
        task_id=message_id,
        priority=fleet.level(jobs[0].get("priority")),
        kwargsrepr=repr({"campaign_id": campaign_id, "jobs": [j["job_id"] for j in jobs]}),
    )


def _per_job(ctx: WorkerContext, run, items: list, ex: Execution):
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
            fail(ctx, item[0]["job_id"], item[0]["campaign_id"], e, ex.token)
    return done


def prior(
    ctx: WorkerContext, campaign_id: str, jobs: list[dict], ex: Execution | None = None
) -> dict:
    """A message of compatible jobs through the prior (one call for plain prompts, earlier results
    reused), their embeddings stored, one decoder message for those still wanted."""
    ex = ex or Execution.of(None, 0)
    with liveness.running(ctx.redis, ex.token, ex.message_id):
        return _prior(ctx, campaign_id, jobs, ex)


def _prior(ctx: WorkerContext, campaign_id: str, jobs: list[dict], ex: Execution) -> dict:
    jobs = [{**job, "campaign_id": job.get("campaign_id") or campaign_id} for job in jobs]
    started = _started(
        ctx, campaign_id, jobs, "prior", JobState.PRIOR, (JobState.QUEUED, JobState.PRIOR), ex
    )
    if not started:
        return {"jobs": len(jobs), "skipped": True}
    ids = [job["job_id"] for job, _ in started]
    waits = _waits([r for r in ctx.records.get_many(ids) if r], "created_at")
    first = started[0][1]
    pipe = ctx.models.pipeline(first.model, first.task)
    hits: set[str] = set()
    t0 = time.perf_counter()
    if first.task in TEXT_PRIOR_TASKS:
        cache_zero_embed(pipe)
        cached = ctx.embeddings.cached([spec for _, spec in started])
        hits = {job["job_id"] for (job, _), hit in zip(started, cached, strict=True) if hit}
        todo = [item for item in started if item[0]["job_id"] not in hits]

        def run(items):
            embs = []
            for chunk in split(items, ctx.settings.batch_max):
                for _ in chunk:  # run_prior_batch calls the prior once per prompt
                    metrics.batch("prior", first.model, 1, ctx.settings.batch_max)
                embs += run_prior_batch(pipe, [spec for _, spec in chunk])
            ctx.embeddings.cache([(spec, emb) for (_, spec), emb in zip(items, embs, strict=True)])
            return embs

        made = {job["job_id"]: emb for (job, _), emb in _per_job(ctx, run, todo, ex)}
        made |= {job["job_id"]: e for (job, _), e in zip(started, cached, strict=True) if e}
        results = [(item, made[item[0]["job_id"]]) for item in started if item[0]["job_id"] in made]
    else:
        helpers = get(first.model).tasks[first.task].helpers
        depth = ctx.models.helper(first.model, helpers[0]) if helpers else None

        def run(items):
            out = []
            for job, spec in items:
                metrics.batch("prior", first.model, 1, ctx.settings.batch_max)
                images = _images(ctx, spec, job.get("inputs") or {}, "prior")
                if spec.task.startswith("controlnet"):
                    out.append(run_controlnet_prior(pipe, depth, spec, images))
                else:
                    out.append(run_prior(pipe, spec, images))
            return out

        results = _per_job(ctx, run, started, ex)
    each, end = (time.perf_counter() - t0) / len(started), time.time()
    done = [job for (job, _), _emb in results]
    ctx.embeddings.put_many({job["job_id"]: emb for (job, _), emb in results})
    timings = {
        job["job_id"]: {
            "prior": each,
            "prior_end_at": end,
            "prior_batch": float(len(started)),
            "prior_cache_hit": float(job["job_id"] in hits),
            "wait_prior": waits.get(job["job_id"], 0.0),
        }
        for job in done
    }
    spent = {usage_field("prior", first.model, ctx.settings.device): each * len(started)}
    ctx.records.moves(campaign_id, [], JobState.PRIOR, (), timings=timings, usage=spent)
    metrics.prior_ran(first, len(started), len(hits), timings, spent)
    # Cancelled while the prior ran, or taken over by a redelivery of this message: enqueue
    # nothing new for it. (Were the cancel to land after this check, the decoder's own move out
    # of "prior" would refuse the job.)
    held = ctx.records.held([job["job_id"] for job in done], JobState.PRIOR, ex.token)
    onward = [job for job, mine in zip(done, held, strict=True) if mine]
    ctx.embeddings.delete_many([j["job_id"] for j in done if j not in onward])
    if onward:
        _send(ctx, keys.DECODER_TASK, campaign_id, onward)
    return {"jobs": [j["job_id"] for j in onward]}


def decoder(
    ctx: WorkerContext, campaign_id: str, jobs: list[dict], ex: Execution | None = None
) -> dict:
    """A message of compatible jobs, with those it gathers from other queued messages (any
    campaign's), rendered ``batch_max`` at a time, each render's images stored while the next
    one runs. A job moves to "decoding" only when its render starts, so a cancel still stops
    the message's later jobs."""
    ex = ex or Execution.of(None, 0)
    with liveness.running(ctx.redis, ex.token, ex.message_id):
        return _decoder(ctx, campaign_id, jobs, ex)


def _decoder(ctx: WorkerContext, campaign_id: str, jobs: list[dict], ex: Execution) -> dict:
    jobs = [{**job, "campaign_id": job.get("campaign_id") or campaign_id} for job in jobs]
    first = JobSpec.model_validate(jobs[0]["spec"])
    taken = _gather(ctx, first, jobs, ex.message_id)
    if taken is None:
        log.info("message %s was gathered into another decoder's batch", ex.message_id)
        return {"jobs": len(jobs), "skipped": True, "gathered": True}
    try:
        finished, complete = _decode(ctx, first, jobs + taken, ex)
    except ServiceUnavailable as e:
        if ex.last_try:  # the adapter fails this message's own jobs, we fail those we took
            for job in taken:
                fail(ctx, job["job_id"], job["campaign_id"], e, ex.token)
        raise  # retried: the same message id gathers the same jobs again
    except BaseException as e:
        # The task adapter fails this message's own jobs; the gathered ones are ours to fail.
        for job in taken:
            fail(ctx, job["job_id"], job["campaign_id"], e, ex.token)
        raise
    for cid in complete:
        ctx.app.send_task(keys.FINALIZE_TASK, kwargs={"campaign_id": cid})
    if taken:
        ctx.gathering.release(ex.message_id)
    return {"jobs": finished} if finished else {"jobs": len(jobs), "skipped": True}


def _gather(ctx: WorkerContext, first: JobSpec, jobs: list[dict], message_id: str | None):
    """Jobs of other offered messages that fill this message's last render (``gather``);
    waits up to ``batch_wait_ms`` for more while it is not full. None: this message was
    gathered by another decoder."""
    room = -len(jobs) % ctx.settings.batch_max
    key = batch_key(first)
    if not message_id or key is None or not room:
        return []
    queue = get(first.model).queue("decoder")
    deadline = time.monotonic() + ctx.settings.batch_wait_ms / 1000
    while True:
        payloads = ctx.gathering.gather(queue, key, message_id, room)
        if payloads is None:
            return None
        taken = [
            {**job, "campaign_id": job.get("campaign_id") or p["campaign_id"]}
            for p in payloads
            for job in p["jobs"]
        ]
        if len(taken) >= room or time.monotonic() >= deadline:
            return taken
        time.sleep(0.005)


def _decode(ctx: WorkerContext, first: JobSpec, jobs: list[dict], ex: Execution):
    """Render and store ``jobs``; returns the finished job ids and the campaigns they finished."""
    two_stage = get(first.model).two_stage
    # A single-stage job (Kandinsky 3) arrives here straight from the queue.
    allowed = (
        (JobState.PRIOR, JobState.DECODING) if two_stage else (JobState.QUEUED, JobState.DECODING)
    )
    pipe = ctx.models.pipeline(first.model, first.task)
    embs: dict[str, object] = {}

    def call(items):
        metrics.batch("decoder", first.model, len(items), ctx.settings.batch_max)
        specs, images = _own_inputs(ctx, items)
        pad = ctx.settings.compile  # few batch shapes for a compiled UNet
        if two_stage:
            rows = [embs[j["job_id"]] for j, _ in items]
            return run_decoder_batch(pipe, specs, rows, images, pad=pad)
        return run_single_batch(pipe, specs, images, pad=pad)

    def run(items):
        if ctx.settings.batch_exact:
            # One call per job: its pixels are its lone render's, whatever shares its message
            # (a batched call moves them by a few /255: kernels round by batch shape).
            return [rows for item in items for rows in call([item])]
        return call(items)

    finishing = []  # one per render, in order: its stores, then its jobs marked done
    # One finisher thread: a render's jobs turn done as soon as their objects are stored
    # (progress and the gallery do not wait for the next render), in the order they ran.
    with (
        ThreadPoolExecutor(max_workers=8) as pool,
        ThreadPoolExecutor(max_workers=8) as puts,
        ThreadPoolExecutor(max_workers=1) as finisher,
    ):
        for part in split(jobs, ctx.settings.batch_max):
            for earlier in finishing:
                if earlier.done():
                    earlier.result()  # a render's stores failed: stop here, as the last would
            chunk = [
                item
                for cid, mine in _by_campaign(part).items()
                for item in _started(ctx, cid, mine, "decoder", JobState.DECODING, allowed, ex)
            ]
            if two_stage and chunk:
                chunk = _with_embeddings(ctx, chunk, embs, ex)
            if not chunk:
                continue
            recs = {r.job_id: r for r in ctx.records.get_many([j["job_id"] for j, _ in chunk]) if r}
            waits = _waits(recs.values(), "prior_end_at" if two_stage else "created_at")
            t0 = time.perf_counter()
            # A line as each render starts and ends: the chaos suite counts executions per job
            # (started, and completed: a killed one only starts) from these.
            log.info("rendering %s", " ".join(job["job_id"] for job, _ in chunk))
            rendered = _per_job(ctx, run, chunk, ex)
            log.info("rendered %s", " ".join(job["job_id"] for (job, _), _p in rendered))
            each = (time.perf_counter() - t0) / len(chunk)
            timings = {
                job["job_id"]: {
                    "decode": each,
                    "decoder_batch": float(len(chunk)),
                    "wait_decoder": waits.get(job["job_id"], 0.0),
                }
                for (job, _), _pictures in rendered
            }
            # PNG encoding and uploads run in threads (zlib and sockets release the GIL) while
            # the next render starts; a job is done only once its objects exist.
            stores = [
                pool.submit(store, ctx, job, spec, pictures, recs, timings, puts)
                for (job, spec), pictures in rendered
            ]
            finishing.append(finisher.submit(finish, ctx, stores, timings, recs, ex.token))
        results = [f.result() for f in finishing]
    finished = [job for ids, _ in results for job in ids]
    return finished, {cid for _, done in results for cid in done}


def _own_inputs(ctx: WorkerContext, items: list) -> tuple[list[JobSpec], dict]:
    """The jobs' specs and decoded inputs, keyed by stored object rather than by reference:
    "job:0" of two campaigns gathered into one render are two pictures, not one."""
    specs, images = [], {}
    for job, spec in items:
        inputs = job.get("inputs") or {}
        own = _images(ctx, spec, inputs, "decoder")
        images.update({inputs[ref]: image for ref, image in own.items()})
        refs = {f: inputs[getattr(spec, f)] for f in ("image", "mask") if getattr(spec, f) in own}
        specs.append(spec.model_copy(update=refs) if refs else spec)
    return specs, images


def _with_embeddings(ctx, chunk, embs: dict, ex: Execution) -> list:
    """The jobs whose embeddings are there (fetched into ``embs``); the others go back to the
    prior (expired, or Redis restarted): recomputed, never borrowed from another job."""
    got = ctx.embeddings.get_many([job["job_id"] for job, _ in chunk])
    embs.update({job["job_id"]: e for (job, _), e in zip(chunk, got, strict=True) if e})
    lost = [job for job, _ in chunk if job["job_id"] not in embs]
    if lost:
        log.warning("%d jobs' embeddings are gone: sending them back to the prior", len(lost))
        for cid, mine in _by_campaign(lost).items():
            back = [(j["job_id"], {}) for j in mine]
            ctx.records.moves(
                cid, back, JobState.QUEUED, (JobState.DECODING,), fence=own_fence(ex.token)
            )
            _send(ctx, keys.PRIOR_TASK, cid, mine)
    return [(j, s) for j, s in chunk if j["job_id"] in embs]


def split(items: list, most: int) -> list[list]:
    """``items`` in even chunks of at most ``most`` (7 by 4 -> 4 + 3, not 4 + 3 by luck)."""
    count = -(-len(items) // max(most, 1))
    size = -(-len(items) // max(count, 1))
    return [items[i : i + size] for i in range(0, len(items), size)]


def finalize(ctx: WorkerContext, campaign_id: str, retries: int) -> dict:
    from farm.finalize import finalize as write

    out = write(ctx.records, ctx.objects, ctx.settings.s3_prefix, campaign_id)
    _announce(ctx, campaign_id, out["results"])
    return out


def _announce(ctx: WorkerContext, campaign_id: str, results_key: str) -> None:
    """The campaign ended: queue its webhook, once per end (a finalize run twice sends one)."""
    from farm import webhooks
    from farm.domain.usage import summary as usage_summary

    info = ctx.records.campaign(campaign_id)
    if not info or not info.get("callback_url") or not info.get("finished_at"):
        return
    info["campaign_id"] = campaign_id
    prices = {"cpu": ctx.settings.price_cpu_hour, "gpu": ctx.settings.price_gpu_hour}
    usage = usage_summary(ctx.records.usage([campaign_id]), prices, ctx.settings.currency)
    payload = webhooks.summary(info, usage, results_key)
    claim = keys.webhook_claim(campaign_id, payload["state"], info["finished_at"])
    if not ctx.redis.set(claim, "1", nx=True, ex=ctx.settings.record_ttl_s):
        return
    ctx.app.send_task(
        keys.WEBHOOK_TASK,
        kwargs={
            "campaign_id": campaign_id,
            "url": info["callback_url"],
            "body": webhooks.encode(payload).decode(),
            "delivery_id": uuid.uuid4().hex,
        },
    )


def webhook(
    ctx: WorkerContext, campaign_id: str, url: str, body: str, delivery_id: str, attempt: int
) -> tuple[bool, str]:
    """One delivery attempt, logged on the campaign. Returns (done, what happened): done is
    False when it is worth trying again (no answer, 5xx, 408, 429)."""
    from farm import webhooks
    from farm.errors import InvalidJob

    info = ctx.records.campaign(campaign_id) or {}
    secret = ctx.settings.webhook_secret
    status, done = None, False
    try:
        if secret is None:
            raise RuntimeError("FARM_WEBHOOK_SECRET is not set: cannot sign")
        webhooks.check_url(url, ctx.settings.webhook_allow_private)
        tenant_secret = webhooks.tenant_secret(secret.get_secret_value(), info.get("tenant", ""))
        status = webhooks.deliver(url, body.encode(), tenant_secret, delivery_id)
        done = status < 500 and status not in (408, 429)
        outcome = f"HTTP {status}"
    except InvalidJob as e:
        done, outcome = True, f"refused: {e}"  # the URL turned internal: never retried
    except Exception as e:  # noqa: BLE001 - no answer: log it, try again later
        outcome = f"{type(e).__name__}: {e}"[:300]
    entry = {
        "delivery_id": delivery_id,
        "attempt": attempt,
        "at": time.time(),
        "status": status,
        "outcome": outcome,
        "ok": status is not None and 200 <= status < 300,
    }
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.rpush(keys.webhook_log(campaign_id), json.dumps(entry))
    pipe.ltrim(keys.webhook_log(campaign_id), -100, -1)
    pipe.expire(keys.webhook_log(campaign_id), ctx.settings.record_ttl_s)
    pipe.execute()
    return done, outcome
