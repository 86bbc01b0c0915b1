"""Every Redis key and S3 key the farm writes, in one place."""

from __future__ import annotations

PREFIX = "farm:"
PRIOR_TASK = "farm.prior"
DECODER_TASK = "farm.decoder"
WEBHOOK_TASK = "farm.webhook"
FINALIZE_TASK = "farm.finalize"
DEFAULT_TENANT = "default"


def job(job_id: str) -> str:
    """Hash: the job's record (campaign, state, spec, result, error, timings)."""
    return f"{PREFIX}job:{job_id}"


def embeddings(job_id: str) -> str:
    """String: the prior's output for one job, safetensors bytes, with a TTL."""
    return f"{PREFIX}emb:{job_id}"


def prior_cache(digest: str) -> str:
    """String: a prior result by what determines it (family, prompts, seed, settings), with a TTL."""
    return f"{PREFIX}prior-cache:{digest}"


def attempts(job_id: str, stage: str) -> str:
    """Counter: deliveries of one stage of one job (poison-job guard)."""
    return f"{PREFIX}attempts:{job_id}:{stage}"


def worker_loaded(pid: int) -> str:
    """String: set by a worker (by its main process id) once its pipelines are loaded."""
    return f"{PREFIX}worker-loaded:{pid}"


FEED_CAMPAIGNS = f"{PREFIX}feed:campaigns"  # ZSet: campaigns the feeder looks after (by age)
FEED_EPOCH = f"{PREFIX}feed:epoch"  # String: present while Redis holds the feeder's state
INFLIGHT = f"{PREFIX}inflight"  # Set: record keys of jobs fed and not ended (the reconciler's)


def feeding(campaign_id: str) -> str:
    """Hash: ranges claimed by a feeder and not yet published (start -> "stop:time")."""
    return f"{PREFIX}campaign:{campaign_id}:feeding"


def present(campaign_id: str) -> str:
    """Bitmap: jobs whose images were found in S3 when Redis was rebuilt (resume)."""
    return f"{PREFIX}campaign:{campaign_id}:present"


def backlog_list(queue: str) -> str:
    """List whose length is a family queue's backlog in messages (KEDA's redis scaler)."""
    return f"{PREFIX}backlog:{queue}"


WORKERS = f"{PREFIX}workers"  # Set: node names that have written a heartbeat


def worker(node: str) -> str:
    """Hash: a worker's heartbeat (stage, families, queues) and its pool processes' reports
    (resident parts, loads, memory); expires unless refreshed."""
    return f"{PREFIX}worker:{node}"


def campaign_families(campaign_id: str) -> str:
    """Set: the model families a campaign's jobs use (to say which queue it waits on)."""
    return f"{PREFIX}campaign:{campaign_id}:families"


def children(job_id: str) -> str:
    """Set: jobs waiting for this job's image (chained jobs)."""
    return f"{PREFIX}children:{job_id}"


def pending(job_id: str) -> str:
    """String: a chained job's message (JSON), held until every job it reads is done."""
    return f"{PREFIX}pending:{job_id}"


def offer(message_id: str) -> str:
    """String: an offered decoder message's payload (claimable by another decoder)."""
    return f"{PREFIX}offer:{message_id}"


def claimed(message_id: str) -> str:
    """String: the id of the message whose decoder claimed this one."""
    return f"{PREFIX}claimed:{message_id}"


def claims(message_id: str) -> str:
    """List: the payloads this message's decoder claimed from others (given back on redelivery)."""
    return f"{PREFIX}claims:{message_id}"


def open_messages(queue: str, digest: str) -> str:
    """List: offered messages of one queue and batch key, oldest first."""
    return f"{PREFIX}open:{queue}:{digest}"


def campaign(campaign_id: str) -> str:
    """Hash: the campaign's tenant, size, times, cancel flag."""
    return f"{PREFIX}campaign:{campaign_id}"


def campaign_usage(campaign_id: str) -> str:
    """Hash: ``images`` and compute seconds per ``<stage>.<family>.<cpu|gpu>``."""
    return f"{PREFIX}campaign:{campaign_id}:usage"


def webhook_log(campaign_id: str) -> str:
    """List: the campaign's webhook delivery attempts (JSON each)."""
    return f"{PREFIX}campaign:{campaign_id}:webhook"


def webhook_claim(campaign_id: str, state: str, finished_at: str) -> str:
    """String: set once per end of a campaign, so each end is delivered once."""
    return f"{PREFIX}campaign:{campaign_id}:webhook:{state}:{finished_at}"


def campaign_counts(campaign_id: str) -> str:
    """Hash: jobs per state, kept by the same script that moves a job between states."""
    return f"{PREFIX}campaign:{campaign_id}:counts"


def tenant_campaigns(tenant: str) -> str:
    """Sorted set: a tenant's campaign ids by creation time."""
    return f"{PREFIX}tenant:{tenant}:campaigns"


def idempotency(tenant: str, key: str) -> str:
    """String: the campaign id created for a tenant's Idempotency-Key."""
    return f"{PREFIX}idem:{tenant}:{key}"


def campaign_prefix(prefix: str, tenant: str, campaign_id: str) -> str:
    """S3 folder of one campaign: everything it writes lives below it."""
    return f"{prefix}/{tenant}/{campaign_id}"


def image_object(prefix: str, tenant: str, campaign_id: str, job_id: str) -> str:
    """S3 key of a job's PNG: deterministic, so a second execution overwrites the same object."""
    return f"{campaign_prefix(prefix, tenant, campaign_id)}/{job_id}.png"


def image_keys(image_key: str, count: int) -> list[str]:
    """Every image of a job: its key alone, or ``<job>-<i>.png`` for several images per prompt."""
    if count == 1:
        return [image_key]
    base = image_key.removesuffix(".png")
    return [f"{base}-{i}.png" for i in range(count)]


def record_object(image_key: str) -> str:
    """S3 key of a job's result record (JSON), beside its image."""
    return image_key.removesuffix(".png") + ".json"


def manifest_chunk(prefix: str, tenant: str, campaign_id: str, n: int) -> str:
    """S3 key of chunk ``n`` of an explicit job list's manifest (JSON lines of specs)."""
    return f"{campaign_prefix(prefix, tenant, campaign_id)}/manifest-{n:05d}.jsonl"


def active_marker(prefix: str, campaign_id: str) -> str:
    """S3 key that marks a campaign not finished yet (the feeder finds it after Redis loss)."""
    return f"{prefix}/_active/{campaign_id}"


def manifest_object(prefix: str, tenant: str, campaign_id: str) -> str:
    """S3 key of the campaign manifest (spec + expanded jobs): the source of truth."""
    return f"{campaign_prefix(prefix, tenant, campaign_id)}/manifest.json"


def results_object(prefix: str, tenant: str, campaign_id: str) -> str:
    return f"{campaign_prefix(prefix, tenant, campaign_id)}/results.jsonl"


def contact_sheet_object(prefix: str, tenant: str, campaign_id: str) -> str:
    return f"{campaign_prefix(prefix, tenant, campaign_id)}/contact_sheet.png"


def input_object(prefix: str, tenant: str, ref: str) -> str:
    """S3 key of an uploaded input (``in:<sha256>``), under the tenant's prefix."""
    return f"{prefix}/{tenant}/inputs/{ref.removeprefix('in:')}"


def running(execution: str) -> str:
    """String with a TTL: this execution of a task is alive (its worker process refreshes it)."""
    return f"{PREFIX}running:{execution}"


def running_message(message_id: str) -> str:
    """String with a TTL: an execution of this message is alive (its worker process refreshes it)."""
    return f"{PREFIX}running-message:{message_id}"


# Hash: kombu delivery tag -> "<holder>|<received at>": which worker process holds the message
# (``workers.holding``); the reconciler drops an entry once kombu's ``unacked`` no longer has it.
HOLDERS = f"{PREFIX}holders"
# Hash: holder -> when a reconciler first found it silent (Redis time); cleared when it speaks.
HOLDERS_SILENT = f"{PREFIX}holders:silent"


def holder(holder_id: str) -> str:
    """String with a TTL: this worker process (``<node>/<boot id>``) is alive and holds messages."""
    return f"{PREFIX}holder:{holder_id}"
