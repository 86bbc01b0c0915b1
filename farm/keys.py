"""Every Redis key and S3 key the farm writes, in one place."""

from __future__ import annotations

PREFIX = "farm:"
PRIOR_QUEUE = "prior"
DECODER_QUEUE = "decoder"
PRIOR_TASK = "farm.prior"
DECODER_TASK = "farm.decoder"


def job(job_id: str) -> str:
    """Hash: the job's record (state, spec, result, error, timings)."""
    return f"{PREFIX}job:{job_id}"


def embeddings(job_id: str) -> str:
    """String: the prior's output for one job, safetensors bytes, with a TTL."""
    return f"{PREFIX}emb:{job_id}"


def attempts(job_id: str, stage: str) -> str:
    """Counter: deliveries of one stage of one job (poison-job guard)."""
    return f"{PREFIX}attempts:{job_id}:{stage}"


def campaign_jobs(campaign_id: str) -> str:
    """List: the campaign's job ids in submission order."""
    return f"{PREFIX}campaign:{campaign_id}:jobs"


def image_object(prefix: str, campaign_id: str, job_id: str) -> str:
    """S3 key of a job's PNG: deterministic, so a second execution overwrites the same object."""
    return f"{prefix}/{campaign_id}/{job_id}.png"


def record_object(prefix: str, campaign_id: str, job_id: str) -> str:
    """S3 key of a job's result record (JSON), written beside its image."""
    return f"{prefix}/{campaign_id}/{job_id}.json"
