"""A job's picture does not depend on the batch it lands in (issue 17, items 1 and 2).

Every family and task that batches: jobs whose prompts (of different lengths), negative prompts,
seeds and inputs (images of two sizes, masks, hints, interpolation weights) all differ, each
rendered alone and inside three batch compositions; prior and decoder batched as the workers
batch them. ``tests/test_batching.py`` gives every row the same inputs and cannot see these.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from farm.domain.batching import batch_key, batches
from farm.domain.jobs import JobSpec
from farm.families import REGISTRY, get
from farm.stages import (
    TEXT_PRIOR_TASKS,
    cache_zero_embed,
    row_groups,
    run_controlnet_prior,
    run_decoder,
    run_decoder_batch,
    run_prior,
    run_prior_batch,
    run_single,
    run_single_batch,
)

PROMPTS = (
    "a red cat",
    "a very large blue house by the sea at night, oil painting",
    "tree",
    "a portrait of an old sailor with a pipe, dramatic light",
    "two dogs",
    "a bowl of fruit on a wooden table",
)
# Each job: alone, then in three batches (sizes 6, 6 reversed, 2 / 4).
COMPOSITIONS = ([[0, 1, 2, 3, 4, 5]], [[5, 4, 3, 2, 1, 0]], [[0, 1], [2, 3, 4, 5]])


def ref(n: int) -> str:
    return "in:" + format(n, "x") * 64


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


@pytest.fixture(scope="module")
def images():
    """Three pictures (the third of another size), two masks, two depth hints."""
    rng = np.random.default_rng(1)
    out = {}
    for n, (h, w) in enumerate(((64, 64), (64, 64), (96, 128))):
        out[ref(1 + n)] = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    top, left = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)
    top[:32], left[:, :40] = 255, 255
    out[ref(4)], out[ref(5)] = Image.fromarray(top, "L"), Image.fromarray(left, "L")
    for n in (6, 7):
        out[ref(n)] = Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), "L")
    return out


def _specs(family: str, task: str, negative: bool = True) -> list[JobSpec]:
    base = {"model": family, "task": task, "height": 64, "width": 64, "num_inference_steps": 3}
    base["prior_num_inference_steps"] = 2
    specs = []
    for i, prompt in enumerate(PROMPTS):
        row = {**base, "prompt": prompt, "seed": 40 + 3 * i}
        row["negative_prompt"] = ("blurry", "low quality, extra fingers, watermark")[i % 2]
        if not negative:
            row["negative_prompt"] = None
        if task in ("img2img", "controlnet-depth-img2img"):
            row |= {"image": ref(1 + i % 3), "strength": 0.75, "prior_strength": 0.7}
        if task == "inpaint":
            row |= {"image": ref(1 + i % 3), "mask": ref(4 + i % 2)}
        if task.startswith("controlnet"):
            row["hint"] = ref(6 + i % 2)
        if task == "interpolate":
            other = {"image": ref(1 + i % 2)} if i % 2 else {"text": "sea"}
            row["prompt"] = ""
            row["interpolate"] = [{"text": prompt, "weight": 0.3 + 0.1 * i}, {**other, "weight": 1}]
        specs.append(JobSpec.parse(row))
    return specs


def _lone_embeddings(models, spec, images):
    prior = models["prior"].pipeline(spec.model, spec.task)
    cache_zero_embed(prior)
    if spec.task.startswith("controlnet"):
        return run_controlnet_prior(prior, None, spec, images)
    return run_prior(prior, spec, images)


def _prior_worker(models, specs, images):
    """The embeddings a prior worker makes for one message of these jobs."""
    if specs[0].task not in TEXT_PRIOR_TASKS:
        return [_lone_embeddings(models, s, images) for s in specs]
    prior = models["prior"].pipeline(specs[0].model, specs[0].task)
    cache_zero_embed(prior)
    return run_prior_batch(prior, specs)


def _render(models, specs, images, embs=None):
    pipe = models["decoder"].pipeline(specs[0].model, specs[0].task)
    two = get(specs[0].model).two_stage
    if len(specs) == 1:
        if two:
            return [run_decoder(pipe, specs[0], embs[0], images)[0]]
        return [run_single(pipe, specs[0], images)[0]]
    if two:
        return [r[0] for r in run_decoder_batch(pipe, specs, embs, images)]
    return [r[0] for r in run_single_batch(pipe, specs, images)]


def _diff(a, b) -> tuple[int, float]:
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    assert a.shape == b.shape, "the batch rendered this job at another size"
    d = np.abs(a - b)
    return int(d.max()), float((d > 0).mean())


PAIRS = [(f, t) for f, family in REGISTRY.items() if family.batches for t in family.tasks]


@pytest.mark.parametrize(("family", "task"), PAIRS)
def test_each_job_renders_as_alone_in_any_batch(models, images, family, task):
    """Different inputs, prompts and seeds; prior and decoder batched; three compositions."""
    specs = _specs(family, task)
    two = get(family).two_stage
    lone_embs = [_lone_embeddings(models, s, images) for s in specs] if two else [None] * 6
    alone = [_render(models, [s], images, [e]) for s, e in zip(specs, lone_embs, strict=True)]
    worst = (0, 0.0)
    for composition in COMPOSITIONS:
        for batch in composition:
            group = [specs[i] for i in batch]
            embs = _prior_worker(models, group, images) if two else None
            for i, image in zip(batch, _render(models, group, images, embs), strict=True):
                d = _diff(alone[i][0], image)
                worst = max(worst, d)
                assert d[0] <= 1, (family, task, i, batch, d)
    assert np.asarray(alone[0][0]).std() > 0
    print(f"{family} {task}: max {worst[0]}/255, {worst[1]:.3%} of values differ")


@pytest.mark.parametrize("family", [f for f in REGISTRY if get(f).two_stage])
@pytest.mark.parametrize("negative", [True, False])
def test_prior_rows_are_the_lone_rows_bit_for_bit(models, family, negative):
    """A batched CLIP text encoder / prior transformer rounds differently from a lone call
    (up to 2e-6 without a negative prompt, measured): the prior worker runs each row alone."""
    prior = models["prior"].pipeline(family, "text2img")
    cache_zero_embed(prior)
    specs = _specs(family, "text2img", negative=negative)
    lone = [run_prior(prior, s) for s in specs]
    for composition in COMPOSITIONS:
        for batch in composition:
            for i, emb in zip(
                batch, run_prior_batch(prior, [specs[i] for i in batch]), strict=True
            ):
                assert torch.equal(emb.image_embeds, lone[i].image_embeds), (family, batch, i)
                assert torch.equal(emb.negative_image_embeds, lone[i].negative_image_embeds)


def test_inpaint_jobs_with_other_inputs_never_share_a_call():
    """KandinskyV22InpaintPipeline blends every row with ``image[:1]`` / ``mask_image[:1]``:
    2.2 inpainting jobs batch only with jobs of the same picture and mask. 2.1's pipeline
    reads each row's own, so its jobs still batch whatever their inputs."""
    k22 = _specs("kandinsky-2.2", "inpaint")
    assert batch_key(k22[0]) != batch_key(k22[1])  # another picture and mask
    assert batch_key(k22[0]) == batch_key(k22[3].model_copy(update={"mask": ref(4)}))
    groups = batches([(n, s) for n, s in enumerate(k22)], 8)
    assert all(len({(s.image, s.mask) for _, s in g}) == 1 for g in groups)
    k21 = _specs("kandinsky-2.1", "inpaint")
    assert len(batches([(n, s) for n, s in enumerate(k21)], 8)) == 1


def test_rows_a_call_would_not_render_as_alone_are_split(models, images):
    """What only the loaded pipeline knows: Kandinsky 3 prompt token counts, input sizes of
    pipelines that render the input's size, and row-0 inputs, each split into their own call."""
    k3 = models["decoder"].pipeline("kandinsky-3", "text2img")
    same = [s.model_copy(update={"prompt": "a red cat"}) for s in _specs("kandinsky-3", "text2img")]
    assert row_groups(k3, same, images) == [list(range(6))]
    assert len(row_groups(k3, _specs("kandinsky-3", "text2img"), images)) > 1
    sd = models["decoder"].pipeline("sd-1.5", "img2img")
    # Pictures 1 and 2 are 64x64, picture 3 is 128x96: two calls.
    assert row_groups(sd, _specs("sd-1.5", "img2img"), images) == [[0, 1, 3, 4], [2, 5]]
    inpaint = models["decoder"].pipeline("kandinsky-2.2", "inpaint")
    assert len(row_groups(inpaint, _specs("kandinsky-2.2", "inpaint"), images)) == 6
    k21 = models["decoder"].pipeline("kandinsky-2.1", "inpaint")
    assert row_groups(k21, _specs("kandinsky-2.1", "inpaint"), images) == [list(range(6))]
