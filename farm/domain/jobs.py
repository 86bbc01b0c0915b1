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
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from farm import families, keys
from farm.errors import InvalidJob

# An input image: an upload by content hash, or "job:<n>", the first image of the campaign's n-th
# job (a chained job runs when that job is done, without the client in the loop).
INPUT_REF = r"^(in:[0-9a-f]{64}|job:\d{1,6})$"
Scheduler = Literal["default", "ddim", "ddpm"]
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**63 - 1


# The inputs each task needs and those it takes (any other is refused): read by the API's schema.
NEEDS = {
    "img2img": ("image",),
    "inpaint": ("image", "mask"),
    "interpolate": ("interpolate",),
    "controlnet-depth-img2img": ("image",),
}
TAKES = {
    **NEEDS,
    "controlnet-depth": ("image", "hint"),  # at least one of them
    "controlnet-depth-img2img": ("image", "hint"),
}

INPUT_FIELDS = ("image", "mask", "hint", "interpolate")


def with_defaults(defaults: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """A job's own fields over its campaign's defaults. A default input the job's task does not
    read (a default ``mask`` on a controlnet job of a grid over tasks) is left out: a default
    applies where it fits. An input the job names itself for a task that does not read it is
    still refused."""
    task = own.get("task", defaults.get("task", "text2img"))
    takes = TAKES.get(task, ()) if isinstance(task, str) else INPUT_FIELDS
    kept = {k: v for k, v in defaults.items() if k not in INPUT_FIELDS or k in takes}
    return {**kept, **own}


# Fields whose bounds are the family's (``bounds``): they carry no bound of their own, so that a
# refusal names the limit that applies to the job, never a wider one.
BOUNDED = ("height", "width", "num_inference_steps", "prior_num_inference_steps")
NUMBERS = (
    *BOUNDED,
    "seed",
    "prior_guidance_scale",
    "guidance_scale",
    "strength",
    "prior_strength",
    "num_images_per_prompt",
)


def bounds(family: families.Family) -> dict[str, tuple[int, int]]:
    """Each family-bounded field's inclusive (lowest, highest) for one family: what a refusal
    names and what `farm limits` prints.

    A family without a prior does not use ``prior_num_inference_steps``; it takes the bounds of
    the families that have one (a grid may mix families under one value). Those start at 2:
    diffusers' UnCLIP scheduler divides by (steps - 1), so one prior step always fails.
    """
    lim = families.Limits() if not family.limits.min_prior_steps else family.limits
    return {
        "height": (family.limits.min_side, family.limits.max_side),
        "width": (family.limits.min_side, family.limits.max_side),
        "num_inference_steps": (1, family.limits.max_steps),
        "prior_num_inference_steps": (lim.min_prior_steps, lim.max_prior_steps),
    }


def _shown(value: int) -> str:
    # A refusal quotes the value, but not a thousand digits of it.
    return str(value) if abs(value) < 10**15 else f"a {len(str(abs(value)))}-digit number"


_TYPE_TAG = re.compile(r"^(int|str|float|bool|[a-z_]+\[.*\]|function-.*)$")


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a dotted field name, without union type tags or "body"."""
    parts = [str(p) for p in loc if p != "body" and not _TYPE_TAG.match(str(p))]
    return ".".join(parts)


class InterpolationItem(BaseModel):
    """One ingredient of an interpolation: a text or an uploaded image, with its weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS)
    image: str | None = Field(None, pattern=INPUT_REF)
    weight: float = Field(gt=0, le=10)

    @field_validator("weight", mode="before")
    @classmethod
    def _json_number(cls, value: object) -> object:
        if isinstance(value, str | bool):
            raise ValueError(f"must be a number, not {type(value).__name__} {value!r}"[:120])
        return value

    @model_validator(mode="after")
    def _one_of(self) -> InterpolationItem:
        if (self.text is None) == (self.image is None):
            raise ValueError("give exactly one of text or image")
        return self


class JobSpec(BaseModel):
    """What to render. Defaults are the diffusers pipelines' own defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = families.DEFAULT_FAMILY
    task: str = "text2img"  # checked against the family registry
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    prior_guidance_scale: float = Field(4.0, ge=0, le=100)
    prior_num_inference_steps: int = 25  # bounds: the family's (``bounds``)
    guidance_scale: float = Field(4.0, ge=0, le=100)
    num_inference_steps: int = 100
    height: int = 512
    width: int = 512
    image: str | None = Field(None, pattern=INPUT_REF, description="img2img / inpaint input")
    mask: str | None = Field(None, pattern=INPUT_REF, description="inpaint: white = repaint")
    strength: float = Field(0.3, gt=0, le=1, description="img2img: how much to change")
    hint: str | None = Field(None, pattern=INPUT_REF, description="ControlNet: a depth map")
    prior_strength: float = Field(0.3, gt=0, le=1, description="ControlNet img2img: prior strength")
    interpolate: list[InterpolationItem] | None = Field(None, min_length=2, max_length=16)
    scheduler: Scheduler = "default"
    num_images_per_prompt: int = Field(1, ge=1, le=8, description="images from one job, one batch")

    @field_validator(*NUMBERS, mode="before")
    @classmethod
    def _json_number(cls, value: object) -> object:
        # JSON's types, as the API's schema says: "64" and true are not numbers (pydantic's lax
        # mode would take them); 64.0 is an integer, as in JSON Schema.
        if isinstance(value, str | bool):
            raise ValueError(f"must be a number, not {type(value).__name__} {value!r}"[:120])
        return value

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, data: object) -> object:
        # Fields left out take the chosen model's own pipeline defaults (Kandinsky 3: 1024 px,
        # 25 steps, guidance 3), not Kandinsky 2.2's.
        if isinstance(data, dict):
            model, task = data.get("model", families.DEFAULT_FAMILY), data.get("task", "text2img")
            # Only names are looked up: {"task": {}} is refused by the field check, not a 500.
            family = families.REGISTRY.get(model) if isinstance(model, str) else None
            if family is not None and isinstance(task, str):
                data = {**family.defaults_for(task), **data}
        return data

    @model_validator(mode="after")
    def _task_inputs(self) -> JobSpec:
        # Each error names the field it is about: raised as (field, message) pairs.
        if self.model not in families.REGISTRY:
            raise ValueError(
                f"model|unknown model {self.model!r}; known: {', '.join(families.REGISTRY)}"
            )
        if self.task not in families.tasks():
            raise ValueError(
                f"task|unknown task {self.task!r}; known: {', '.join(families.tasks())}"
            )
        try:
            family = families.check(self.model, self.task)
        except ValueError as e:
            raise ValueError(f"model|{e}") from None
        limits = family.limits
        for name, (lowest, highest) in bounds(family).items():
            value = getattr(self, name)
            if lowest <= value <= highest:
                continue
            if name in ("height", "width"):
                rule = f"between {lowest} and {highest}"
            else:
                rule = f"at least {lowest}" if value < lowest else f"at most {highest}"
            unused = ", which has no prior and does not use it" if name.startswith("prior") else ""
            unused = unused if not limits.min_prior_steps else ""
            raise ValueError(
                f"{name}|must be {rule} for {self.model}{unused} (got {_shown(value)})"
            )
        for name in ("height", "width"):
            if getattr(self, name) % limits.size_multiple:
                # Kandinsky's MoVQ and the SD VAE downsample by 8; Kandinsky also rounds to 64.
                raise ValueError(
                    f"{name}|must be a multiple of {limits.size_multiple} for {self.model} "
                    f"(got {getattr(self, name)})"
                )
        for check in family.rules:
            broken = check(self)
            if broken:
                raise ValueError(f"{broken[0]}|{broken[1]}")
        needs, takes = NEEDS, TAKES
        for name in needs.get(self.task, ()):
            if getattr(self, name) is None:
                raise ValueError(f"{name}|required for task {self.task}")
        if self.task == "controlnet-depth" and self.image is None and self.hint is None:
            raise ValueError(
                "image|controlnet-depth needs an image to estimate depth from, or a hint"
            )
        for name in ("image", "mask", "interpolate", "hint"):
            if getattr(self, name) is not None and name not in takes.get(self.task, ()):
                raise ValueError(f"{name}|not used by task {self.task}")
        if self.task.endswith("img2img") and int(self.num_inference_steps * self.strength) < 1:
            # The pipelines run int(steps * strength) steps: zero would crash mid-job.
            raise ValueError(
                f"strength|{self.strength} x num_inference_steps {self.num_inference_steps} "
                "leaves no denoising step; raise either"
            )
        if (
            self.task == "controlnet-depth-img2img"
            and int(self.prior_num_inference_steps * self.prior_strength) < 1
        ):
            # The Emb2Emb prior runs int(steps * strength) steps: zero returns no embedding.
            raise ValueError(
                f"prior_strength|{self.prior_strength} x prior_num_inference_steps "
                f"{self.prior_num_inference_steps} leaves no prior step; raise either"
            )
        if self.task != "interpolate" and not self.prompt.strip():
            raise ValueError("prompt|must not be blank" if self.prompt else "prompt|required")
        return self

    def all_refs(self) -> list[str]:
        """Every input image this job reads: uploads and other jobs' outputs."""
        refs = [r for r in (self.image, self.mask, self.hint) if r]
        refs += [i.image for i in self.interpolate or () if i.image]
        return refs

    def input_refs(self) -> list[str]:
        """The uploaded inputs this job reads."""
        return [r for r in self.all_refs() if r.startswith("in:")]

    def parent_indexes(self) -> list[int]:
        """The campaign positions of the jobs whose images this job reads."""
        return sorted({int(r[4:]) for r in self.all_refs() if r.startswith("job:")})

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
            if "|" in msg and err["type"] == "value_error" and not err["loc"]:
                name, msg = msg.split("|", 1)
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


def is_id(value: str) -> bool:
    """Whether ``value`` can be a campaign id (checked before it touches Redis or S3: an id is
    part of keys and object paths, so ``..`` or ``a/b`` must never reach them)."""
    return (
        isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value)
    )


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
    created_at: float | None = None
    updated_at: float | None = None  # its last state move

    @property
    def seed(self) -> int | None:
        return self.spec.seed

    @property
    def s3_keys(self) -> list[str]:
        """Every image of the job (several with num_images_per_prompt)."""
        return keys.image_keys(self.s3_key, self.spec.num_images_per_prompt) if self.s3_key else []
