"""Kandinsky 2.2: CLIP prior -> UNet + MoVQ decoder; img2img, inpainting, interpolation, ControlNet depth."""

from __future__ import annotations

import farm.families.tiny as tiny
from farm.families.base import DEPTH_ESTIMATION, Family, Part, Pipe, Task

PRIOR = Part(
    name="prior",
    stage="prior",
    hub_id="kandinsky-community/kandinsky-2-2-prior",
    load_as="KandinskyV22PriorPipeline",
    # The 2.1 prior has the 2.2 prior's components: either saved prior serves.
    accepts=("KandinskyV22PriorPipeline", "KandinskyPriorPipeline"),
    setting="prior_model",
    tiny="prior",
    build_tiny=tiny.build_k22_prior,
    description="Kandinsky 2.2 prior",
)
DECODER = Part(
    name="decoder",
    stage="decoder",
    hub_id="kandinsky-community/kandinsky-2-2-decoder",
    load_as="KandinskyV22Pipeline",
    accepts=("KandinskyV22Pipeline",),
    setting="decoder_model",
    tiny="decoder",
    build_tiny=tiny.build_k22_decoder,
    description="Kandinsky 2.2 decoder",
)
INPAINT = Part(
    name="inpaint",
    stage="decoder",
    hub_id="kandinsky-community/kandinsky-2-2-decoder-inpaint",
    load_as="KandinskyV22InpaintPipeline",
    accepts=("KandinskyV22InpaintPipeline",),
    setting="inpaint_model",
    tiny="inpaint",
    build_tiny=tiny.build_k22_inpaint,
    description="Kandinsky 2.2 inpainting decoder",
)
CONTROLNET = Part(
    name="controlnet",
    stage="decoder",
    hub_id="kandinsky-community/kandinsky-2-2-controlnet-depth",
    load_as="KandinskyV22ControlnetPipeline",
    accepts=("KandinskyV22ControlnetPipeline",),
    setting="controlnet_model",
    tiny="controlnet",
    build_tiny=tiny.build_controlnet,
    description="Kandinsky 2.2 ControlNet depth decoder",
)
DEPTH = Part(
    name="depth",
    stage="prior",
    hub_id="Intel/dpt-large",
    load_as=DEPTH_ESTIMATION,
    accepts=(),
    setting="depth_model",
    tiny="depth",
    build_tiny=tiny.build_depth,
    description="Depth estimator for ControlNet hints (transformers)",
)

_prior = Pipe("prior", "KandinskyV22PriorPipeline")

FAMILY = Family(
    name="kandinsky-2.2",
    title="Kandinsky 2.2",
    parts=(PRIOR, DECODER, INPAINT, CONTROLNET, DEPTH),
    tasks={
        "text2img": Task(prior=_prior, decoder=Pipe("decoder", "KandinskyV22Pipeline")),
        "img2img": Task(prior=_prior, decoder=Pipe("decoder", "KandinskyV22Img2ImgPipeline")),
        "inpaint": Task(prior=_prior, decoder=Pipe("inpaint", "KandinskyV22InpaintPipeline")),
        "interpolate": Task(prior=_prior, decoder=Pipe("decoder", "KandinskyV22Pipeline")),
        "controlnet-depth": Task(
            prior=_prior,
            decoder=Pipe("controlnet", "KandinskyV22ControlnetPipeline"),
            helpers=("depth",),
        ),
        "controlnet-depth-img2img": Task(
            prior=Pipe("prior", "KandinskyV22PriorEmb2EmbPipeline"),
            decoder=Pipe("controlnet", "KandinskyV22ControlnetImg2ImgPipeline"),
            helpers=("depth",),
        ),
    },
)
