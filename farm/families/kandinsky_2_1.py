"""Kandinsky 2.1: CLIP prior -> decoder with its own multilingual text encoder (reads the prompt)."""

from __future__ import annotations

from typing import Any

import farm.families.tiny as tiny
from farm.families.base import Family, Part, Pipe, Task

PRIOR = Part(
    name="prior",
    stage="prior",
    hub_id="kandinsky-community/kandinsky-2-1-prior",
    load_as="KandinskyPriorPipeline",
    accepts=("KandinskyPriorPipeline", "KandinskyV22PriorPipeline"),
    setting="k21_prior_model",
    tiny="prior",  # the tiny 2.2 prior: the same components
    build_tiny=tiny.build_k22_prior,
    description="Kandinsky 2.1 prior",
)
DECODER = Part(
    name="decoder",
    stage="decoder",
    hub_id="kandinsky-community/kandinsky-2-1",
    load_as="KandinskyPipeline",
    accepts=("KandinskyPipeline",),
    setting="k21_decoder_model",
    tiny="k21_decoder",
    build_tiny=tiny.build_k21_decoder,
    description="Kandinsky 2.1 decoder",
)
INPAINT = Part(
    name="inpaint",
    stage="decoder",
    hub_id="kandinsky-community/kandinsky-2-1-inpaint",
    load_as="KandinskyInpaintPipeline",
    accepts=("KandinskyInpaintPipeline",),
    setting="k21_inpaint_model",
    tiny="k21_inpaint",
    build_tiny=tiny.build_k21_inpaint,
    description="Kandinsky 2.1 inpainting decoder",
)


def _square_img2img(spec: Any) -> tuple[str, str] | None:  # a JobSpec (base.Rule)
    # KandinskyImg2ImgPipeline hands (width, height) to a preprocess that takes (height, width):
    # any other size fails mid-job.
    if spec.task == "img2img" and spec.height != spec.width:
        return "width", "kandinsky-2.1 img2img needs height == width (a diffusers limit)"
    return None


_prior = Pipe("prior", "KandinskyPriorPipeline")

FAMILY = Family(
    name="kandinsky-2.1",
    title="Kandinsky 2.1",
    parts=(PRIOR, DECODER, INPAINT),
    tasks={
        "text2img": Task(prior=_prior, decoder=Pipe("decoder", "KandinskyPipeline")),
        "img2img": Task(prior=_prior, decoder=Pipe("decoder", "KandinskyImg2ImgPipeline")),
        "inpaint": Task(prior=_prior, decoder=Pipe("inpaint", "KandinskyInpaintPipeline")),
        "interpolate": Task(prior=_prior, decoder=Pipe("decoder", "KandinskyPipeline")),
    },
    defaults={"img2img": {"guidance_scale": 7.0}},
    rules=(_square_img2img,),
)
