"""Kandinsky 3: one stage (T5 encoder + UNet + MoVQ), no prior."""

from __future__ import annotations

import farm.families.tiny as tiny
from farm.families.base import Family, Limits, Part, Pipe, Task

MODEL = Part(
    name="kandinsky3",
    stage="decoder",
    hub_id="kandinsky-community/kandinsky-3",
    load_as="Kandinsky3Pipeline",
    accepts=("Kandinsky3Pipeline",),
    setting="kandinsky3_model",
    tiny="kandinsky3",
    build_tiny=tiny.build_k3,
    description="Kandinsky 3 (single stage)",
)

FAMILY = Family(
    limits=Limits(min_prior_steps=0),  # no prior
    name="kandinsky-3",
    title="Kandinsky 3",
    parts=(MODEL,),
    tasks={
        "text2img": Task(decoder=Pipe("kandinsky3", "Kandinsky3Pipeline")),
        "img2img": Task(decoder=Pipe("kandinsky3", "Kandinsky3Img2ImgPipeline")),
    },
    defaults={
        "*": {"guidance_scale": 3.0, "num_inference_steps": 25, "height": 1024, "width": 1024}
    },
)
