"""Every task of the guides through the farm, each pixel-identical to the guide's calls in one process."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from farm.errors import InvalidJob
from farm.families import REGISTRY

pytestmark = pytest.mark.slow

# (family, task) -> the test that renders it through the farm and compares every pixel with the
# guide's calls in one process. Checked against the registry below: a family or task added
# without a fidelity test fails the suite.
FIDELITY: dict[tuple[str, str], str] = {}


def fidelity(*pairs):
    def mark(test):
        for pair in pairs:
            FIDELITY[pair] = test.__name__
        return test

    return mark


BASE = {
    "num_inference_steps": 3,
    "prior_num_inference_steps": 2,
    "height": 128,
    "width": 128,
    "seed": 77,
}


def _gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


def _png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def init_png():
    rng = np.random.default_rng(0)
    return _png(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), "RGB")


def _mask(rows: slice, cols: slice) -> bytes:
    m = np.zeros((128, 128), dtype=np.uint8)
    m[rows, cols] = 255  # white = repaint
    return _png(m, "L")


@pytest.fixture(scope="module")
def pipes(stack, settings):
    from diffusers import (
        KandinskyV22InpaintPipeline,
        KandinskyV22Pipeline,
        KandinskyV22PriorPipeline,
    )

    out = {
        "prior": KandinskyV22PriorPipeline.from_pretrained(settings.tiny_dir / "prior"),
        "decoder": KandinskyV22Pipeline.from_pretrained(settings.tiny_dir / "decoder"),
        "inpaint": KandinskyV22InpaintPipeline.from_pretrained(settings.tiny_dir / "inpaint"),
    }
    for p in out.values():
        p.set_progress_bar_config(disable=True)
    return out


def _farm_pixels(client, spec) -> np.ndarray:
    handle = client.submit_job(spec)
    status = handle.wait(timeout=120)
    (job,) = handle.results()
    assert status["counts"]["done"] == 1, job["error"]
    return np.asarray(Image.open(io.BytesIO(httpx.get(job["url"]).content)).convert("RGB"))


def _prior(pipes, spec):
    return pipes["prior"](
        spec["prompt"],
        negative_prompt=spec.get("negative_prompt"),
        num_inference_steps=spec["prior_num_inference_steps"],
        generator=_gen(spec["seed"]),
    ).to_tuple()


def _same(farm_px, reference: Image.Image):
    ref = np.asarray(reference.convert("RGB"))
    assert ref.std() > 0
    np.testing.assert_array_equal(farm_px, ref)


@fidelity(("kandinsky-2.2", "img2img"))
def test_img2img_fidelity(alice, pipes, init_png):
    from diffusers import KandinskyV22Img2ImgPipeline

    ref_id = alice.upload(init_png)
    spec = {
        **BASE,
        "task": "img2img",
        "prompt": "a cat, oil painting",
        "image": ref_id,
        "strength": 0.6,
    }
    farm_px = _farm_pixels(alice, spec)
    emb, neg = _prior(pipes, spec)
    img2img = KandinskyV22Img2ImgPipeline.from_pretrained(pipes["decoder"].config._name_or_path)
    img2img.set_progress_bar_config(disable=True)
    init = Image.open(io.BytesIO(init_png)).convert("RGB")
    ref = img2img(
        image=init, image_embeds=emb, negative_image_embeds=neg, height=128, width=128,
        strength=0.6, num_inference_steps=3, generator=_gen(77),
    ).images[0]  # fmt: skip
    _same(farm_px, ref)


@fidelity(("kandinsky-2.2", "inpaint"))
def test_inpainting_fidelity_each_job_its_own_mask(alice, pipes, init_png):
    """Two inpainting jobs, same image and seed, different masks: each gets its own mask (diffusers#13597)."""
    image_ref = alice.upload(init_png)
    masks = [_mask(slice(0, 64), slice(0, 128)), _mask(slice(32, 96), slice(32, 96))]
    outs = []
    for mask_png in masks:
        spec = {
            **BASE,
            "task": "inpaint",
            "prompt": "a hat",
            "image": image_ref,
            "mask": alice.upload(mask_png),
        }
        farm_px = _farm_pixels(alice, spec)
        emb, neg = _prior(pipes, spec)
        ref = pipes["inpaint"](
            image=Image.open(io.BytesIO(init_png)).convert("RGB"),
            mask_image=Image.open(io.BytesIO(mask_png)).convert("L"),
            image_embeds=emb, negative_image_embeds=neg, height=128, width=128,
            num_inference_steps=3, generator=_gen(77),
        ).images[0]  # fmt: skip
        _same(farm_px, ref)
        outs.append(farm_px)
    assert not np.array_equal(outs[0], outs[1])


@fidelity(("kandinsky-2.2", "interpolate"))
def test_interpolation_fidelity(alice, pipes, init_png):
    image_ref = alice.upload(init_png)
    spec = {
        **BASE,
        "task": "interpolate",
        "interpolate": [{"text": "a cat", "weight": 0.3}, {"image": image_ref, "weight": 0.7}],
    }
    farm_px = _farm_pixels(alice, spec)
    out = pipes["prior"].interpolate(
        ["a cat", Image.open(io.BytesIO(init_png)).convert("RGB")], [0.3, 0.7],
        num_inference_steps=2, generator=_gen(77),
    )  # fmt: skip
    ref = pipes["decoder"](
        image_embeds=out.image_embeds, negative_image_embeds=out.negative_image_embeds,
        height=128, width=128, num_inference_steps=3, generator=_gen(77),
    ).images[0]  # fmt: skip
    _same(farm_px, ref)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_scheduler_swap_fidelity(alice, pipes, scheduler):
    import diffusers

    spec = {**BASE, "prompt": "a lighthouse", "scheduler": scheduler}
    farm_px = _farm_pixels(alice, spec)
    emb, neg = _prior(pipes, spec)
    cls = getattr(diffusers, {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}[scheduler])
    decoder = diffusers.KandinskyV22Pipeline(
        **{
            **pipes["decoder"].components,
            "scheduler": cls.from_config(pipes["decoder"].scheduler.config),
        }
    )
    ref = decoder(
        image_embeds=emb, negative_image_embeds=neg, height=128, width=128,
        num_inference_steps=3, generator=_gen(77),
    ).images[0]  # fmt: skip
    _same(farm_px, ref)


def test_bad_inputs_are_refused_naming_the_field(alice, init_png):
    with pytest.raises(InvalidJob, match="not a readable PNG"):
        alice.upload(b"GIF89a not really")
    with pytest.raises(InvalidJob, match="pickle|not a readable"):
        alice.upload(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle stream is not an image
    bomb = io.BytesIO()
    Image.new("L", (5000, 5000)).save(bomb, format="PNG")  # 25 MP of zeros: tiny file, huge image
    with pytest.raises(InvalidJob, match="pixels"):
        alice.upload(bomb.getvalue())
    with pytest.raises(InvalidJob) as exc:
        alice.submit_job(
            {**BASE, "task": "img2img", "prompt": "x", "image": "in:" + "0" * 64, "strength": 0.5}
        )
    assert exc.value.field == "image" and "unknown input" in str(exc.value)
    image_ref = alice.upload(init_png)
    small_mask = alice.upload(_png(np.zeros((64, 64), dtype=np.uint8), "L"))
    with pytest.raises(InvalidJob) as exc:
        alice.submit_job(
            {**BASE, "task": "inpaint", "prompt": "x", "image": image_ref, "mask": small_mask}
        )
    assert exc.value.field == "mask" and "64x64 does not match the image's 128x128" in str(
        exc.value
    )
    with pytest.raises(InvalidJob) as exc:
        alice.submit_job({**BASE, "prompt": "x", "model": "kandinsky-9"})
    assert exc.value.field == "model" and "known: kandinsky-2.2" in str(exc.value)


def test_inputs_are_per_tenant(alice, bob, init_png):
    ref = alice.upload(init_png)
    with pytest.raises(InvalidJob, match="unknown input"):
        bob.submit_job({**BASE, "task": "img2img", "prompt": "x", "image": ref, "strength": 0.5})


@pytest.fixture(scope="module")
def k3(stack, settings):
    from diffusers import Kandinsky3Img2ImgPipeline, Kandinsky3Pipeline

    t2i = Kandinsky3Pipeline.from_pretrained(settings.tiny_dir / "kandinsky3")
    i2i = Kandinsky3Img2ImgPipeline.from_pretrained(settings.tiny_dir / "kandinsky3")
    for p in (t2i, i2i):
        p.set_progress_bar_config(disable=True)
    return t2i, i2i


@fidelity(("kandinsky-3", "text2img"))
def test_kandinsky3_text2img_single_stage_fidelity(alice, k3, farm):
    spec = {
        **BASE,
        "model": "kandinsky-3",
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "blurry",
    }
    handle = alice.submit_job(spec)
    handle.wait(timeout=120)
    (job,) = handle.results()
    assert job["state"] == "done", job["error"]
    # No prior stage ran: a single-stage job never has a prior timing.
    assert "prior" not in job["timings"] and "decode" in job["timings"]
    farm_px = np.asarray(Image.open(io.BytesIO(httpx.get(job["url"]).content)).convert("RGB"))
    ref = k3[0](
        "a lighthouse at dusk", negative_prompt="blurry", height=128, width=128,
        num_inference_steps=3, guidance_scale=3.0, generator=_gen(77),
    ).images[0]  # fmt: skip
    _same(farm_px, ref)


@fidelity(("kandinsky-3", "img2img"))
def test_kandinsky3_img2img_fidelity(alice, k3, init_png):
    spec = {
        **BASE,
        "model": "kandinsky-3",
        "task": "img2img",
        "prompt": "a cat",
        "image": alice.upload(init_png),
        "strength": 0.75,
    }
    farm_px = _farm_pixels(alice, spec)
    ref = k3[1](
        "a cat", image=Image.open(io.BytesIO(init_png)).convert("RGB"), strength=0.75, height=128, width=128,
        num_inference_steps=3, guidance_scale=3.0, generator=_gen(77),
    ).images[0]  # fmt: skip
    _same(farm_px, ref)


def test_unsupported_task_lists_what_the_model_does(alice):
    with pytest.raises(InvalidJob) as exc:
        alice.submit_job(
            {
                **BASE,
                "model": "kandinsky-3",
                "task": "interpolate",
                "interpolate": [{"text": "a", "weight": 1}, {"text": "b", "weight": 1}],
            }
        )
    assert exc.value.field == "model"
    assert "kandinsky-3 does not support 'interpolate'; it supports: text2img, img2img" in str(
        exc.value
    )


@pytest.mark.parametrize("guidance", [1.0, 4.0])
@fidelity(("kandinsky-2.2", "text2img"))
def test_several_images_per_prompt_each_distinct_and_faithful(alice, pipes, guidance):
    """num_images_per_prompt=3 gives three different images, with and without guidance (diffusers#13596)."""
    spec = {**BASE, "prompt": "three cats", "num_images_per_prompt": 3, "guidance_scale": guidance}
    handle = alice.submit_job(spec)
    handle.wait(timeout=120)
    (job,) = handle.results()
    assert job["state"] == "done", job["error"]
    assert (
        len(job["s3_keys"]) == 3 and job["s3_keys"][0].endswith("-0.png") and len(job["urls"]) == 3
    )
    farm_px = [
        np.asarray(Image.open(io.BytesIO(httpx.get(u).content)).convert("RGB")) for u in job["urls"]
    ]
    assert not np.array_equal(farm_px[0], farm_px[1]) and not np.array_equal(farm_px[1], farm_px[2])
    out = pipes["prior"](
        "three cats", num_inference_steps=2, generator=_gen(77), num_images_per_prompt=3
    )
    refs = pipes["decoder"](
        image_embeds=out.image_embeds, negative_image_embeds=out.negative_image_embeds,
        height=128, width=128, guidance_scale=guidance, num_inference_steps=3, generator=_gen(77),
    ).images  # fmt: skip
    for px, ref in zip(farm_px, refs, strict=True):
        _same(px, ref)


def test_batched_inpainting_keeps_image_and_mask_per_row(alice, pipes, init_png):
    mask_png = _mask(slice(16, 80), slice(16, 80))
    image_ref, mask_ref = alice.upload(init_png), alice.upload(mask_png)
    spec = {
        **BASE,
        "task": "inpaint",
        "prompt": "a hat",
        "image": image_ref,
        "mask": mask_ref,
        "num_images_per_prompt": 2,
    }
    handle = alice.submit_job(spec)
    handle.wait(timeout=120)
    (job,) = handle.results()
    farm_px = [
        np.asarray(Image.open(io.BytesIO(httpx.get(u).content)).convert("RGB")) for u in job["urls"]
    ]
    out = pipes["prior"](
        "a hat", num_inference_steps=2, generator=_gen(77), num_images_per_prompt=2
    )
    init, mask = (
        Image.open(io.BytesIO(init_png)).convert("RGB"),
        Image.open(io.BytesIO(mask_png)).convert("L"),
    )
    refs = pipes["inpaint"](
        image=[init, init], mask_image=[mask, mask],
        image_embeds=out.image_embeds, negative_image_embeds=out.negative_image_embeds,
        height=128, width=128, num_inference_steps=3, generator=_gen(77),
    ).images  # fmt: skip
    assert len(farm_px) == 2 and not np.array_equal(farm_px[0], farm_px[1])
    for px, ref in zip(farm_px, refs, strict=True):
        _same(px, ref)
    # Outside the mask the picture keeps the input's structure in every row: rows did not swap masks.


@pytest.fixture(scope="module")
def k21(stack, settings):
    from diffusers import KandinskyInpaintPipeline, KandinskyPipeline, KandinskyPriorPipeline

    out = {
        "prior": KandinskyPriorPipeline.from_pretrained(settings.tiny_dir / "prior"),
        "decoder": KandinskyPipeline.from_pretrained(settings.tiny_dir / "k21_decoder"),
        "inpaint": KandinskyInpaintPipeline.from_pretrained(settings.tiny_dir / "k21_inpaint"),
    }
    for p in out.values():
        p.set_progress_bar_config(disable=True)
    return out


def _k21_prior(k21, prompt, n=1):
    return k21["prior"](
        prompt,
        negative_prompt="low quality",
        num_inference_steps=2,
        generator=_gen(77),
        num_images_per_prompt=n,
    ).to_tuple()


K21 = {**BASE, "model": "kandinsky-2.1", "negative_prompt": "low quality"}


@fidelity(("kandinsky-2.1", "text2img"))
def test_kandinsky21_text2img_fidelity_decoder_reads_the_prompt(alice, k21):
    farm_px = _farm_pixels(alice, {**K21, "prompt": "a red cat"})
    emb, neg = _k21_prior(k21, "a red cat")
    ref = k21["decoder"](
        "a red cat", image_embeds=emb, negative_image_embeds=neg, negative_prompt="low quality",
        height=128, width=128, num_inference_steps=3, generator=_gen(77),
    ).images[0]  # fmt: skip
    _same(farm_px, ref)
    # Same embeddings, another prompt: the 2.1 decoder's own text encoder changes the picture.
    other = k21["decoder"](
        "a blue dog", image_embeds=emb, negative_image_embeds=neg, negative_prompt="low quality",
        height=128, width=128, num_inference_steps=3, generator=_gen(77),
    ).images[0]  # fmt: skip
    assert not np.array_equal(farm_px, np.asarray(other.convert("RGB")))


@fidelity(("kandinsky-2.1", "img2img"), ("kandinsky-2.1", "inpaint"))
def test_kandinsky21_img2img_and_inpaint_fidelity(alice, k21, init_png):
    from diffusers import KandinskyImg2ImgPipeline

    image_ref = alice.upload(init_png)
    init = Image.open(io.BytesIO(init_png)).convert("RGB")
    farm_px = _farm_pixels(
        alice, {**K21, "task": "img2img", "prompt": "a cat", "image": image_ref, "strength": 0.6}
    )
    emb, neg = _k21_prior(k21, "a cat")
    img2img = KandinskyImg2ImgPipeline(**k21["decoder"].components)
    ref = img2img(
        "a cat", image=init, image_embeds=emb, negative_image_embeds=neg, negative_prompt="low quality",
        height=128, width=128, strength=0.6, num_inference_steps=3, generator=_gen(77),
    ).images[0]  # fmt: skip
    _same(farm_px, ref)
    mask_png = _mask(slice(0, 64), slice(0, 128))
    farm_px = _farm_pixels(
        alice,
        {
            **K21,
            "task": "inpaint",
            "prompt": "a hat",
            "image": image_ref,
            "mask": alice.upload(mask_png),
        },
    )
    emb, neg = _k21_prior(k21, "a hat")
    ref = k21["inpaint"](
        "a hat", image=init, mask_image=Image.open(io.BytesIO(mask_png)).convert("L"),
        image_embeds=emb, negative_image_embeds=neg, negative_prompt="low quality",
        height=128, width=128, num_inference_steps=3, generator=_gen(77),
    ).images[0]  # fmt: skip
    _same(farm_px, ref)


@fidelity(("kandinsky-2.1", "interpolate"))
def test_kandinsky21_interpolation_and_batch(alice, k21, init_png):
    image_ref = alice.upload(init_png)
    spec = {
        **K21,
        "task": "interpolate",
        "interpolate": [{"text": "a cat", "weight": 0.5}, {"image": image_ref, "weight": 0.5}],
    }
    farm_px = _farm_pixels(alice, spec)
    out = k21["prior"].interpolate(
        ["a cat", Image.open(io.BytesIO(init_png)).convert("RGB")], [0.5, 0.5],
        num_inference_steps=2, generator=_gen(77), negative_prior_prompt="low quality",
    )  # fmt: skip
    ref = k21["decoder"](
        "", image_embeds=out.image_embeds, negative_image_embeds=out.negative_image_embeds,
        negative_prompt="low quality", height=128, width=128, num_inference_steps=3, generator=_gen(77),
    ).images[0]  # fmt: skip
    _same(farm_px, ref)
    handle = alice.submit_job({**K21, "prompt": "two cats", "num_images_per_prompt": 2})
    handle.wait(timeout=120)
    (job,) = handle.results()
    assert job["state"] == "done" and len(job["urls"]) == 2, job["error"]


def test_kandinsky21_img2img_needs_a_square(alice, init_png):
    with pytest.raises(InvalidJob) as exc:
        alice.submit_job(
            {
                **K21,
                "task": "img2img",
                "prompt": "x",
                "image": alice.upload(init_png),
                "strength": 0.6,
                "width": 192,
            }
        )
    assert exc.value.field == "width" and "height == width" in str(exc.value)


def test_chained_jobs_run_without_the_client(alice, pipes, k3):
    """text2img -> img2img (2.2) -> img2img (Kandinsky 3), in one campaign (the guide's chaining)."""
    from diffusers import KandinskyV22Img2ImgPipeline

    jobs = [
        {**BASE, "prompt": "a castle"},
        {
            **BASE,
            "task": "img2img",
            "prompt": "a castle at night",
            "image": "job:0",
            "strength": 0.7,
        },
        {
            **BASE,
            "model": "kandinsky-3",
            "task": "img2img",
            "prompt": "oil painting",
            "image": "job:1",
            "strength": 0.7,
        },
    ]
    handle = alice.submit_campaign(jobs)
    status = handle.wait(timeout=180)
    assert status["counts"]["done"] == 3, status
    results = list(handle.results())
    pictures = [Image.open(io.BytesIO(httpx.get(j["url"]).content)).convert("RGB") for j in results]
    # Job 1 is img2img over job 0's stored image, exactly as in one process.
    emb, neg = _prior(pipes, {**jobs[1], "seed": 77})
    img2img = KandinskyV22Img2ImgPipeline(**pipes["decoder"].components)
    ref1 = img2img(
        image=pictures[0], image_embeds=emb, negative_image_embeds=neg, height=128, width=128,
        strength=0.7, num_inference_steps=3, generator=_gen(77),
    ).images[0]  # fmt: skip
    _same(np.asarray(pictures[1]), ref1)
    ref2 = k3[1](
        "oil painting", image=pictures[1], strength=0.7, height=128, width=128,
        num_inference_steps=3, guidance_scale=3.0, generator=_gen(77),
    ).images[0]  # fmt: skip
    _same(np.asarray(pictures[2]), ref2)


def test_chained_job_must_read_an_earlier_job(alice):
    with pytest.raises(InvalidJob) as exc:
        alice.submit_campaign(
            [{**BASE, "task": "img2img", "prompt": "x", "image": "job:0", "strength": 0.7}]
        )
    assert exc.value.field == "image" and "earlier job" in str(exc.value) and exc.value.index == 0


def test_chained_job_fails_when_its_parent_fails(farm, settings):
    from farm.chains import release_children
    from farm.domain.jobs import JobState

    slow = {**BASE, "prompt": "slow parent", "num_inference_steps": 40, "height": 192, "width": 192}
    campaign = farm.submit(
        [slow, {**BASE, "task": "img2img", "prompt": "x", "image": "job:0", "strength": 0.7}]
    )
    parent, child = campaign.job_ids
    # The parent fails (as a worker's error handler records it): the child can never run.
    moved, _, _ = farm.records.move(
        parent,
        campaign.id,
        JobState.FAILED,
        (JobState.QUEUED, JobState.PRIOR, JobState.DECODING),
        error={"type": "Boom", "message": "x"},
    )
    assert moved
    assert release_children(farm.redis, farm.records, farm.app, parent, campaign.id, ok=False) == [
        child
    ]
    recs = {r.job_id: r for r in campaign.wait(timeout=120)}
    assert recs[child].state == JobState.FAILED and recs[child].error["type"] == "ParentFailed"


@fidelity(("sd-1.5", "text2img"), ("sd-1.5", "img2img"))
def test_stable_diffusion_autopipelines_fidelity(alice, settings, init_png):
    """The Image-to-image guide's AutoPipelines (SD 1.5 family), single-stage through the farm."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

    t2i = AutoPipelineForText2Image.from_pretrained(settings.tiny_dir / "sd15")
    t2i.set_progress_bar_config(disable=True)
    i2i = AutoPipelineForImage2Image.from_pipe(t2i)
    sd = {"model": "sd-1.5", "seed": 5, "num_inference_steps": 4, "height": 64, "width": 96}
    farm_px = _farm_pixels(alice, {**sd, "prompt": "a cat, photo", "negative_prompt": "ugly"})
    ref = t2i(
        "a cat, photo",
        negative_prompt="ugly",
        height=64,
        width=96,
        num_inference_steps=4,
        generator=_gen(5),
    ).images[0]
    _same(farm_px, ref)
    init = Image.open(io.BytesIO(init_png)).convert("RGB").resize((96, 64))
    buf = io.BytesIO()
    init.save(buf, format="PNG")
    farm_px = _farm_pixels(
        alice, {**sd, "task": "img2img", "prompt": "a dog", "image": alice.upload(buf.getvalue())}
    )
    ref = i2i("a dog", image=init, strength=0.8, num_inference_steps=4, generator=_gen(5)).images[0]
    _same(farm_px, ref)


def test_size_multiple_is_per_model(alice):
    with pytest.raises(InvalidJob, match="multiple of 64 for kandinsky-2.2"):
        alice.submit_job({**BASE, "prompt": "x", "height": 72})
    with pytest.raises(InvalidJob, match="multiple of 8 for sd-1.5"):
        alice.submit_job({"model": "sd-1.5", "prompt": "x", "height": 68})


def test_single_stage_img2img_size_must_match_the_input(alice, init_png):
    with pytest.raises(InvalidJob) as exc:
        alice.submit_job(
            {
                "model": "sd-1.5",
                "task": "img2img",
                "prompt": "x",
                "image": alice.upload(init_png),
                "width": 256,
                "height": 256,
            }
        )
    assert exc.value.field == "image" and "it is 128x128, the job asks 256x256" in str(exc.value)


@pytest.fixture(scope="module")
def controlnet(stack, settings):
    from diffusers import (
        KandinskyV22ControlnetImg2ImgPipeline,
        KandinskyV22ControlnetPipeline,
        KandinskyV22PriorEmb2EmbPipeline,
    )
    from transformers import pipeline

    t2i = KandinskyV22ControlnetPipeline.from_pretrained(settings.tiny_dir / "controlnet")
    i2i = KandinskyV22ControlnetImg2ImgPipeline.from_pretrained(settings.tiny_dir / "controlnet")
    emb2emb = KandinskyV22PriorEmb2EmbPipeline.from_pretrained(settings.tiny_dir / "prior")
    for p in (t2i, i2i, emb2emb):
        p.set_progress_bar_config(disable=True)
    return {
        "t2i": t2i,
        "i2i": i2i,
        "emb2emb": emb2emb,
        "depth": pipeline("depth-estimation", model=str(settings.tiny_dir / "depth")),
    }


def _guide_hint(image, depth_estimator):
    """The guide's make_hint, verbatim in substance."""
    image = depth_estimator(image)["depth"]
    image = np.array(image)
    image = image[:, :, None]
    image = np.concatenate([image, image, image], axis=2)
    detected_map = torch.from_numpy(image).float() / 255.0
    return detected_map.permute(2, 0, 1).unsqueeze(0)


@fidelity(("kandinsky-2.2", "controlnet-depth"))
def test_controlnet_depth_text2img_with_estimated_hint(alice, pipes, controlnet, init_png):
    img = Image.open(io.BytesIO(init_png)).convert("RGB")
    spec = {
        **BASE,
        "task": "controlnet-depth",
        "prompt": "A robot, 4k photo",
        "negative_prompt": "lowres",
        "image": alice.upload(init_png),
    }
    farm_px = _farm_pixels(alice, spec)
    hint = _guide_hint(img, controlnet["depth"])
    emb, neg = _prior(pipes, spec)
    ref = controlnet["t2i"](
        image_embeds=emb, negative_image_embeds=neg, hint=hint, num_inference_steps=3,
        generator=_gen(77), height=128, width=128,
    ).images[0]  # fmt: skip
    _same(farm_px, ref)


def test_controlnet_depth_with_uploaded_hint(alice, pipes, controlnet):
    depth = np.tile(np.linspace(0, 255, 128, dtype=np.uint8), (128, 1))
    depth_png = _png(depth, "L")
    spec = {**BASE, "task": "controlnet-depth", "prompt": "a room", "hint": alice.upload(depth_png)}
    farm_px = _farm_pixels(alice, spec)
    hint = (
        torch.from_numpy(np.concatenate([depth[:, :, None]] * 3, axis=2))
        .float()
        .div(255)
        .permute(2, 0, 1)
        .unsqueeze(0)
    )
    emb, neg = _prior(pipes, spec)
    ref = controlnet["t2i"](
        image_embeds=emb, negative_image_embeds=neg, hint=hint, num_inference_steps=3,
        generator=_gen(77), height=128, width=128,
    ).images[0]  # fmt: skip
    _same(farm_px, ref)


@fidelity(("kandinsky-2.2", "controlnet-depth-img2img"))
def test_controlnet_depth_img2img(alice, controlnet, init_png):
    img = Image.open(io.BytesIO(init_png)).convert("RGB")
    spec = {
        **BASE, "task": "controlnet-depth-img2img", "prompt": "A robot, 4k photo", "negative_prompt": "lowres",
        "image": alice.upload(init_png), "prior_strength": 0.85, "strength": 0.5,
    }  # fmt: skip
    farm_px = _farm_pixels(alice, spec)
    hint = _guide_hint(img, controlnet["depth"])
    g = _gen(77)  # one generator for both prior calls, as in the guide
    img_emb = controlnet["emb2emb"](
        prompt="A robot, 4k photo", image=img, strength=0.85, generator=g, num_inference_steps=2
    )
    neg_emb = controlnet["emb2emb"](
        prompt="lowres", image=img, strength=1, generator=g, num_inference_steps=2
    )
    ref = controlnet["i2i"](
        image=img, strength=0.5, image_embeds=img_emb.image_embeds, negative_image_embeds=neg_emb.image_embeds,
        hint=hint, num_inference_steps=3, generator=_gen(77), height=128, width=128,
    ).images[0]  # fmt: skip
    _same(farm_px, ref)


def test_controlnet_inputs_are_checked(alice, init_png):
    with pytest.raises(InvalidJob) as exc:
        alice.submit_job({**BASE, "task": "controlnet-depth", "prompt": "x"})
    assert exc.value.field == "image" and "or a hint" in str(exc.value)
    with pytest.raises(InvalidJob) as exc:
        alice.submit_job(
            {
                **BASE,
                "task": "controlnet-depth",
                "prompt": "x",
                "image": alice.upload(init_png),
                "width": 192,
            }
        )
    assert exc.value.field == "image" and "it is 128x128, the job asks 192x128" in str(exc.value)


@fidelity(
    ("kandinsky-2.2-auto", "text2img"),
    ("kandinsky-2.2-auto", "img2img"),
    ("kandinsky-2.2-auto", "inpaint"),
)
def test_kandinsky22_autopipelines_single_stage(alice, settings, init_png):
    """The Image-to-image guide's AutoPipelineFor{Text2Image,Image2Image,Inpainting} with Kandinsky 2.2."""
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        AutoPipelineForText2Image,
    )

    t2i = AutoPipelineForText2Image.from_pretrained(settings.tiny_dir / "decoder")
    inpaint = AutoPipelineForInpainting.from_pretrained(settings.tiny_dir / "inpaint")
    for p in (t2i, inpaint):
        p.set_progress_bar_config(disable=True)
    i2i = AutoPipelineForImage2Image.from_pipe(t2i)
    auto = {**BASE, "model": "kandinsky-2.2-auto", "negative_prompt": "low quality"}
    common = {
        "negative_prompt": "low quality",
        "prior_num_inference_steps": 2,
        "num_inference_steps": 3,
        "height": 128,
        "width": 128,
    }
    farm_px = _farm_pixels(alice, {**auto, "prompt": "a robot"})
    _same(farm_px, t2i(prompt="a robot", generator=_gen(77), **common).images[0])
    init = Image.open(io.BytesIO(init_png)).convert("RGB")
    image_ref = alice.upload(init_png)
    farm_px = _farm_pixels(
        alice, {**auto, "task": "img2img", "prompt": "a robot", "image": image_ref, "strength": 0.7}
    )
    _same(
        farm_px,
        i2i(prompt="a robot", image=init, strength=0.7, generator=_gen(77), **common).images[0],
    )
    mask_png = _mask(slice(0, 64), slice(0, 128))
    farm_px = _farm_pixels(
        alice,
        {
            **auto,
            "task": "inpaint",
            "prompt": "a hat",
            "image": image_ref,
            "mask": alice.upload(mask_png),
        },
    )
    mask = Image.open(io.BytesIO(mask_png)).convert("L")
    _same(
        farm_px,
        inpaint(prompt="a hat", image=init, mask_image=mask, generator=_gen(77), **common).images[
            0
        ],
    )


@fidelity(("sdxl-refiner", "img2img"))
def test_sdxl_refiner_img2img_fidelity(alice, settings, init_png):
    """The Image-to-image guide's SDXL refiner via AutoPipelineForImage2Image, single stage."""
    from diffusers import AutoPipelineForImage2Image

    refiner = AutoPipelineForImage2Image.from_pretrained(settings.tiny_dir / "sdxl_refiner")
    refiner.set_progress_bar_config(disable=True)
    spec = {"model": "sdxl-refiner", "task": "img2img", "prompt": "a cat, detailed", "seed": 3,
            "image": alice.upload(init_png), "strength": 0.5, "num_inference_steps": 4, "height": 128, "width": 128}  # fmt: skip
    farm_px = _farm_pixels(alice, spec)
    init = Image.open(io.BytesIO(init_png)).convert("RGB")
    ref = refiner(
        "a cat, detailed", image=init, strength=0.5, num_inference_steps=4, generator=_gen(3)
    ).images[0]
    _same(farm_px, ref)
    with pytest.raises(InvalidJob, match="sdxl-refiner does not support 'text2img'"):
        alice.submit_job({"model": "sdxl-refiner", "prompt": "x"})


def test_inpainting_mask_as_a_numpy_array(alice, pipes, init_png):
    """The guides build masks with NumPy (1 = repaint): upload the array, get the guide's picture."""
    mask = np.zeros((128, 128), dtype=np.float32)
    mask[:40, 30:-30] = 1
    spec = {
        **BASE,
        "task": "inpaint",
        "prompt": "a hat",
        "image": alice.upload(init_png),
        "mask": alice.upload(mask),
    }
    farm_px = _farm_pixels(alice, spec)
    emb, neg = _prior(pipes, spec)
    ref = pipes["inpaint"](
        image=Image.open(io.BytesIO(init_png)).convert("RGB"), mask_image=mask,
        image_embeds=emb, negative_image_embeds=neg, height=128, width=128,
        num_inference_steps=3, generator=_gen(77),
    ).images[0]  # fmt: skip
    _same(farm_px, ref)
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)  # a pickle inside .npy
    with pytest.raises(InvalidJob, match="not a plain NumPy array"):
        alice.upload(buf.getvalue())
    with pytest.raises(InvalidJob, match=r"within \[0, 1\]"):
        alice.upload(np.full((8, 8), 2.0, dtype=np.float32))


@pytest.mark.parametrize(
    ("family", "task"),
    [(f, t) for f, family in REGISTRY.items() for t in family.tasks],
)
def test_every_capability_of_the_registry_has_a_fidelity_test(family, task):
    assert (family, task) in FIDELITY, f"no pixel-fidelity test renders {family} {task}"
