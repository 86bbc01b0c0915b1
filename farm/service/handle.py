"""A handle on one submitted campaign, for the Python API (``Farm.submit`` returns one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from farm import keys
from farm.domain.jobs import JobRecord, JobState
from farm.errors import JobFailed
from farm.progress import wait_for_campaign
from farm.stores.records import RecordStore


class CampaignReader(Protocol):
    """What a handle reads through: the farm's views (``farm.service.views.Views``)."""

    records: RecordStore

    def status(self, campaign_id: str, *, tenant: str = ...) -> dict: ...


@dataclass
class Campaign:
    """A handle on a submitted campaign (Python API)."""

    farm: CampaignReader  # reads its status and records (the Farm's views)
    id: str
    job_ids: Sequence[str]  # computed from the campaign id (``farm.domain.manifest.JobIds``)
    tenant: str = keys.DEFAULT_TENANT

    def records(self) -> list[JobRecord]:
        return [r for r in self.farm.records.get_many(list(self.job_ids)) if r is not None]

    def status(self) -> dict:
        return self.farm.status(self.id, tenant=self.tenant)

    def wait(
        self, timeout: float | None = None, *, progress: bool = False, poll_s: float = 0.25
    ) -> list[JobRecord]:
        """Block until every job is done, failed or cancelled; return the records.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
        """
        wait_for_campaign(
            self.id,
            self.status,
            len(self.job_ids),
            timeout=timeout,
            progress=progress,
            poll_s=poll_s,
        )
        return self.records()

    def results(self, *, raise_on_failure: bool = False) -> list[JobRecord]:
        recs = self.records()
        if raise_on_failure:
            for r in recs:
                if r.state == JobState.FAILED:
                    err = r.error or {}
                    raise JobFailed(r.job_id, err.get("type", "?"), err.get("message", ""))
        return recs
