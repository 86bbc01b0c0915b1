"""The prior's output in Redis: safetensors bytes under a per-job key, with a TTL.

The contract between the stages is the two tensors of diffusers' combined Kandinsky pipelines
(``image_embeds`` and ``negative_image_embeds``), plus, for ControlNet jobs, the depth ``hint``
the prior worker made. safetensors holds no code, unlike pickle, so a value read back can never
execute anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from farm import keys
from farm.errors import ServiceUnavailable
from farm.stores.connect import blob

if TYPE_CHECKING:
    from farm.domain.jobs import JobSpec

NAMES = ("image_embeds", "negative_image_embeds")


@dataclass(frozen=True)
class Embeddings:
    image_embeds: torch.Tensor
    negative_image_embeds: torch.Tensor
    hint: torch.Tensor | None = None  # ControlNet: the depth hint, made on the light prior worker

    def to_bytes(self) -> bytes:
        names = NAMES + (("hint",) if self.hint is not None else ())
        tensors = {n: getattr(self, n).detach().to("cpu").contiguous() for n in names}
        return st_save(tensors)

    @classmethod
    def from_bytes(cls, data: bytes) -> Embeddings:
        tensors = st_load(data)
        return cls(**{n: tensors[n] for n in NAMES}, hint=tensors.get("hint"))


class EmbeddingStore:
    """Reads and writes embeddings; one instance per process, sharing its Redis client."""

    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s

    def put(self, job_id: str, emb: Embeddings) -> str:
        """One job's embeddings; returns their key."""
        self.put_many({job_id: emb})
        return keys.embeddings(job_id)

    def get(self, job_id: str) -> Embeddings | None:
        """One job's embeddings, or None when they expired or were never written."""
        return self.get_many([job_id])[0]

    def delete(self, job_id: str) -> None:
        self.delete_many([job_id])

    def put_many(self, items: dict[str, Embeddings]) -> None:
        """Several jobs' embeddings in one round trip."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id, emb in items.items():
                pipe.set(keys.embeddings(job_id), emb.to_bytes(), ex=self.ttl_s)
            pipe.execute()
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot store embeddings: {e}") from e

    def get_many(self, job_ids: list[str]) -> list[Embeddings | None]:
        """Several jobs' embeddings (None where expired or never written), one round trip."""
        try:
            raw = self.client.mget([keys.embeddings(j) for j in job_ids]) if job_ids else []
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: cannot read embeddings: {e}") from e
        return [None if r is None else Embeddings.from_bytes(blob(r)) for r in raw]

    def delete_many(self, job_ids: list[str]) -> None:
        if job_ids:
            self.client.delete(*(keys.embeddings(j) for j in job_ids))

    def cached(self, specs: Sequence[JobSpec]) -> list[Embeddings | None]:
        """Earlier prior results for these specs (same family, prompts, seed, prior settings)."""
        try:
            raw = self.client.mget([keys.prior_cache(prior_digest(s)) for s in specs])
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: {e}") from e
        return [Embeddings.from_bytes(blob(r)) if r is not None else None for r in raw]

    def cache(self, items: Sequence[tuple[JobSpec, Embeddings]]) -> None:
        """Keep prior results so a campaign re-rendering a prompt skips the prior."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for spec, emb in items:
                pipe.set(keys.prior_cache(prior_digest(spec)), emb.to_bytes(), ex=self.ttl_s)
            pipe.execute()
        except redis.RedisError as e:
            raise ServiceUnavailable(f"redis: {e}") from e


def prior_digest(spec: JobSpec) -> str:
    """What a text prior's output depends on, hashed: family, prompts, seed, prior settings."""
    import hashlib
    import json

    fields = (
        spec.model,
        spec.prompt,
        spec.negative_prompt,
        spec.seed,
        spec.prior_guidance_scale,
        spec.prior_num_inference_steps,
    )
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()
