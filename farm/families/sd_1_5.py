"""Stable Diffusion 1.5 through diffusers' AutoPipelines (the Image-to-image guide): one stage."""

from __future__ import annotations

import farm.families.tiny as tiny
from farm.families.base import Family, Limits, Part, Pipe, Task

MODEL = Part(
    name="sd15",
    stage="decoder",
    hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
    load_as="StableDiffusionPipeline",
    accepts=("StableDiffusionPipeline",),
    setting="sd15_model",
    tiny="sd15",
    build_tiny=tiny.build_sd15,
    description="Stable Diffusion 1.5 (single stage)",
)

FAMILY = Family(
    name="sd-1.5",
    title="Stable Diffusion 1.5",
    parts=(MODEL,),
    tasks={
        "text2img": Task(decoder=Pipe("sd15", "StableDiffusionPipeline")),
        "img2img": Task(decoder=Pipe("sd15", "StableDiffusionImg2ImgPipeline")),
    },
    limits=Limits(size_multiple=8, min_prior_steps=0),  # the SD VAE downsamples by 8
    defaults={
        "*": {"guidance_scale": 7.5, "num_inference_steps": 50, "height": 512, "width": 512},
        "img2img": {"strength": 0.8},
    },
)
