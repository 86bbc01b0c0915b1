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

from farm.embeddings import Embeddings
from farm.jobs import JobSpec

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
        )
    else:
        out = pipe(
            prompt=spec.prompt,
            negative_prompt=spec.negative_prompt,
            guidance_scale=spec.prior_guidance_scale,
            num_inference_steps=spec.prior_num_inference_steps,
            generator=generator(spec.seed),
        )
    return Embeddings(out.image_embeds, out.negative_image_embeds)


def run_decoder(
    pipe, spec: JobSpec, emb: Embeddings, images: dict[str, Image.Image] | None = None
) -> Image.Image:
    """Image embeddings (+ input image / mask) -> picture (UNet + MoVQ)."""
    device, dtype = pipe.device, pipe.dtype
    kwargs = {}
    if spec.task in ("img2img", "inpaint"):
        kwargs["image"] = images[spec.image]
    if spec.task == "img2img":
        kwargs["strength"] = spec.strength
    if spec.task == "inpaint":
        kwargs["mask_image"] = images[spec.mask]  # white = repaint, as in the guides
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
    return out.images[0]


def run_single(pipe, spec: JobSpec, images: dict[str, Image.Image] | None = None) -> Image.Image:
    """A single-stage model (Kandinsky 3): prompt (+ input image) -> picture."""
    kwargs = {}
    if spec.task == "img2img":
        kwargs = {"image": images[spec.image], "strength": spec.strength}
    out = with_scheduler(pipe, spec.scheduler)(
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt,
        height=spec.height,
        width=spec.width,
        guidance_scale=spec.guidance_scale,
        num_inference_steps=spec.num_inference_steps,
        generator=generator(spec.seed),
        **kwargs,
    )
    return out.images[0]


def png_bytes(image: Image.Image, parameters: dict | None = None) -> bytes:
    """Encode as PNG, with the job's parameters in a text chunk so a file explains itself."""
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("farm", json.dumps(parameters, ensure_ascii=False, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
