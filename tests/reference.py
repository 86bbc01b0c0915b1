"""The guide's two calls in this process: what the farm's Kandinsky 2.2 images must equal."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=2)
def _pipelines(tiny_dir: Path):
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    prior = KandinskyV22PriorPipeline.from_pretrained(tiny_dir / "prior")
    decoder = KandinskyV22Pipeline.from_pretrained(tiny_dir / "decoder")
    for pipe in (prior, decoder):
        pipe.set_progress_bar_config(disable=True)
    return prior, decoder


def render_in_one_process(tiny_dir: Path, spec: dict):
    """A text-to-image job's spec through the prior, then the decoder (CPU, float32, the job's
    seed in a CPU generator for each): the guide's reference calls. Returns a PIL image."""
    import torch

    prior, decoder = _pipelines(tiny_dir)
    embeds, negative = prior(
        spec["prompt"],
        negative_prompt=spec.get("negative_prompt"),
        guidance_scale=spec.get("prior_guidance_scale", 4.0),
        num_inference_steps=spec["prior_num_inference_steps"],
        generator=torch.Generator("cpu").manual_seed(spec["seed"]),
    ).to_tuple()
    return decoder(
        image_embeds=embeds,
        negative_image_embeds=negative,
        height=spec["height"],
        width=spec["width"],
        guidance_scale=spec.get("guidance_scale", 4.0),
        num_inference_steps=spec["num_inference_steps"],
        generator=torch.Generator("cpu").manual_seed(spec["seed"]),
    ).images[0]
