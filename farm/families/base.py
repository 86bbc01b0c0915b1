"""What a model family declares about itself. Pure data, no IO, no torch.

A family (``kandinsky-2.2``, ``sd-1.5``, ...) is everything the farm needs to know about one kind
of model: the parts it loads (each with its hub id, the diffusers class it loads as, the setting
that moves it, and the tiny builder the tests use), the tasks it runs with the pipeline class for
each stage, its limits and the pipelines' own defaults. Everything that used to ask "which model?"
with an ``if`` asks the family instead: validation, queues, settings, workers, ``farm models``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("prior", "decoder")
DEPTH_ESTIMATION = "transformers:depth-estimation"  # a part loaded with transformers.pipeline


@dataclass(frozen=True)
class Part:
    """One set of weights of a family: a saved diffusers pipeline (or a transformers model).

    Attributes:
        name: unique within its family (``decoder``).
        stage: the workers that load it (``prior`` or ``decoder``).
        hub_id: where the weights live on the Hugging Face hub (loaded from the local cache).
        load_as: the diffusers class ``from_pretrained`` is called on (or DEPTH_ESTIMATION).
        accepts: the ``_class_name`` values of a saved pipeline that can serve as this part.
        setting: the settings name that moves it, read from ``FARM_<SETTING>``.
        tiny: the folder (under the tiny models folder) its tiny build goes to; parts that share
            weights share the folder.
        build_tiny: writes the tiny random-weight version of the part into a folder.
    """

    name: str
    stage: str
    hub_id: str
    load_as: str
    accepts: tuple[str, ...]
    setting: str
    tiny: str
    build_tiny: Callable[[Path], None]
    description: str = ""

    @property
    def env(self) -> str:
        return "FARM_" + self.setting.upper()


@dataclass(frozen=True)
class Pipe:
    """The pipeline a task runs on one stage: a part, run as ``cls``.

    ``cls`` is the part's own class, another class over the same components (img2img on the
    text-to-image weights), or an ``AutoPipeline*`` built with ``from_pipe`` — never new weights.
    """

    part: str
    cls: str


@dataclass(frozen=True)
class Task:
    """How a family runs one task: the decoder-stage pipeline, the prior's if it has one, and
    other prior-stage parts it uses (the depth estimator of ControlNet)."""

    decoder: Pipe
    prior: Pipe | None = None
    helpers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limits:
    """What a job may ask of the family; submission refuses anything else, naming the limit."""

    size_multiple: int = 64
    min_side: int = 64
    max_side: int = 2048
    max_steps: int = 500
    max_prior_steps: int = 200
    # Families with an UnCLIP prior (Kandinsky 2.x, combined pipelines too): diffusers' UnCLIP
    # scheduler divides by (steps - 1), so one prior step always fails. 0: no prior steps.
    min_prior_steps: int = 2


# A family-specific rule: returns (field, message) when a job breaks it.
# It is called with the job's ``farm.domain.jobs.JobSpec``, typed Any here: the domain imports
# this registry, and the project has no import cycle, not even one for types.
Rule = Callable[[Any], tuple[str, str] | None]


@dataclass(frozen=True)
class Family:
    """A model family, declared once (one module per family in ``farm/families/``)."""

    name: str
    title: str
    parts: tuple[Part, ...]
    tasks: dict[str, Task]
    limits: Limits = field(default_factory=Limits)
    # The pipelines' own call defaults where they differ from JobSpec's, by task ("*": every task).
    defaults: dict[str, dict[str, object]] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    # Whether compatible jobs may share one pipeline call (each row its own generator).
    batches: bool = True

    def __post_init__(self) -> None:
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: part names repeat: {names}")
        for task_name, task in self.tasks.items():
            for pipe in (task.prior, task.decoder):
                if pipe is not None and pipe.part not in names:
                    raise ValueError(f"{self.name}.{task_name}: no part {pipe.part!r}")
            for helper in task.helpers:
                if helper not in names:
                    raise ValueError(f"{self.name}.{task_name}: no part {helper!r}")

    @property
    def two_stage(self) -> bool:
        """A prior job on the prior queue, then a decoder job (else straight to the decoder)."""
        return any(t.prior is not None for t in self.tasks.values())

    @property
    def stages(self) -> tuple[str, ...]:
        return STAGES if self.two_stage else ("decoder",)

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def parts_for(self, stage: str) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.stage == stage)

    def queue(self, stage: str) -> str:
        """The queue of this family's jobs for one stage (``decoder.kandinsky-3``)."""
        return f"{stage}.{self.name}"

    def pipe(self, task: str, stage: str) -> Pipe:
        t = self.tasks[task]
        pipe = t.prior if stage == "prior" else t.decoder
        if pipe is None:
            raise KeyError(f"{self.name} {task} has no {stage} stage")
        return pipe

    def defaults_for(self, task: str) -> dict[str, object]:
        return {**self.defaults.get("*", {}), **self.defaults.get(task, {})}
