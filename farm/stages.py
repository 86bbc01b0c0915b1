"""The two stages as pure functions over loaded pipelines. They know nothing of Celery or IO.

Seeding: each stage seeds its own CPU ``torch.Generator`` with the job's seed, the way diffusers'
own Kandinsky integration tests call the two pipelines, so a stage re-run on any worker (or in one
process) gives the same tensors. Input images arrive already decoded (``images`` by reference).
"""

from __future__ import annotations

import io
import json

import torch
from PIL import Image, PngImagePlugin

from farm.domain.jobs import JobSpec
from farm.stores.embeddings import Embeddings

SCHEDULERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}


def generator(seed: int) -> torch.Generator:
    # A CPU generator gives the same noise whatever device the pipeline runs on.
    return torch.Generator("cpu").manual_seed(seed)


def with_scheduler(pipe, name: str):
    """The pipeline with another scheduler, sharing every weight (a new object, not a mutation)."""
    if name == "default":
        return pipe
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name])
    return type(pipe)(**{**pipe.components, "scheduler": cls.from_config(pipe.scheduler.config)})


def run_prior(pipe, spec: JobSpec, images: dict[str, Image.Image] | None = None) -> Embeddings:
    """Prompt (or a weighted mix of prompts and images) -> image embeddings (the CLIP prior)."""
    if spec.task == "interpolate":
        items = [i.text if i.text is not None else images[i.image] for i in spec.interpolate]
        out = pipe.interpolate(
            items,
            [i.weight for i in spec.interpolate],
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


def make_hint(depth: Image.Image) -> torch.Tensor:
    """A depth map as the ControlNet hint tensor (1, 3, H, W), exactly as the guide's make_hint."""
    import numpy as np

    array = np.array(depth.convert("L"))[:, :, None]
    array = np.concatenate([array, array, array], axis=2)
    return (torch.from_numpy(array).float() / 255.0).permute(2, 0, 1).unsqueeze(0)


def run_controlnet_prior(pipe, depth, spec: JobSpec, images: dict[str, Image.Image]) -> Embeddings:
    """ControlNet jobs on the prior worker: embeddings (text, or image+text for img2img) + hint.

    ``pipe`` is the prior for ``controlnet-depth`` and the Emb2Emb prior for the img2img variant
    (the family's task table says which). The depth hint is estimated here (transformers' depth-estimation pipeline) unless the job
    brought its own; it travels to the decoder inside the stored safetensors blob.
    """
    if spec.hint is not None:
        hint = make_hint(images[spec.hint])
    else:
        hint = make_hint(depth(images[spec.image])["depth"])
    if spec.task == "controlnet-depth":
        emb = run_prior(pipe, spec)
        return Embeddings(emb.image_embeds, emb.negative_image_embeds, hint)
    # img2img, as the guide: one generator for both Emb2Emb calls; the negative side from the
    # negative prompt at strength 1.
    g = generator(spec.seed)
    common = {
        "image": images[spec.image],
        "generator": g,
        "num_inference_steps": spec.prior_num_inference_steps,
        "guidance_scale": spec.prior_guidance_scale,
        "num_images_per_prompt": spec.num_images_per_prompt,
    }
    img_emb = pipe(prompt=spec.prompt, strength=spec.prior_strength, **common)
    neg_emb = pipe(prompt=spec.negative_prompt or "", strength=1.0, **common)
    return Embeddings(img_emb.image_embeds, neg_emb.image_embeds, hint)


def run_decoder(
    pipe, spec: JobSpec, emb: Embeddings, images: dict[str, Image.Image] | None = None
) -> list[Image.Image]:
    """Image embeddings (+ input image / mask) -> pictures (UNet + MoVQ), one per embedding row.

    The prior already made one embedding per requested image, so the decoder is called with
    num_images_per_prompt=1 on the whole batch: diffusers expands image_embeds for
    num_images_per_prompt only when guidance is on (diffusers#13596), and a batch of rows never
    depends on that.
    """
    device, dtype = pipe.device, pipe.dtype
    kwargs = {}
    n = emb.image_embeds.shape[0]
    if _takes(pipe, "prompt"):
        # The 2.1 decoder has its own multilingual text encoder: it reads the prompt too.
        # One prompt per embedding row, like the images and masks below.
        kwargs["prompt"] = spec.prompt if n == 1 else [spec.prompt] * n
        neg = spec.negative_prompt
        kwargs["negative_prompt"] = neg if n == 1 or neg is None else [neg] * n
    # One input (and mask) per embedding row, explicitly: the pipelines' own expansion of a single
    # image/mask over a batch is where diffusers#13597 lives.
    if spec.task in ("img2img", "inpaint", "controlnet-depth-img2img"):
        kwargs["image"] = images[spec.image] if n == 1 else [images[spec.image]] * n
    if spec.task in ("img2img", "controlnet-depth-img2img"):
        kwargs["strength"] = spec.strength
    if spec.task.startswith("controlnet"):
        kwargs["hint"] = emb.hint.to(device, dtype).repeat(n, 1, 1, 1)
    if spec.task == "inpaint":
        # White = repaint, as in the guides.
        kwargs["mask_image"] = images[spec.mask] if n == 1 else [images[spec.mask]] * n
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


def run_single(
    pipe, spec: JobSpec, images: dict[str, Image.Image] | None = None
) -> list[Image.Image]:
    """A single-stage job (Kandinsky 3, SD, the 2.2 AutoPipelines): prompt (+ inputs) -> pictures."""
    kwargs = {}
    if spec.task == "img2img":
        kwargs = {"image": images[spec.image], "strength": spec.strength}
    if spec.task == "inpaint":
        kwargs = {"image": images[spec.image], "mask_image": images[spec.mask]}
    if _takes(pipe, "prior_guidance_scale"):
        # The combined pipelines run the prior too (on the same generator, as diffusers does).
        kwargs["prior_guidance_scale"] = spec.prior_guidance_scale
        kwargs["prior_num_inference_steps"] = spec.prior_num_inference_steps
    if _takes(pipe, "height"):
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


def _takes(pipe, name: str) -> bool:
    """Whether the pipeline's call takes ``name`` (the pipelines, not the farm, say what they read)."""
    import inspect

    return name in inspect.signature(pipe.__call__).parameters


def png_bytes(image: Image.Image, parameters: dict | None = None) -> bytes:
    """Encode as PNG, with the job's parameters in a text chunk so a file explains itself."""
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("farm", json.dumps(parameters, ensure_ascii=False, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
