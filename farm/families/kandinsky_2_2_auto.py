"""Kandinsky 2.2 through diffusers' AutoPipelines: the combined prior + decoder pipelines, one stage.

The weights are Kandinsky 2.2's own decoder folders (their model card names the prior), so the
parts are the 2.2 family's, loaded as AutoPipelines.
"""

from __future__ import annotations

from dataclasses import replace

import farm.families.kandinsky_2_2 as k22
from farm.families.base import Family, Pipe, Task

DECODER = replace(k22.DECODER, load_as="AutoPipelineForText2Image")
INPAINT = replace(k22.INPAINT, load_as="AutoPipelineForInpainting")

FAMILY = Family(
    name="kandinsky-2.2-auto",
    title="Kandinsky 2.2 (AutoPipelines)",
    parts=(DECODER, INPAINT),
    tasks={
        "text2img": Task(decoder=Pipe("decoder", "AutoPipelineForText2Image")),
        "img2img": Task(decoder=Pipe("decoder", "AutoPipelineForImage2Image")),
        "inpaint": Task(decoder=Pipe("inpaint", "AutoPipelineForInpainting")),
    },
    # The combined pipelines hand their prior one generator list sized for the decoder's batch,
    # which the prior's doubled (prompt + negative) batch overruns: one job per call.
    batches=False,
)
