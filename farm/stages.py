"""The two stages as pure functions over a loaded pipeline. They know nothing of Celery or IO.

Seeding: each stage seeds its own CPU ``torch.Generator`` with the job's seed, the way diffusers'
own Kandinsky integration tests call the two pipelines, so a stage re-run on any worker (or in one
process) gives the same tensors.
"""

from __future__ import annotations

import io
import json

import torch
from PIL import Image, PngImagePlugin

from farm.embeddings import Embeddings
from farm.jobs import JobSpec


def generator(seed: int) -> torch.Generator:
    # A CPU generator gives the same noise whatever device the pipeline runs on.
    return torch.Generator("cpu").manual_seed(seed)


def run_prior(pipe, spec: JobSpec) -> Embeddings:
    """Prompt -> image embeddings (the CLIP prior)."""
    out = pipe(
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt,
        guidance_scale=spec.prior_guidance_scale,
        num_inference_steps=spec.prior_num_inference_steps,
        generator=generator(spec.seed),
    )
    return Embeddings(out.image_embeds, out.negative_image_embeds)


def run_decoder(pipe, spec: JobSpec, emb: Embeddings) -> Image.Image:
    """Image embeddings -> picture (UNet + MoVQ)."""
    device, dtype = pipe.device, pipe.dtype
    out = pipe(
        image_embeds=emb.image_embeds.to(device, dtype),
        negative_image_embeds=emb.negative_image_embeds.to(device, dtype),
        height=spec.height,
        width=spec.width,
        guidance_scale=spec.guidance_scale,
        num_inference_steps=spec.num_inference_steps,
        generator=generator(spec.seed),
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
