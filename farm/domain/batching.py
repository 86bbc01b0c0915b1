"""Which jobs can share one pipeline call. No IO.

Jobs are compatible when one call renders them all the way each would render alone: the same
family and task, size, steps, guidance, scheduler and strengths, one image each, and negative
prompts either all given or all absent (the pipelines treat "none" and "" differently). Their
prompts, negative prompts, seeds and inputs may differ: each row gets its own generator, except
the inputs a pipeline reads from row 0 for every row (``ROW0_INPUTS``): those must be the same.
What only the loaded pipeline can tell (prompt token counts, input image sizes) is split off at
the call itself (``farm.stages``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from farm import families
from farm.domain.jobs import JobSpec

# What jobs sharing one pipeline call have in common (``batch_key``): hashable values.
BatchKey = tuple[object, ...]

T = TypeVar("T")

# A message holds up to this many renders' worth of jobs: its decoder stores one render's
# images while it runs the next, and a killed worker redoes at most one message.
RENDERS_PER_MESSAGE = 4

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


# Decoder pipelines whose ``__call__`` uses row 0's inputs for every row of a batch, and which
# spec fields those are. diffusers 0.42 KandinskyV22InpaintPipeline (and the combined pipeline
# that calls it) blends every row's latents with ``image[:1]`` and ``mask_image[:1]``, inside
# the loop and after it: a row with another picture or mask came back as row 0's (measured:
# 255/255 on ~43% of its values).
ROW0_INPUTS = {
    "KandinskyV22InpaintPipeline": ("image", "mask"),
    "KandinskyV22InpaintCombinedPipeline": ("image", "mask"),
    "AutoPipelineForInpainting": ("image", "mask"),
}


def row0_inputs(spec: JobSpec) -> tuple[str, ...]:
    """The input refs of ``spec`` that every job of its batch must share (see ROW0_INPUTS)."""
    cls = families.get(spec.model).pipe(spec.task, "decoder").cls
    return tuple(getattr(spec, name) for name in ROW0_INPUTS.get(cls, ()))


def batch_key(spec: JobSpec) -> BatchKey | None:
    """What must match for jobs to share a call; None when the job runs alone."""
    if spec.num_images_per_prompt != 1:
        return None  # already a batch of its own, drawn from one generator
    if not families.get(spec.model).batches:
        return None
    shared = tuple(getattr(spec, name) for name in SHARED)
    return (*shared, spec.negative_prompt is None, *row0_inputs(spec))


def batches(
    items: Iterable[tuple[T, JobSpec]], max_size: int, slots: int = 1
) -> list[list[tuple[T, JobSpec]]]:
    """Group (id, spec) pairs into compatible batches of at most ``max_size``, in first-seen order.

    A group is cut into even batches, and into a multiple of ``slots`` of them when that many
    renders can run at once (the decoders' pool processes): 24 jobs for 2 slots with at most 8
    a batch make 4 batches of 6 (two rounds, both slots busy), not 3 of 8 (the third alone).
    """
    groups: dict[object, list[tuple[T, JobSpec]]] = {}
    order: list[list[tuple[T, JobSpec]]] = []
    for item, spec in items:
        key = batch_key(spec) if max_size > 1 else None
        if key is None:
            order.append([(item, spec)])
        elif key in groups:
            groups[key].append((item, spec))
        else:
            groups[key] = [(item, spec)]
            order.append(groups[key])
    out = []
    for group in order:
        n = len(group)
        count = -(-n // max_size)
        if slots > 1:
            count = min(n, -(-count // slots) * slots)
        size = -(-n // count)
        out += [group[i : i + size] for i in range(0, n, size)]
    return out
