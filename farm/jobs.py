"""The domain: job specs, their validation, job states and records. No IO here.

A job is one picture: a prompt and the parameters of both stages. The prior stage turns the
prompt into image embeddings; the decoder stage turns them into a PNG. Seeds left unset are drawn
at submission and recorded, so every picture can be reproduced.
"""

from __future__ import annotations

import enum
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from farm.errors import InvalidJob

SIZE_MULTIPLE = 64  # Kandinsky's MoVQ downsamples by 8 and the pipelines round to 8 * 8
MAX_SIDE = 2048
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**63 - 1


_TYPE_TAG = re.compile(r"^(int|str|float|bool|[a-z_]+\[.*\]|function-.*)$")


def field_path(loc: tuple) -> str:
    """A pydantic error location as a dotted field name, without union type tags or "body"."""
    parts = [str(p) for p in loc if p != "body" and not _TYPE_TAG.match(str(p))]
    return ".".join(parts)


class JobSpec(BaseModel):
    """What to render. Defaults are the diffusers pipelines' own defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    prior_guidance_scale: float = Field(4.0, ge=0, le=100)
    prior_num_inference_steps: int = Field(25, ge=1, le=200)
    guidance_scale: float = Field(4.0, ge=0, le=100)
    num_inference_steps: int = Field(100, ge=1, le=500)
    height: int = Field(512, ge=SIZE_MULTIPLE, le=MAX_SIDE)
    width: int = Field(512, ge=SIZE_MULTIPLE, le=MAX_SIDE)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @field_validator("height", "width")
    @classmethod
    def _multiple(cls, v: int) -> int:
        if v % SIZE_MULTIPLE:
            raise ValueError(f"must be a multiple of {SIZE_MULTIPLE} (got {v})")
        return v

    @classmethod
    def parse(cls, data: Any, *, index: int | None = None) -> JobSpec:
        """Validate raw input into a spec.

        Raises:
            InvalidJob: naming the first offending field and its limit.
        """
        if isinstance(data, JobSpec):
            return data
        if not isinstance(data, dict):
            raise InvalidJob("job", f"must be an object, got {type(data).__name__}", index=index)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            name = field_path(err["loc"]) or "job"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown field (allowed: {', '.join(cls.model_fields)})"
            raise InvalidJob(name, msg, index=index) from None

    def with_seed(self) -> JobSpec:
        """This spec with a seed drawn if none was given."""
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(2**32)})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


class JobState(enum.StrEnum):
    QUEUED = "queued"
    PRIOR = "prior"
    DECODING = "decoding"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


def new_id() -> str:
    """A job or campaign id: short, URL- and S3-safe, sortable enough to read."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class JobRecord:
    """What the farm knows of one job; the client reads these."""

    job_id: str
    campaign_id: str
    state: JobState
    spec: JobSpec
    s3_key: str | None = None
    error: dict[str, str] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def seed(self) -> int | None:
        return self.spec.seed
