"""Finding, checking and loading a family's parts: the one module here that imports diffusers.

A part's location is a local folder (anything ``save_pretrained`` wrote) or a hub id, loaded from
the Hugging Face cache. ``verify`` checks a location without loading it (cheap: workers verify
every part of every family they serve at boot, and load only the resident ones); ``load`` loads it;
``derive`` builds the other pipeline classes a task runs over the same weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.errors import ModelError
from farm.families.base import DEPTH_ESTIMATION, Family, Part

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

WEIGHTS = ("*.safetensors", "*.bin")


def quiet() -> None:
    """Silence diffusers' and transformers' progress bars and chatter (workers log instead)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _is_hub_id(location: str) -> bool:
    return not location.startswith(("/", ".", "~")) and location.count("/") == 1


def _class_of(index: Path) -> str:
    try:
        name: str = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
        return name
    except (OSError, ValueError):
        return ""


def _problem_in_folder(part: Part, folder: Path) -> str | None:
    """What is wrong with a local folder as this part, or None."""
    if not folder.is_dir():
        return "no such folder"
    if part.load_as == DEPTH_ESTIMATION:
        if not (folder / "config.json").is_file():
            return "no config.json (not a saved transformers model)"
        if not any(next(folder.glob(w), None) for w in WEIGHTS):
            return "no weights file (*.safetensors / *.bin)"
        return None
    index = folder / "model_index.json"
    if not index.is_file():
        return "no model_index.json (not a saved diffusers pipeline)"
    found = _class_of(index)
    if found not in part.accepts:
        return f"holds a {found or 'unknown'} pipeline; this part needs one of {', '.join(part.accepts)}"
    components = json.loads(index.read_text(encoding="utf-8"))
    for name, value in components.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir():
            return f"component {name}/ is missing"
        if (sub / "config.json").is_file() and not any(next(sub.glob(w), None) for w in WEIGHTS):
            return f"component {name}/ has no weights file"
    return None


def _problem_on_hub(part: Part, repo: str) -> str | None:
    """What is wrong with a hub id as this part (read from the local cache), or None."""
    import huggingface_hub
    from huggingface_hub import constants

    filename = "config.json" if part.load_as == DEPTH_ESTIMATION else "model_index.json"
    cached = huggingface_hub.try_to_load_from_cache(repo, filename)
    if not isinstance(cached, str):
        if constants.HF_HUB_OFFLINE:
            return "not in the Hugging Face cache (HF_HUB_OFFLINE=1)"
        return None  # from_pretrained downloads it at load
    if part.load_as != DEPTH_ESTIMATION:
        found = _class_of(Path(cached))
        if found not in part.accepts:
            return f"holds a {found or 'unknown'} pipeline; this part needs one of {', '.join(part.accepts)}"
    return None


def verify(family: Family, part: Part, location: str, *, tiny: bool = False) -> None:
    """Check that ``location`` can serve as ``part`` of ``family`` without loading it.

    Raises:
        ModelError: naming the family, the part, its setting, where it looked, what is wrong and
            the command that builds or fetches it.
    """
    folder = Path(location).expanduser()
    if folder.is_dir() or not _is_hub_id(location):
        problem = _problem_in_folder(part, folder)
    else:
        problem = _problem_on_hub(part, location)
    if problem is None:
        return
    if tiny and folder.parent.name == "full":  # FARM_STAND_IN=full (farm.families.fullsize)
        fix = f"build the full-size stand-ins with `farm models build --full-size {family.name}`"
    elif tiny:
        fix = f"build the tiny models with `farm models build {family.name}`"
    elif _is_hub_id(location) and not folder.exists():
        fix = (
            f"fetch it on a machine with hub access (`farm models fetch {family.name}`, or "
            f"huggingface-cli download {location}), or set {part.env} to a local folder"
        )
    else:
        fix = f"point {part.env} at a folder written by save_pretrained (default hub id: {part.hub_id})"
    raise ModelError(
        f"{family.name}: part '{part.name}' ({part.env}) at {location}: {problem}; {fix}"
    )


def load(
    part: Part,
    location: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    speed: Speed | None = None,
) -> Any:
    """Load a part on ``device`` in ``dtype``, progress bars off, with ``speed``'s switches.

    Returns:
        A diffusers pipeline, or a transformers depth-estimation pipeline (DEPTH_ESTIMATION).

    Raises:
        ModelError: with what to do, when the weights are not there.
    """
    quiet()
    if part.load_as == DEPTH_ESTIMATION:
        from transformers import pipeline

        try:
            return pipeline("depth-estimation", model=location, device=device)
        except OSError as e:
            raise ModelError(f"{location}: depth estimator not loadable ({e})") from e
    import diffusers
    import torch

    cls = getattr(diffusers, part.load_as)
    try:
        pipe = cls.from_pretrained(location, dtype=getattr(torch, dtype))
    except OSError as e:
        raise ModelError(
            f"{location}: weights not found locally ({e.__class__.__name__}). Download them into "
            "the Hugging Face cache on a machine with hub access (huggingface-cli download "
            f"{location}), or point {part.env} at a local folder."
        ) from e
    pipe.set_progress_bar_config(disable=True)
    return tune(pipe, device, speed or Speed())


@dataclass(frozen=True)
class Speed:
    """Switches that trade nothing in what a job asks for, only in how fast it runs.

    Attributes:
        attention: "sdpa" (torch's fused scaled-dot-product attention, diffusers' default on
            torch 2) or "eager" (the plain processor: a reference, or for old drivers).
        channels_last: UNet / VAE weights and activations in NHWC, faster convolutions on GPUs.
        compile: ``torch.compile`` the UNet; batch sizes are padded to powers of two by the
            decoder so a worker compiles a handful of shapes, not one per batch.
        cpu_offload: keep weights in CPU memory and move each model to the GPU when it runs
            (``enable_model_cpu_offload``): for GPUs smaller than the family.
    """

    attention: str = "sdpa"
    channels_last: bool = False
    compile: bool = False
    cpu_offload: bool = False


def tune(pipe: DiffusionPipeline, device: str, speed: Speed) -> DiffusionPipeline:
    """Apply ``speed`` to a loaded pipeline and place it on ``device``."""
    import torch

    unet = getattr(pipe, "unet", None)
    if speed.attention == "eager" and unet is not None:
        # The plain processor of each attention type (Kandinsky's added-KV blocks need theirs).
        unet.set_default_attn_processor()
    if speed.channels_last:
        for name in ("unet", "movq", "vae"):
            model = getattr(pipe, name, None)
            if model is not None:
                model.to(memory_format=torch.channels_last)
    if speed.cpu_offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe = pipe.to(device)
    if speed.compile and unet is not None:
        pipe.unet = torch.compile(unet, fullgraph=False, dynamic=False)
    return pipe


def derive(base: DiffusionPipeline, part: Part, cls_name: str) -> DiffusionPipeline:
    """``cls_name`` over a loaded part's weights: the part itself when it is that class,
    ``from_pipe`` for AutoPipelines, else that class built from the same components
    (img2img over text-to-image). Never new weights."""
    if cls_name == part.load_as:
        return base
    import diffusers

    cls = getattr(diffusers, cls_name)
    pipe = cls.from_pipe(base) if cls_name.startswith("AutoPipeline") else cls(**base.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe
