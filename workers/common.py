"""What every stage's handler shares: an execution's fencing token, failing a job, moving a
message's jobs into a stage, fetching their inputs, running a batch job by job when it fails, and
sending the next hop.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from farm import fleet, keys, metrics
from farm.chains import release_children
from farm.domain.jobs import JobSpec, JobState
from farm.errors import PoisonJob, ServiceUnavailable
from farm.families import get
from farm.stores.gather import offer_for
from farm.stores.records import ACTIVE, own_fence, start_fence
from workers.context import WorkerContext

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


def split(items: list, most: int) -> list[list]:
    """``items`` in even chunks of at most ``most`` (7 by 4 -> 4 + 3, not 4 + 3 by luck)."""
    count = -(-len(items) // max(most, 1))
    size = -(-len(items) // max(count, 1))
    return [items[i : i + size] for i in range(0, len(items), size)]
