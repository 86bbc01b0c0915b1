"""Model registry: a model id or local folder -> the diffusers pipeline class for each stage.

Real hub ids load from the Hugging Face cache (the farm never needs the hub at run time when the
weights are cached); local folders are anything written by ``save_pretrained``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from farm.errors import ModelError


@dataclass(frozen=True)
class StageModel:
    """One part of one model family: what to load a folder or hub id with."""

    family: str
    stage: str  # the part: prior, decoder, inpaint, kandinsky3, k21_prior, ...
    pipeline_class: str  # diffusers class to load it with


# part -> (family, class to load with, class names a saved pipeline may declare for it). The 2.1
# prior has the 2.2 prior's components, so either saved prior serves both.
PARTS = {
    "prior": (
        "kandinsky-2.2",
        "KandinskyV22PriorPipeline",
        ("KandinskyV22PriorPipeline", "KandinskyPriorPipeline"),
    ),
    "decoder": ("kandinsky-2.2", "KandinskyV22Pipeline", ("KandinskyV22Pipeline",)),
    "inpaint": ("kandinsky-2.2", "KandinskyV22InpaintPipeline", ("KandinskyV22InpaintPipeline",)),
    "kandinsky3": ("kandinsky-3", "Kandinsky3Pipeline", ("Kandinsky3Pipeline",)),
    "k21_prior": (
        "kandinsky-2.1",
        "KandinskyPriorPipeline",
        ("KandinskyPriorPipeline", "KandinskyV22PriorPipeline"),
    ),
    "k21_decoder": ("kandinsky-2.1", "KandinskyPipeline", ("KandinskyPipeline",)),
    "k21_inpaint": ("kandinsky-2.1", "KandinskyInpaintPipeline", ("KandinskyInpaintPipeline",)),
    "sd15": ("sd-1.5", "StableDiffusionPipeline", ("StableDiffusionPipeline",)),
    "sdxl_refiner": (
        "sdxl-refiner",
        "AutoPipelineForImage2Image",
        ("StableDiffusionXLImg2ImgPipeline",),
    ),
    # Kandinsky 2.2 through diffusers' AutoPipelines: the combined prior + decoder pipelines.
    "k22_auto": ("kandinsky-2.2-auto", "AutoPipelineForText2Image", ("KandinskyV22Pipeline",)),
    "k22_auto_inpaint": (
        "kandinsky-2.2-auto",
        "AutoPipelineForInpainting",
        ("KandinskyV22InpaintPipeline",),
    ),
    "controlnet": (
        "kandinsky-2.2",
        "KandinskyV22ControlnetPipeline",
        ("KandinskyV22ControlnetPipeline",),
    ),
}

# Hub ids whose class is known without reading their files.
HUB_IDS = {
    "kandinsky-community/kandinsky-2-2-prior": "KandinskyV22PriorPipeline",
    "kandinsky-community/kandinsky-2-2-decoder": "KandinskyV22Pipeline",
    "kandinsky-community/kandinsky-2-2-decoder-inpaint": "KandinskyV22InpaintPipeline",
    "kandinsky-community/kandinsky-3": "Kandinsky3Pipeline",
    "kandinsky-community/kandinsky-2-1-prior": "KandinskyPriorPipeline",
    "kandinsky-community/kandinsky-2-1": "KandinskyPipeline",
    "kandinsky-community/kandinsky-2-1-inpaint": "KandinskyInpaintPipeline",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "StableDiffusionPipeline",
    "runwayml/stable-diffusion-v1-5": "StableDiffusionPipeline",
    "stabilityai/stable-diffusion-xl-refiner-1.0": "StableDiffusionXLImg2ImgPipeline",
    "kandinsky-community/kandinsky-2-2-controlnet-depth": "KandinskyV22ControlnetPipeline",
}


def resolve(model: str, stage: str) -> StageModel:
    """Find which pipeline runs ``model`` as part ``stage``.

    Raises:
        ModelError: the folder is missing, or the model is not that part.
    """
    folder = Path(model)
    if folder.is_dir():
        index = folder / "model_index.json"
        if not index.is_file():
            raise ModelError(f"{model}: no model_index.json (not a saved diffusers pipeline)")
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    elif model in HUB_IDS:
        class_name = HUB_IDS[model]
    elif model.startswith(("/", ".", "~")) or model.count("/") != 1:
        raise ModelError(f"{model}: no such folder (build tiny models with `farm models tiny`)")
    else:
        raise ModelError(f"{model}: unknown model id; known: {', '.join(sorted(HUB_IDS))}")
    family, load_as, accepted = PARTS[stage]
    if class_name not in accepted:
        found = next((part for part, (_, _, names) in PARTS.items() if class_name in names), None)
        if found is None:
            raise ModelError(f"{model}: pipeline class {class_name!r} is not supported by the farm")
        raise ModelError(f"{model}: a {found} pipeline, configured as the {stage} model")
    return StageModel(family, stage, load_as)


def load_pipeline(model: str, stage: str, *, device: str = "cpu", dtype: str = "float32"):
    """Load the pipeline for one stage, on ``device`` in ``dtype``, progress bars off.

    Raises:
        ModelError: with what to do, when the weights are not there.
    """
    import diffusers
    import torch

    from farm.models import quiet

    quiet()
    entry = resolve(model, stage)
    cls = getattr(diffusers, entry.pipeline_class)
    try:
        pipe = cls.from_pretrained(model, dtype=getattr(torch, dtype))
    except OSError as e:
        raise ModelError(
            f"{model}: weights not found locally ({e.__class__.__name__}). Download them into the "
            "Hugging Face cache on a machine with hub access (huggingface-cli download "
            f"{model}), or point the setting at a local folder."
        ) from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_depth_estimator(model: str, *, device: str = "cpu"):
    """transformers' depth-estimation pipeline (ControlNet hints), from a folder or the HF cache.

    Raises:
        ModelError: when the weights are not there.
    """
    from transformers import pipeline

    from farm.models import quiet

    quiet()
    if not Path(model).is_dir() and (model.startswith(("/", ".", "~")) or model.count("/") != 1):
        raise ModelError(f"{model}: no such folder (build tiny models with `farm models tiny`)")
    try:
        return pipeline("depth-estimation", model=model, device=device)
    except OSError as e:
        raise ModelError(
            f"{model}: depth estimator not found locally ({e.__class__.__name__})"
        ) from e
