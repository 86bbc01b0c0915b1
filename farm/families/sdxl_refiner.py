"""The SDXL refiner (image-to-image only) through AutoPipelineForImage2Image: one stage."""

from __future__ import annotations

import farm.families.tiny as tiny
from farm.families.base import Family, Limits, Part, Pipe, Task

MODEL = Part(
    name="refiner",
    stage="decoder",
    hub_id="stabilityai/stable-diffusion-xl-refiner-1.0",
    load_as="AutoPipelineForImage2Image",
    accepts=("StableDiffusionXLImg2ImgPipeline",),
    setting="sdxl_refiner_model",
    tiny="sdxl_refiner",
    build_tiny=tiny.build_sdxl_refiner,
    description="SDXL refiner (img2img, single stage)",
)

FAMILY = Family(
    name="sdxl-refiner",
    title="SDXL refiner",
    parts=(MODEL,),
    tasks={"img2img": Task(decoder=Pipe("refiner", "AutoPipelineForImage2Image"))},
    limits=Limits(size_multiple=8, min_prior_steps=0),
    defaults={
        "*": {"guidance_scale": 5.0, "num_inference_steps": 50, "height": 1024, "width": 1024}
    },
)
