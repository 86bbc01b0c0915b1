"""A campaign's durable manifest: what job ``i`` is, without holding the campaign. No IO.

A campaign is never expanded whole. Its manifest is a header (the campaign spec, its total, the
seeds drawn for it) plus, for an explicit job list, chunks of ``CHUNK`` jobs; job ``i`` of a
grid is computed from the header alone (prompt-major, then parameter combinations, then seeds,
the order ``itertools.product`` gives). Job ids are ``<campaign id>-<i>``: a job's id, image key
and spec follow from the manifest, so nothing per job has to live anywhere until it is fed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from farm import keys
from farm.domain.jobs import JobSpec, with_defaults

CHUNK = 10_000  # jobs per manifest chunk object of an explicit job list


def job_id(campaign_id: str, index: int) -> str:
    return f"{campaign_id}-{index}"


def job_index(job_id_: str) -> int:
    return int(job_id_.rsplit("-", 1)[1])


class JobIds(Sequence[str]):
    """The ids of a campaign's jobs, computed (a million ids cost nothing)."""

    def __init__(self, campaign_id: str, total: int):
        self.campaign_id, self.total = campaign_id, total

    def __len__(self) -> int:
        return self.total

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [job_id(self.campaign_id, n) for n in range(*i.indices(self.total))]
        if i < 0:
            i += self.total
        if not 0 <= i < self.total:
            raise IndexError(i)
        return job_id(self.campaign_id, i)


@dataclass
class Manifest:
    """The header of a campaign's manifest, and job ``i`` from it (and its chunks)."""

    campaign_id: str
    tenant: str
    prefix: str
    total: int
    spec: dict[str, Any]  # the campaign spec as submitted (CampaignSpec, JSON mode)
    created_at: float
    seeds: list[int] | None = None  # a grid's seeds (drawn when the spec gave a count)
    chunks: int = 0  # explicit job lists: how many chunk objects
    # A grid's parameter names and how many values each has, worked out once.
    _grid_axes: tuple[list[str], list[int]] | None = field(default=None, repr=False)

    def header(self) -> dict[str, Any]:
        return {
            "version": 2,
            "campaign_id": self.campaign_id,
            "tenant": self.tenant,
            "prefix": self.prefix,
            "name": self.spec.get("name"),
            "priority": self.spec.get("priority") or "normal",
            "created_at": self.created_at,
            "total": self.total,
            "spec": self.spec,
            "seeds": self.seeds,
            "chunks": self.chunks,
            "chunk_size": CHUNK,
        }

    @classmethod
    def from_header(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            campaign_id=data["campaign_id"],
            tenant=data["tenant"],
            prefix=data.get("prefix", "renders"),
            total=int(data["total"]),
            spec=data["spec"],
            created_at=float(data["created_at"]),
            seeds=data.get("seeds"),
            chunks=int(data.get("chunks") or 0),
        )

    @property
    def priority(self) -> str:
        return self.spec.get("priority") or "normal"

    @property
    def is_grid(self) -> bool:
        return self.spec.get("grid") is not None

    def job_id(self, index: int) -> str:
        return job_id(self.campaign_id, index)

    def key(self, index: int) -> str:
        return keys.image_object(self.prefix, self.tenant, self.campaign_id, self.job_id(index))

    def grid_spec(self, index: int) -> JobSpec:
        """Job ``index`` of a grid (validated again; the submission checked every value)."""
        grid = self.spec["grid"]
        if self._grid_axes is None:
            names = list(grid.get("params") or {})
            self._grid_axes = (names, [len(grid["params"][n]) for n in names])
        names, sizes = self._grid_axes
        seeds = self.seeds or []
        rest, seed_i = divmod(index, len(seeds))
        combo = 1
        for size in sizes:
            combo *= size
        prompt_i, combo_i = divmod(rest, combo)
        values: dict[str, Any] = {}
        for name, size in zip(reversed(names), reversed(sizes), strict=True):
            combo_i, at = divmod(combo_i, size)
            values[name] = grid["params"][name][at]
        own = {**values, "prompt": grid["prompts"][prompt_i], "seed": seeds[seed_i]}
        return JobSpec.parse(with_defaults(self.spec.get("defaults") or {}, own))

    def jobs(
        self, start: int, stop: int, chunk: Callable[[int], list[dict[str, Any]]]
    ) -> list[JobSpec]:
        """Jobs ``start`` to ``stop - 1``; ``chunk(n)`` reads chunk ``n`` of an explicit list."""
        stop = min(stop, self.total)
        if self.is_grid:
            return [self.grid_spec(i) for i in range(start, stop)]
        out = []
        for i in range(start, stop):
            n, at = divmod(i, CHUNK)
            out.append(JobSpec.model_validate(chunk(n)[at]))
        return out


def chunked(specs: list[JobSpec]) -> list[list[dict[str, Any]]]:
    """An explicit job list as manifest chunks of ``CHUNK`` specs each."""
    return [[s.to_dict() for s in specs[i : i + CHUNK]] for i in range(0, len(specs), CHUNK)]
