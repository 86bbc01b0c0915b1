"""Which jobs of a batch one pipeline call can render: rows that come out as each would alone.

Batching must never change a picture (``farm.stages`` renders each group of rows in one call;
``tests/test_batch_invariance.py`` holds it to that). Also the padding that keeps a compiled
UNet's batch shapes few.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from farm.domain.batching import ROW0_INPUTS
from farm.domain.jobs import JobSpec
from farm.stores.embeddings import Embeddings

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from PIL import Image


def padded(specs: list, *others: list) -> tuple:
    """Lists grown to the next power of two by repeating their last item (``torch.compile``d
    UNets then see a handful of batch shapes, not one per batch size). Returns the real count."""
    n = len(specs)
    size = 1 << (n - 1).bit_length()
    grow = [lst + [lst[-1]] * (size - n) for lst in (specs, *others)]
    return (n, *grow)


# Pipelines that cut every row's prompt embeddings to the batch's longest prompt (+1), cut the
# negative prompt to that length too, and whose UNet then averages over it (Kandinsky 3's
# attention pooling, ``context.mean(dim=1)``): a row renders as alone only beside prompts of
# its own token count (measured otherwise: up to 100/255).
CUT_CONTEXT = ("Kandinsky3Pipeline", "Kandinsky3Img2ImgPipeline")


def row_groups(
    pipe: DiffusionPipeline,
    specs: list[JobSpec],
    images: dict[str, Image.Image],
    embs: list[Embeddings] | None = None,
) -> list[list[int]]:
    """Indexes of ``specs`` in groups that one call of ``pipe`` renders each row of as alone.

    Split apart: different row-0 inputs (``ROW0_INPUTS``); different input sizes where the
    pipeline takes no size (SD, SDXL and Kandinsky 3 img2img render the input's size, and a batch
    resizes every input to row 0's or fails); different prompt token counts (``CUT_CONTEXT``);
    ControlNet hints of different shapes (they cannot be stacked).
    """
    name = type(pipe).__name__
    sized_by_input = not takes(pipe, "height")
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, spec in enumerate(specs):
        key: list[object] = [getattr(spec, field) for field in ROW0_INPUTS.get(name, ())]
        if spec.image is not None and sized_by_input:
            key.append(images[spec.image].size)
        if name in CUT_CONTEXT:
            key.append(len(pipe.tokenizer(spec.prompt, max_length=128, truncation=True).input_ids))
        hint = embs[i].hint if embs is not None else None
        if hint is not None:
            key.append(tuple(hint.shape))
        groups.setdefault(tuple(key), []).append(i)
    return list(groups.values())


def in_groups(groups: list[list[int]], run: Callable[[list[int]], list[Any]]) -> list[Any]:
    """``run`` on each group of indexes; the rows back in their original order."""
    out: list = [None] * sum(len(g) for g in groups)
    for group in groups:
        for i, rows in zip(group, run(group), strict=True):
            out[i] = rows
    return out


def takes(pipe: DiffusionPipeline, name: str) -> bool:
    """Whether the pipeline's call takes ``name`` (the pipelines, not the farm, say what they read)."""
    return name in inspect.signature(pipe.__call__).parameters
