"""What the client returns: a campaign's status and its jobs, as pydantic models.

Attributes are typed (``status.counts``, ``job.seed``), ``model_dump()`` gives the plain dict
(``model_dump_json()`` the JSON), and fields the server adds later are kept, not dropped
(``extra="allow"``). They also read as the dicts the client returned before these models
(``status["counts"]["done"]``, ``job.get("error")``, ``"url" in job``, ``status == {...}``), so
code written against those keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    """A pydantic model that also reads like a dict of its fields (read-only)."""

    model_config = ConfigDict(extra="allow")

    def keys(self) -> list[str]:
        return [*type(self).model_fields, *(self.model_extra or {})]

    def __getitem__(self, key: str) -> Any:
        if key in type(self).model_fields or key in (self.model_extra or {}):
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.keys()

    def values(self) -> list[Any]:
        return [self[k] for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, self[k]) for k in self.keys()]

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # As a dict: its keys (pydantic's own yields (name, value) pairs; dict(record) still
        # works, through keys() and [], and model_dump() is the deep copy).
        return iter(self.keys())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return self.model_dump() == other
        return super().__eq__(other)


class CampaignStatus(Record):
    """A campaign as ``GET /v1/campaigns/{id}`` reports it."""

    id: str
    name: str | None = None
    priority: str = "normal"
    state: str = Field(description="queued, waiting, running, finished or cancelled")
    waiting_reason: str | None = None
    total: int
    counts: dict[str, int] = Field(
        description="jobs per state: queued, prior, decoding, done, failed, cancelled"
    )
    images_per_second: float | None = None
    eta_s: float | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    webhook: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """No job is queued or running: every job is done, failed or cancelled."""
        c = self.counts
        return c.get("done", 0) + c.get("failed", 0) + c.get("cancelled", 0) >= self.total


class JobStatus(Record):
    """One job as ``GET /v1/campaigns/{id}/jobs`` reports it."""

    job_id: str
    state: str = Field(description="queued, prior, decoding, done, failed or cancelled")
    spec: dict[str, Any]
    seed: int | None = None
    s3_key: str | None = None
    s3_keys: list[str] = Field(default_factory=list)
    url: str | None = Field(None, description="presigned GET of the image, 15 minutes")
    urls: list[str] = Field(default_factory=list)
    timings: dict[str, Any] = Field(default_factory=dict)
    error: dict[str, Any] | None = None

    @property
    def prompt(self) -> str | None:
        return self.spec.get("prompt")
