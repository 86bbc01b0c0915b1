"""The two stages as pure functions over loaded pipelines. They know nothing of Celery or IO.

Every stage runs under ``torch.inference_mode`` (no autograd bookkeeping; the same kernels, so
the same pixels). Seeding: each stage seeds its own CPU ``torch.Generator`` with the job's seed, the way diffusers'
own Kandinsky integration tests call the two pipelines, so a stage re-run on any worker (or in one
process) gives the same tensors. Input images arrive already decoded (``images`` by reference).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, PngImagePlugin

from farm.domain.jobs import JobSpec
from farm.rows import in_groups, padded, row_groups, takes
from farm.stores.embeddings import Embeddings

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

SCHEDULERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}


def generator(seed: int | None) -> torch.Generator:
    # A CPU generator gives the same noise whatever device the pipeline runs on.
    if seed is None:
        raise ValueError("a job reached a stage without a seed (submission draws one)")
    return torch.Generator("cpu").manual_seed(seed)


# What validation and submission guarantee, said once: a job reaching a stage has its seed
# (``generator``), its task's inputs among ``images``, and, for ControlNet, the prior's hint.


def _input(images: Mapping[str, Image.Image] | None, ref: str | None) -> Image.Image:
    if images is None or ref is None:
        raise ValueError(f"a job's input image {ref!r} was not handed to the stage")
    return images[ref]


def _hint(emb: Embeddings) -> torch.Tensor:
    if emb.hint is None:
        raise ValueError("a ControlNet job's embeddings carry no depth hint")
    return emb.hint


def with_scheduler(pipe: DiffusionPipeline, name: str) -> DiffusionPipeline:
    """The pipeline with another scheduler, sharing every weight (a new object, not a mutation)."""
    if name == "default":
        return pipe
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name])
    return type(pipe)(**{**pipe.components, "scheduler": cls.from_config(pipe.scheduler.config)})


@torch.inference_mode()
def run_prior(
    pipe: DiffusionPipeline, spec: JobSpec, images: dict[str, Image.Image] | None = None
) -> Embeddings:
    """Prompt (or a weighted mix of prompts and images) -> image embeddings (the CLIP prior)."""
    if spec.task == "interpolate":
        mix = spec.interpolate or []
        items = [i.text if i.text is not None else _input(images, i.image) for i in mix]
        out = pipe.interpolate(
            items,
            [i.weight for i in mix],
            num_inference_steps=spec.prior_num_inference_steps,
            generator=generator(spec.seed),
            negative_prior_prompt=spec.negative_prompt,
            guidance_scale=spec.prior_guidance_scale,
            num_images_per_prompt=spec.num_images_per_prompt,
        )
    else:
        out = pipe(
            prompt=spec.prompt,
            negative_prompt=spec.negative_prompt,
            guidance_scale=spec.prior_guidance_scale,
            num_inference_steps=spec.prior_num_inference_steps,
            generator=generator(spec.seed),
            num_images_per_prompt=spec.num_images_per_prompt,
        )
    return Embeddings(out.image_embeds, out.negative_image_embeds)


TEXT_PRIOR_TASKS = ("text2img", "img2img", "inpaint")  # the prior reads only the prompt


def run_prior_batch(pipe: DiffusionPipeline, specs: list[JobSpec]) -> list[Embeddings]:
    """Several jobs' prompts through the prior: one call per row, so row i *is*
    ``run_prior(pipe, specs[i])``, bit for bit, whatever jobs share its message.

    One batched call made a row depend on its batch mates: a batched CLIP text encoder and
    prior transformer round differently from a lone call (measured on CPU: up to 2e-6 in the
    embeddings when no negative prompt is given or guidance is off; 3/255 in the picture
    reported at full size), and the decoder carries that into the image. A prior call costs a
    fraction of a decoder render (``bench/batch_invariance.py`` prints both).
    """
    return [run_prior(pipe, spec) for spec in specs]


def cache_zero_embed(pipe: DiffusionPipeline) -> None:
    """Keep the prior's negative embedding for "no negative prompt" (the image encoder on a zero
    image: a constant per model) instead of recomputing it every call."""
    if getattr(pipe, "_farm_zero_cache", None) is not None or not hasattr(pipe, "get_zero_embed"):
        return
    cache: dict = {}
    original = pipe.get_zero_embed

    def get_zero_embed(batch_size=1, device=None):
        key = (str(device or pipe.device), pipe.image_encoder.dtype)
        if key not in cache:
            cache[key] = original(1, device=device)
        return cache[key].repeat(batch_size, 1)

    pipe.get_zero_embed = get_zero_embed
    pipe._farm_zero_cache = cache


def make_hint(depth: Image.Image) -> torch.Tensor:
    """A depth map as the ControlNet hint tensor (1, 3, H, W), exactly as the guide's make_hint."""
    import numpy as np

    array = np.array(depth.convert("L"))[:, :, None]
    array = np.concatenate([array, array, array], axis=2)
    return (torch.from_numpy(array).float() / 255.0).permute(2, 0, 1).unsqueeze(0)


@torch.inference_mode()
def run_controlnet_prior(
    pipe: DiffusionPipeline, depth: Any, spec: JobSpec, images: dict[str, Image.Image]
) -> Embeddings:
    """ControlNet jobs on the prior worker: embeddings (text, or image+text for img2img) + hint.

    ``pipe`` is the prior for ``controlnet-depth`` and the Emb2Emb prior for the img2img variant
    (the family's task table says which). The depth hint is estimated here (transformers' depth-estimation pipeline) unless the job
    brought its own; it travels to the decoder inside the stored safetensors blob.
    """
    if spec.hint is not None:
        hint = make_hint(images[spec.hint])
    else:
        hint = make_hint(depth(_input(images, spec.image))["depth"])
    if spec.task == "controlnet-depth":
        emb = run_prior(pipe, spec)
        return Embeddings(emb.image_embeds, emb.negative_image_embeds, hint)
    # img2img, as the guide: one generator for both Emb2Emb calls; the negative side from the
    # negative prompt at strength 1.
    g = generator(spec.seed)
    common = {
        "image": _input(images, spec.image),
        "generator": g,
        "num_inference_steps": spec.prior_num_inference_steps,
        "guidance_scale": spec.prior_guidance_scale,
        "num_images_per_prompt": spec.num_images_per_prompt,
    }
    img_emb = pipe(prompt=spec.prompt, strength=spec.prior_strength, **common)
    neg_emb = pipe(prompt=spec.negative_prompt or "", strength=1.0, **common)
    return Embeddings(img_emb.image_embeds, neg_emb.image_embeds, hint)


@torch.inference_mode()
def run_decoder(
    pipe: DiffusionPipeline,
    spec: JobSpec,
    emb: Embeddings,
    images: dict[str, Image.Image] | None = None,
) -> list[Image.Image]:
    """Image embeddings (+ input image / mask) -> pictures (UNet + MoVQ), one per embedding row.

    The prior already made one embedding per requested image, so the decoder is called with
    num_images_per_prompt=1 on the whole batch: diffusers expands image_embeds for
    num_images_per_prompt only when guidance is on (diffusers#13596), and a batch of rows never
    depends on that.
    """
    device, dtype = pipe.device, pipe.dtype
    kwargs: dict[str, Any] = {}
    n = emb.image_embeds.shape[0]
    if takes(pipe, "prompt"):
        # The 2.1 decoder has its own multilingual text encoder: it reads the prompt too.
        # One prompt per embedding row, like the images and masks below.
        kwargs["prompt"] = spec.prompt if n == 1 else [spec.prompt] * n
        neg = spec.negative_prompt
        kwargs["negative_prompt"] = neg if n == 1 or neg is None else [neg] * n
    # One input (and mask) per embedding row, explicitly: the pipelines' own expansion of a single
    # image/mask over a batch is where diffusers#13597 lives.
    if spec.task in ("img2img", "inpaint", "controlnet-depth-img2img"):
        image = _input(images, spec.image)
        kwargs["image"] = image if n == 1 else [image] * n
    if spec.task in ("img2img", "controlnet-depth-img2img"):
        kwargs["strength"] = spec.strength
    if spec.task.startswith("controlnet"):
        kwargs["hint"] = _hint(emb).to(device, dtype).repeat(n, 1, 1, 1)
    if spec.task == "inpaint":
        # White = repaint, as in the guides.
        mask = _input(images, spec.mask)
        kwargs["mask_image"] = mask if n == 1 else [mask] * n
    out = with_scheduler(pipe, spec.scheduler)(
        image_embeds=emb.image_embeds.to(device, dtype),
        negative_image_embeds=emb.negative_image_embeds.to(device, dtype),
        height=spec.height,
        width=spec.width,
        guidance_scale=spec.guidance_scale,
        num_inference_steps=spec.num_inference_steps,
        generator=generator(spec.seed),
        **kwargs,
    )
    return out.images


@torch.inference_mode()
def run_decoder_batch(
    pipe: DiffusionPipeline,
    specs: list[JobSpec],
    embs: list[Embeddings],
    images: dict[str, Image.Image],
    *,
    pad: bool = False,
) -> list[list[Image.Image]]:
    """Several compatible jobs rendered in one pipeline call, one generator per row.

    Compatible (``farm.domain.batching``): same family, task, size, steps, guidance, scheduler and
    strength, one image each. Rows the pipeline would not render as alone share no call
    (``row_groups``). Row i equals job i rendered alone, up to float rounding in batched kernels
    (tested: at most 1/255 per pixel). One job runs exactly as ``run_decoder``.
    """
    if len(specs) == 1:
        return [run_decoder(pipe, specs[0], embs[0], images)]
    groups = row_groups(pipe, specs, images, embs)
    if len(groups) > 1:
        return in_groups(
            groups,
            lambda g: run_decoder_batch(
                pipe, [specs[i] for i in g], [embs[i] for i in g], images, pad=pad
            ),
        )
    real = len(specs)
    if pad:
        real, specs, embs = padded(specs, embs)
    spec = specs[0]
    device, dtype = pipe.device, pipe.dtype
    kwargs: dict[str, Any] = {}
    if takes(pipe, "prompt"):
        kwargs["prompt"] = [s.prompt for s in specs]
        if spec.negative_prompt is not None:
            kwargs["negative_prompt"] = [s.negative_prompt for s in specs]
    if spec.task in ("img2img", "inpaint", "controlnet-depth-img2img"):
        kwargs["image"] = [_input(images, s.image) for s in specs]
    if spec.task in ("img2img", "controlnet-depth-img2img"):
        kwargs["strength"] = spec.strength
    if spec.task.startswith("controlnet"):
        kwargs["hint"] = torch.cat([_hint(e) for e in embs]).to(device, dtype)
    if spec.task == "inpaint":
        kwargs["mask_image"] = [_input(images, s.mask) for s in specs]
    out = with_scheduler(pipe, spec.scheduler)(
        image_embeds=torch.cat([e.image_embeds for e in embs]).to(device, dtype),
        negative_image_embeds=torch.cat([e.negative_image_embeds for e in embs]).to(device, dtype),
        height=spec.height,
        width=spec.width,
        guidance_scale=spec.guidance_scale,
        num_inference_steps=spec.num_inference_steps,
        generator=[generator(s.seed) for s in specs],
        **kwargs,
    )
    return [[image] for image in out.images[:real]]


@torch.inference_mode()
def run_single_batch(
    pipe: DiffusionPipeline,
    specs: list[JobSpec],
    images: dict[str, Image.Image],
    *,
    pad: bool = False,
) -> list[list[Image.Image]]:
    """Several compatible single-stage jobs in one call, one generator per row (as above)."""
    if len(specs) == 1:
        return [run_single(pipe, specs[0], images)]
    groups = row_groups(pipe, specs, images)
    if len(groups) > 1:
        return in_groups(
            groups, lambda g: run_single_batch(pipe, [specs[i] for i in g], images, pad=pad)
        )
    real = len(specs)
    if pad:
        real, specs = padded(specs)
    spec = specs[0]
    kwargs: dict[str, Any] = {}
    if spec.task == "img2img":
        kwargs = {"image": [_input(images, s.image) for s in specs], "strength": spec.strength}
    if spec.task == "inpaint":
        kwargs = {
            "image": [_input(images, s.image) for s in specs],
            "mask_image": [_input(images, s.mask) for s in specs],
        }
    if takes(pipe, "prior_guidance_scale"):
        kwargs["prior_guidance_scale"] = spec.prior_guidance_scale
        kwargs["prior_num_inference_steps"] = spec.prior_num_inference_steps
    if takes(pipe, "height"):
        kwargs.update(height=spec.height, width=spec.width)
    out = with_scheduler(pipe, spec.scheduler)(
        prompt=[s.prompt for s in specs],
        negative_prompt=None
        if spec.negative_prompt is None
        else [s.negative_prompt for s in specs],
        guidance_scale=spec.guidance_scale,
        num_inference_steps=spec.num_inference_steps,
        generator=[generator(s.seed) for s in specs],
        num_images_per_prompt=1,
        **kwargs,
    )
    return [[image] for image in out.images[:real]]


@torch.inference_mode()
def run_single(
    pipe: DiffusionPipeline, spec: JobSpec, images: dict[str, Image.Image] | None = None
) -> list[Image.Image]:
    """A single-stage job (Kandinsky 3, SD, the 2.2 AutoPipelines): prompt (+ inputs) -> pictures."""
    kwargs: dict[str, Any] = {}
    if spec.task == "img2img":
        kwargs = {"image": _input(images, spec.image), "strength": spec.strength}
    if spec.task == "inpaint":
        kwargs = {"image": _input(images, spec.image), "mask_image": _input(images, spec.mask)}
    if takes(pipe, "prior_guidance_scale"):
        # The combined pipelines run the prior too (on the same generator, as diffusers does).
        kwargs["prior_guidance_scale"] = spec.prior_guidance_scale
        kwargs["prior_num_inference_steps"] = spec.prior_num_inference_steps
    if takes(pipe, "height"):
        # img2img pipelines of SD / SDXL / Kandinsky 3 take no size: they render the input's.
        kwargs.update(height=spec.height, width=spec.width)
    out = with_scheduler(pipe, spec.scheduler)(
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt,
        guidance_scale=spec.guidance_scale,
        num_inference_steps=spec.num_inference_steps,
        generator=generator(spec.seed),
        num_images_per_prompt=spec.num_images_per_prompt,
        **kwargs,
    )
    return out.images


def png_bytes(image: Image.Image, parameters: dict[str, Any] | None = None) -> bytes:
    """Encode as PNG, with the job's parameters in a text chunk so a file explains itself."""
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("farm", json.dumps(parameters, ensure_ascii=False, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
