"""What each model can do: the capability matrix the farm validates against and the README shows.

Pure data, no IO: submission checks a job against it before anything is enqueued, workers use it
to pick pipeline classes, and ``farm capabilities`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS = (
    "text2img",
    "img2img",
    "inpaint",
    "interpolate",
    "controlnet-depth",
    "controlnet-depth-img2img",
)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    two_stage: bool  # a prior job on the prior queue, then a decoder job
    size_multiple: int
    tasks: dict[str, tuple[str | None, str]]  # task -> (prior pipeline class, decoder class)
    weights: dict[str, str]  # part -> default hub id
    # The pipelines' own call defaults where they differ from JobSpec's, by task ("*": every task).
    defaults: dict[str, dict[str, object]] = field(default_factory=dict)


MODELS: dict[str, ModelInfo] = {
    "kandinsky-2.2": ModelInfo(
        name="kandinsky-2.2",
        two_stage=True,
        size_multiple=64,
        tasks={
            "text2img": ("KandinskyV22PriorPipeline", "KandinskyV22Pipeline"),
            "img2img": ("KandinskyV22PriorPipeline", "KandinskyV22Img2ImgPipeline"),
            "inpaint": ("KandinskyV22PriorPipeline", "KandinskyV22InpaintPipeline"),
            "interpolate": ("KandinskyV22PriorPipeline", "KandinskyV22Pipeline"),
            "controlnet-depth": ("KandinskyV22PriorPipeline", "KandinskyV22ControlnetPipeline"),
            "controlnet-depth-img2img": (
                "KandinskyV22PriorEmb2EmbPipeline",
                "KandinskyV22ControlnetImg2ImgPipeline",
            ),
        },
        weights={
            "prior": "kandinsky-community/kandinsky-2-2-prior",
            "controlnet": "kandinsky-community/kandinsky-2-2-controlnet-depth",
            "depth": "Intel/dpt-large",
            "decoder": "kandinsky-community/kandinsky-2-2-decoder",
            "inpaint": "kandinsky-community/kandinsky-2-2-decoder-inpaint",
        },
    ),
    "kandinsky-2.1": ModelInfo(
        name="kandinsky-2.1",
        two_stage=True,  # its decoder also reads the prompt (its own multilingual text encoder)
        size_multiple=64,
        tasks={
            "text2img": ("KandinskyPriorPipeline", "KandinskyPipeline"),
            "img2img": ("KandinskyPriorPipeline", "KandinskyImg2ImgPipeline"),
            "inpaint": ("KandinskyPriorPipeline", "KandinskyInpaintPipeline"),
            "interpolate": ("KandinskyPriorPipeline", "KandinskyPipeline"),
        },
        weights={
            "k21_prior": "kandinsky-community/kandinsky-2-1-prior",
            "k21_decoder": "kandinsky-community/kandinsky-2-1",
            "k21_inpaint": "kandinsky-community/kandinsky-2-1-inpaint",
        },
        defaults={"img2img": {"guidance_scale": 7.0}},
    ),
    "kandinsky-3": ModelInfo(
        name="kandinsky-3",
        two_stage=False,  # no prior: the job goes straight to the decoder queue
        size_multiple=64,
        tasks={
            "text2img": (None, "Kandinsky3Pipeline"),
            "img2img": (None, "Kandinsky3Img2ImgPipeline"),
        },
        weights={"kandinsky3": "kandinsky-community/kandinsky-3"},
        defaults={
            "*": {"guidance_scale": 3.0, "num_inference_steps": 25, "height": 1024, "width": 1024}
        },
    ),
    "kandinsky-2.2-auto": ModelInfo(
        name="kandinsky-2.2-auto",
        two_stage=False,  # the AutoPipelines run prior and decoder in one call, on the decoder queue
        size_multiple=64,
        tasks={
            "text2img": (None, "KandinskyV22CombinedPipeline"),
            "img2img": (None, "KandinskyV22Img2ImgCombinedPipeline"),
            "inpaint": (None, "KandinskyV22InpaintCombinedPipeline"),
        },
        weights={
            "k22_auto": "kandinsky-community/kandinsky-2-2-decoder",
            "k22_auto_inpaint": "kandinsky-community/kandinsky-2-2-decoder-inpaint",
        },
    ),
    "sd-1.5": ModelInfo(
        name="sd-1.5",
        two_stage=False,  # diffusers AutoPipelines: one call on the decoder queue
        size_multiple=8,
        tasks={
            "text2img": (None, "StableDiffusionPipeline"),
            "img2img": (None, "StableDiffusionImg2ImgPipeline"),
        },
        weights={"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
        defaults={
            "*": {"guidance_scale": 7.5, "num_inference_steps": 50, "height": 512, "width": 512},
            "img2img": {"strength": 0.8},
        },
    ),
    "sdxl-refiner": ModelInfo(
        name="sdxl-refiner",
        two_stage=False,
        size_multiple=8,
        tasks={"img2img": (None, "StableDiffusionXLImg2ImgPipeline")},
        weights={"sdxl_refiner": "stabilityai/stable-diffusion-xl-refiner-1.0"},
        defaults={
            "*": {"guidance_scale": 5.0, "num_inference_steps": 50, "height": 1024, "width": 1024}
        },
    ),
}
DEFAULT_MODEL = "kandinsky-2.2"


def check(model: str, task: str) -> ModelInfo:
    """The model's entry, or ValueError saying what exists / what the model supports."""
    info = MODELS.get(model)
    if info is None:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    if task not in info.tasks:
        raise ValueError(f"{model} does not support {task!r}; it supports: {', '.join(info.tasks)}")
    return info


def markdown_matrix() -> str:
    """Model x task -> supported, as the README's table (`farm capabilities`)."""
    rows = ["| model | " + " | ".join(TASKS) + " |", "|---" * (len(TASKS) + 1) + "|"]
    for name, info in MODELS.items():
        rows.append(
            f"| `{name}` | " + " | ".join("yes" if t in info.tasks else "—" for t in TASKS) + " |"
        )
    return "\n".join(rows)
