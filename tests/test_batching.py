"""Batched renders equal unbatched ones: every (family, task) of the registry, in one process.

Each row of a batch draws its noise from its own job's generator, so the batch only changes
float rounding in the batched kernels: at most 1/255 per pixel (CPU, float32). Rows with
different inputs, prompts and seeds: tests/test_batch_invariance.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from farm.domain.batching import batch_key, batches
from farm.domain.jobs import JobSpec
from farm.families import REGISTRY, get
from farm.settings import Settings
from farm.stages import (
    TEXT_PRIOR_TASKS,
    cache_zero_embed,
    run_controlnet_prior,
    run_decoder,
    run_decoder_batch,
    run_prior,
    run_prior_batch,
    run_single,
    run_single_batch,
)

IMAGE, MASK, HINT = "in:" + "a" * 64, "in:" + "b" * 64, "in:" + "c" * 64


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:32] = 255
    return {
        IMAGE: Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        MASK: Image.fromarray(mask, "L"),
        HINT: Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), "L"),
    }


def _specs(family: str, task: str) -> list[JobSpec]:
    base = {"model": family, "task": task, "height": 64, "width": 64, "num_inference_steps": 3}
    base |= {"prior_num_inference_steps": 2, "negative_prompt": "blurry"}
    if task in ("img2img", "controlnet-depth-img2img"):
        base |= {"image": IMAGE, "strength": 0.7, "prior_strength": 0.7}
    if task == "inpaint":
        base |= {"image": IMAGE, "mask": MASK}
    if task.startswith("controlnet"):
        base |= {"hint": HINT}
    specs = []
    for n, prompt in enumerate(["a red cat", "a blue house", "a green tree"]):
        extra = {"prompt": prompt}
        if task == "interpolate":
            extra = {
                "interpolate": [{"text": prompt, "weight": 0.5}, {"text": "sea", "weight": 0.5}]
            }
        specs.append(JobSpec.parse({**base, **extra, "seed": 10 + n}))
    return specs


def _embeddings(models, spec, images):
    prior = models["prior"].pipeline(spec.model, spec.task)
    if spec.task.startswith("controlnet"):
        return run_controlnet_prior(prior, None, spec, images)
    return run_prior(prior, spec, images)


PAIRS = [(f, t) for f, family in REGISTRY.items() if family.batches for t in family.tasks]


@pytest.mark.parametrize(("family", "task"), PAIRS)
def test_batched_render_equals_each_job_alone(models, images, family, task):
    specs = _specs(family, task)
    assert len(batches([(n, s) for n, s in enumerate(specs)], 8)) == 1  # one compatible batch
    decoder = models["decoder"].pipeline(family, task)
    if get(family).two_stage:
        embs = [_embeddings(models, s, images) for s in specs]
        alone = [run_decoder(decoder, s, e, images)[0] for s, e in zip(specs, embs, strict=True)]
        together = [r[0] for r in run_decoder_batch(decoder, specs, embs, images)]
    else:
        alone = [run_single(decoder, s, images)[0] for s in specs]
        together = [r[0] for r in run_single_batch(decoder, specs, images)]
    for a, b in zip(alone, together, strict=True):
        a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
        assert a.std() > 0 and np.abs(a - b).max() <= 1, (family, task, np.abs(a - b).max())


@pytest.mark.parametrize("family", [f for f in REGISTRY if get(f).two_stage])
def test_batched_prior_equals_each_prompt_alone(models, family):
    prior = models["prior"].pipeline(family, "text2img")
    cache_zero_embed(prior)
    for negative in ("blurry", None):
        specs = [
            s.model_copy(update={"negative_prompt": negative}) for s in _specs(family, "text2img")
        ]
        together = run_prior_batch(prior, specs)
        for spec, emb in zip(specs, together, strict=True):
            alone = run_prior(prior, spec)
            for name in ("image_embeds", "negative_image_embeds"):
                # Bit for bit: the prior runs each row alone (tests/test_batch_invariance.py).
                assert (getattr(alone, name) == getattr(emb, name)).all(), (family, negative, name)
    assert set(TEXT_PRIOR_TASKS) <= set(get(family).tasks)


def test_zero_embed_is_computed_once(models):
    prior = models["prior"].pipeline("kandinsky-2.2", "text2img")
    cache_zero_embed(prior)
    calls = []
    encoder = prior.image_encoder
    handle = encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        first = prior.get_zero_embed(2)
        second = prior.get_zero_embed(3)
    finally:
        handle.remove()
    assert len(calls) <= 1 and first.shape[0] == 2 and second.shape[0] == 3
    assert (second[0] == first[0]).all()


def test_what_batches_together():
    a = JobSpec.parse({"prompt": "a", "seed": 1})
    b = JobSpec.parse({"prompt": "b", "seed": 2, "negative_prompt": None})
    c = JobSpec.parse({"prompt": "c", "seed": 3, "height": 256})
    d = JobSpec.parse({"prompt": "d", "seed": 4, "num_images_per_prompt": 2})
    e = JobSpec.parse({"prompt": "e", "seed": 5, "negative_prompt": "x"})
    assert batch_key(a) == batch_key(b) != batch_key(c)
    assert batch_key(d) is None and batch_key(a) != batch_key(e)
    items = [(n, s) for n, s in enumerate([a, c, b, d, a, a, e])]
    groups = [[n for n, _ in g] for g in batches(items, 3)]
    assert groups == [[0, 2], [4, 5], [1], [3], [6]]  # four compatible jobs: two even batches
    assert [[n for n, _ in g] for g in batches(items, 1)] == [[n] for n in range(7)]
    many = [(n, a) for n in range(24)]
    assert [len(g) for g in batches(many, 8)] == [8, 8, 8]
    assert [len(g) for g in batches(many, 8, slots=2)] == [6, 6, 6, 6]  # both slots, two rounds
    assert [len(g) for g in batches(many[:3], 8, slots=4)] == [1, 1, 1]
    k3 = JobSpec.parse({"model": "kandinsky-2.2-auto", "prompt": "x", "seed": 1})
    assert batch_key(k3) is None  # a family that does not batch


def test_padding_to_a_power_of_two_changes_no_row(models, images):
    specs = _specs("kandinsky-2.2", "text2img")  # three jobs: padded to four
    decoder = models["decoder"].pipeline("kandinsky-2.2", "text2img")
    embs = [_embeddings(models, s, images) for s in specs]
    plain = run_decoder_batch(decoder, specs, embs, images)
    padded = run_decoder_batch(decoder, specs, embs, images, pad=True)
    assert len(padded) == 3
    for a, b in zip(plain, padded, strict=True):
        assert np.abs(np.asarray(a[0], dtype=int) - np.asarray(b[0], dtype=int)).max() <= 1
    single = _specs("kandinsky-3", "text2img")
    k3 = models["decoder"].pipeline("kandinsky-3", "text2img")
    assert len(run_single_batch(k3, single, images, pad=True)) == 3


def test_speed_switches_keep_the_picture(models, images, tmp_path):
    """channels-last and the eager attention processor render what the defaults render."""
    from farm.families.loading import Speed, load

    settings = models["decoder"].settings
    part = get("kandinsky-2.2").part("decoder")
    spec = _specs("kandinsky-2.2", "text2img")[0]
    emb = _embeddings(models, spec, images)
    default = load(part, settings.location(part))
    tuned = load(part, settings.location(part), speed=Speed(attention="eager", channels_last=True))
    a = np.asarray(run_decoder(default, spec, emb, images)[0], dtype=int)
    b = np.asarray(run_decoder(tuned, spec, emb, images)[0], dtype=int)
    assert np.abs(a - b).max() <= 1
    assert Settings(compile=True, channels_last=True).speed == Speed(
        compile=True, channels_last=True
    )
