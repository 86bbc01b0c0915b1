"""Campaigns: an explicit list of jobs, or a grid (prompts x seeds x parameter lists). No IO.

A grid expands to the cross product, prompt-major, then parameter combinations, then seeds:

    {"grid": {"prompts": ["a cat", "a dog"], "seeds": [1, 2],
              "params": {"guidance_scale": [3, 5]}},
     "defaults": {"height": 768, "width": 768}}          -> 2 x 2 x 2 = 8 jobs

``seeds`` may also be a count: that many seeds are drawn and recorded.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from farm.domain.jobs import MAX_PROMPT_CHARS, MAX_SEED, JobSpec, field_path, with_defaults
from farm.errors import InvalidJob

MAX_JOBS = 100_000  # an explicit job list (it travels in one request body)
MAX_GRID_JOBS = 1_000_000  # a grid: never expanded whole, fed to the queues as they drain
EXHAUSTIVE = 10_000  # parameter combinations a grid's submission checks one by one
SPEC_FIELDS = tuple(JobSpec.model_fields)
# Parameters that no rule ties to another field (only their own bounds): a grid checks each of
# their values once, and every combination of the others.
INDEPENDENT = ("guidance_scale", "prior_guidance_scale", "negative_prompt", "scheduler")


class Grid(BaseModel):
    """Prompts x seeds x parameter lists. Its structure is checked here, on every path; its
    values (as job specs) by ``plan_grid``."""

    model_config = ConfigDict(extra="forbid")

    prompts: list[str] = Field(min_length=1)
    seeds: list[int] | int = 1
    params: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("seeds", mode="before")
    @classmethod
    def _json_number(cls, value: object) -> object:
        # "3" is not a count, nor true a seed (pydantic's lax mode would take both).
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, str | bool) for v in items):
            raise ValueError("not a valid count or list of integer seeds")
        return value

    @model_validator(mode="after")
    def _structure(self) -> Grid:
        for name, values in self.params.items():
            if name not in SPEC_FIELDS or name in ("prompt", "seed"):
                raise ValueError(
                    f"grid.params.{name}|unknown or not a parameter (prompts and seeds have their "
                    "own lists)"
                )
            if not values:
                raise ValueError(f"grid.params.{name}|must hold at least one value")
        if isinstance(self.seeds, int):
            if not 1 <= self.seeds <= MAX_GRID_JOBS:
                raise ValueError(f"grid.seeds|a count must be between 1 and {MAX_GRID_JOBS}")
        elif not self.seeds:
            raise ValueError("grid.seeds|must hold at least one seed")
        else:
            for seed in self.seeds:
                if not 0 <= seed <= MAX_SEED:
                    raise ValueError(f"grid.seeds|must be between 0 and {MAX_SEED} (got {seed})")
        return self


class CampaignSpec(BaseModel):
    """What a client submits."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200)
    jobs: list[dict[str, Any]] | None = None
    grid: Grid | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)
    # Orders feeding against the tenant's other campaigns (and everyone's) in the same queues;
    # a running job is never preempted.
    priority: Literal["high", "normal", "low"] = "normal"
    # POSTed a signed summary when the campaign ends (farm.webhooks); checked at submission.
    callback_url: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _structure(self) -> CampaignSpec:
        # Here, not in one of the paths after it (the job list's expand, a grid's plan): every
        # submission meets these before anything is written.
        if (self.jobs is None) == (self.grid is None):
            got = "both" if self.jobs is not None else "neither"
            raise ValueError(
                f"campaign|give exactly one of 'jobs' (a list of jobs) or 'grid' (got {got})"
            )
        if self.jobs is not None and not self.jobs:
            raise ValueError("jobs|must hold at least one job")
        if self.jobs is not None and len(self.jobs) > MAX_JOBS:
            raise ValueError(f"jobs|at most {MAX_JOBS} jobs per campaign (got {len(self.jobs)})")
        for name in self.defaults:
            if name not in SPEC_FIELDS:
                raise ValueError(
                    f"defaults.{name}|unknown field (allowed: {', '.join(SPEC_FIELDS)})"
                )
        return self

    @classmethod
    def parse(cls, data: Any) -> CampaignSpec:
        bad = _bad_text(data.model_dump() if isinstance(data, CampaignSpec) else data, "")
        if bad is not None:
            raise InvalidJob(bad or "campaign", "is not valid Unicode text (a lone surrogate)")
        if isinstance(data, CampaignSpec):
            return data
        if not isinstance(data, dict):
            raise InvalidJob("campaign", f"must be an object, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            name = field_path(err["loc"]) or "campaign"
            msg = err["msg"].removeprefix("Value error, ")
            if (
                "|" in msg
                and err["type"] == "value_error"
                and field_path(err["loc"])
                in (
                    "",
                    "grid",
                )
            ):
                name, msg = msg.split("|", 1)
            if err["type"] == "extra_forbidden":
                msg = f"unknown field (allowed: {', '.join(cls.model_fields)})"
            raise InvalidJob(name, msg) from None

    def expand(self) -> list[JobSpec]:
        """Every job of the campaign, validated, with seeds drawn where none were given.

        Raises:
            InvalidJob: naming the field where the bad value came from and its limit.
        """
        if self.jobs is not None:
            return [
                JobSpec.parse(
                    with_defaults(self.defaults, job) if isinstance(job, dict) else job, index=i
                ).with_seed()
                for i, job in enumerate(self.jobs)
            ]
        assert self.grid is not None  # _structure: a campaign is a job list or a grid
        return self._expand_grid(self.grid)

    def _expand_grid(self, grid: Grid) -> list[JobSpec]:
        """Every job of a grid, in the order the feeder computes them (``Manifest``). For small
        grids and tests only: submission never expands a grid."""
        from farm.domain.manifest import Manifest

        total, seeds, _ = plan_grid(self)
        manifest = Manifest(
            campaign_id="expand",
            tenant="expand",
            prefix="expand",
            total=total,
            spec=self.model_dump(mode="json"),
            created_at=0.0,
            seeds=seeds,
        )
        return [manifest.grid_spec(i) for i in range(total)]


def plan_grid(campaign: CampaignSpec) -> tuple[int, list[int], list[JobSpec]]:
    """A grid's size and seeds, every value checked, without expanding it.

    Returns (total, seeds, representative specs: each prompt, each seed and each parameter
    combination once, for the checks that need specs, such as enabled families and inputs).

    Raises:
        InvalidJob: naming the field where the bad value came from and its limit.
    """
    grid = campaign.grid
    if grid is None:
        raise ValueError("plan_grid: the campaign has a job list, not a grid")
    total = len(grid.prompts) * _seed_count(grid)
    combos = 1
    for values in grid.params.values():
        combos *= len(values)
    total *= combos
    if total > MAX_GRID_JOBS:
        raise InvalidJob("grid", f"expands to {total} jobs; at most {MAX_GRID_JOBS} per campaign")
    seeds = (
        [secrets.randbelow(2**32) for _ in range(grid.seeds)]
        if isinstance(grid.seeds, int)
        else list(grid.seeds)
    )
    names = list(grid.params)
    first = {name: grid.params[name][0] for name in names}
    # Every combination of the parameters that rules tie together (model, task, sizes, steps,
    # strengths, inputs) is checked: one that only fails with another would otherwise pass here
    # and fail when the feeder computes that job. Independent ones are checked value by value.
    coupled = names if combos <= EXHAUSTIVE else [n for n in names if n not in INDEPENDENT]
    count = 1
    for name in coupled:
        count *= len(grid.params[name])
    if count > EXHAUSTIVE:
        raise InvalidJob(
            "grid.params",
            f"{count} combinations of {', '.join(coupled)}; at most {EXHAUSTIVE} (each is "
            "checked): split the campaign, or vary fewer of them together",
        )
    variants = [
        {**first, **dict(zip(coupled, c, strict=True))}
        for c in itertools.product(*(grid.params[n] for n in coupled))
    ]
    variants += [
        {**first, name: value}
        for name in names
        if name not in coupled
        for value in grid.params[name][1:]
    ]
    base = {"prompt": grid.prompts[0], "seed": seeds[0]}
    rows = [{**base, **v} for v in variants]
    # Prompts are checked as values (a full spec each would cost seconds per million): a long
    # one fails anywhere; a blank one passes for interpolation only, so it meets every variant.
    long = next((p for p in grid.prompts if len(p) > MAX_PROMPT_CHARS), None)
    blank = next((p for p in grid.prompts if not p.strip()), None)
    rows += [{**base, **first, "prompt": long}] if long is not None else []
    rows += [{**base, **v, "prompt": blank} for v in variants] if blank is not None else []
    rows += [{**base, **first, "prompt": p} for p in grid.prompts[1:100]]
    out = []
    for data in rows:
        try:
            spec = JobSpec.parse(with_defaults(campaign.defaults, data))
        except InvalidJob as e:
            raise InvalidJob(_grid_origin(e.field, names), e.reason) from None
        if spec.parent_indexes():
            raise InvalidJob(
                "grid", "a grid cannot read other jobs' images (job:<n>); use a job list"
            )
        out.append(spec)
    return total, seeds, out


def _bad_text(value: Any, path: str) -> str | None:
    """The path of the first string (or key) that cannot be encoded as UTF-8, else None: JSON
    allows lone surrogates, and they would fail later, in Redis, S3 or a response."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _bad_text(key, "") is not None:
                return path or "campaign"
            found = _bad_text(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found = _bad_text(item, f"{path}[{n}]")
            if found is not None:
                return found
    return None


def _seed_count(grid: Grid) -> int:
    return grid.seeds if isinstance(grid.seeds, int) else len(grid.seeds)


def _grid_origin(field: str, param_names: list[str]) -> str:
    """Where in a grid request a bad value came from."""
    if field == "prompt":
        return "grid.prompts"
    if field == "seed":
        return "grid.seeds"
    if field in param_names:
        return f"grid.params.{field}"
    return f"defaults.{field}"
