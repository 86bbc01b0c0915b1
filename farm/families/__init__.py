"""The model-family registry: one module per family, registered here; everything else derives.

    REGISTRY["kandinsky-2.2"] -> Family(parts, tasks, limits, defaults)

Validation (JobSpec), queues and routing (``farm.fleet``), the settings that move a part
(``FARM_DECODER_MODEL`` ...), ``farm models`` and ``farm capabilities``, the tiny demo models and
the workers' pipelines all read this registry. Adding a family is one new module and one line in
``_builtin``; ``register`` adds one at run time (tests do).
"""

from __future__ import annotations

from farm.families.base import Family, Limits, Part, Pipe, Task

REGISTRY: dict[str, Family] = {}
DEFAULT_FAMILY = "kandinsky-2.2"


def register(family: Family) -> Family:
    """Add a family (or replace one of the same name); returns it."""
    REGISTRY[family.name] = family
    return family


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def get(name: str) -> Family:
    """The family called ``name``; ValueError listing the known ones otherwise."""
    family = REGISTRY.get(name)
    if family is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    return family


def check(model: str, task: str) -> Family:
    """The family, if it runs ``task``; ValueError saying what exists / what it supports."""
    family = get(model)
    if task not in family.tasks:
        if task not in tasks():
            raise ValueError(f"unknown task {task!r}; known: {', '.join(tasks())}")
        raise ValueError(
            f"{model} does not support {task!r}; it supports: {', '.join(family.tasks)}"
        )
    return family


def tasks() -> tuple[str, ...]:
    """Every task some family runs, in registration order."""
    seen: dict[str, None] = {}
    for family in REGISTRY.values():
        seen.update(dict.fromkeys(family.tasks))
    return tuple(seen)


def part_settings() -> dict[str, Part]:
    """Setting name -> the part it moves (parts that share weights share a setting)."""
    out: dict[str, Part] = {}
    for family in REGISTRY.values():
        for part in family.parts:
            out.setdefault(part.setting, part)
    return out


def markdown_matrix() -> str:
    """Model x task -> supported, as docs/capabilities.md's table (`farm capabilities`)."""
    names = tasks()
    rows = ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, family in REGISTRY.items():
        cells = " | ".join("yes" if t in family.tasks else "—" for t in names)
        rows.append(f"| `{name}` | {cells} |")
    return "\n".join(rows)


def _builtin() -> None:
    from farm.families import (
        kandinsky_2_1,
        kandinsky_2_2,
        kandinsky_2_2_auto,
        kandinsky_3,
        sd_1_5,
        sdxl_refiner,
    )

    builtin = (kandinsky_2_2, kandinsky_2_1, kandinsky_3, kandinsky_2_2_auto, sd_1_5, sdxl_refiner)
    for module in builtin:
        register(module.FAMILY)


_builtin()

__all__ = [
    "DEFAULT_FAMILY",
    "REGISTRY",
    "Family",
    "Limits",
    "Part",
    "Pipe",
    "Task",
    "check",
    "get",
    "markdown_matrix",
    "part_settings",
    "register",
    "tasks",
    "unregister",
]
