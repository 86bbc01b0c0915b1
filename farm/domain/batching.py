"""Which jobs can share one pipeline call. No IO.

Jobs are compatible when one call renders them all the way each would render alone: the same
family and task, size, steps, guidance, scheduler and strengths, one image each, and negative
prompts either all given or all absent (the pipelines treat "none" and "" differently). Their
prompts, negative prompts, seeds and inputs may differ: each row gets its own generator.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from farm import families
from farm.domain.jobs import JobSpec

T = TypeVar("T")

SHARED = (
    "model",
    "task",
    "height",
    "width",
    "num_inference_steps",
    "guidance_scale",
    "scheduler",
    "strength",
    "prior_strength",
    "prior_guidance_scale",
    "prior_num_inference_steps",
)


def batch_key(spec: JobSpec) -> tuple | None:
    """What must match for jobs to share a call; None when the job runs alone."""
    if spec.num_images_per_prompt != 1:
        return None  # already a batch of its own, drawn from one generator
    if not families.get(spec.model).batches:
        return None
    return (*(getattr(spec, name) for name in SHARED), spec.negative_prompt is None)


def batches(items: Iterable[tuple[T, JobSpec]], max_size: int) -> list[list[tuple[T, JobSpec]]]:
    """Group (id, spec) pairs into compatible batches of at most ``max_size``, in first-seen order."""
    groups: dict[object, list[list[tuple[T, JobSpec]]]] = {}
    order: list[list[tuple[T, JobSpec]]] = []
    for item, spec in items:
        key = batch_key(spec) if max_size > 1 else None
        if key is None:
            order.append([(item, spec)])
            continue
        open_batches = groups.setdefault(key, [])
        if not open_batches or len(open_batches[-1]) >= max_size:
            open_batches.append([])
            order.append(open_batches[-1])
        open_batches[-1].append((item, spec))
    return order
