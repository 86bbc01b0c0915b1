"""Rules that look beyond one job spec: which families this farm accepts, and the inputs jobs read.

A single spec's own rules (fields, the family's tasks, limits and rules) live on ``JobSpec``;
these need the farm's settings or what was uploaded, handed in as plain values and a lookup, so
this module stays free of IO like the rest of the domain.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from farm.domain.jobs import JobSpec
from farm.errors import InputNotFound, InvalidJob
from farm.families import get


def check_enabled(specs: list[JobSpec], enabled: Collection[str]) -> None:
    """Every job's family is one this farm accepts (``FARM_MODELS``)."""
    for index, spec in enumerate(specs):
        if spec.model not in enabled:
            raise InvalidJob(
                "model",
                f"{spec.model} is not enabled on this farm; enabled: {', '.join(enabled)}",
                index=index,
            )


def check_inputs(specs: list[JobSpec], meta: Callable[[str], dict[str, Any] | None]) -> None:
    """Uploads exist (``meta`` gives an upload's stored metadata, or None) and a mask matches
    its image; a chained job reads an earlier job of the same campaign (so there is no cycle)."""

    def found(ref: str) -> dict[str, Any]:
        data = meta(ref)
        assert data is not None  # every upload was looked up first, in this job's own loop
        return data

    for index, spec in enumerate(specs):
        fields = [("image", spec.image), ("mask", spec.mask), ("hint", spec.hint)]
        fields += [
            (f"interpolate.{n}.image", i.image) for n, i in enumerate(spec.interpolate or ())
        ]
        for field, ref in fields:
            if not ref:
                continue
            if ref.startswith("job:"):
                if int(ref[4:]) >= index:
                    raise InvalidJob(
                        field,
                        f"{ref} must name an earlier job of this campaign (< {index})",
                        index=index,
                    )
            elif meta(ref) is None:
                raise InputNotFound(
                    field,
                    f"unknown input {ref}; upload it first (POST /v1/inputs)",
                    index=index,
                )
        single_stage_i2i = spec.task == "img2img" and not get(spec.model).two_stage
        # Kandinsky 3 and SD img2img render at the input's size (they take no height or
        # width); a ControlNet hint must be the output's size. Say so now, not mid-job.
        sized = [("image", spec.image)] if single_stage_i2i else []
        if spec.task.startswith("controlnet"):
            sized = [("image", spec.image), ("hint", spec.hint)]
        for field, ref in sized:
            if ref is None:
                continue
            if ref.startswith("in:"):
                size = (int(found(ref)["width"]), int(found(ref)["height"]))
            else:
                parent = specs[int(ref[4:])]
                size = (parent.width, parent.height)
            if size != (spec.width, spec.height):
                raise InvalidJob(
                    field,
                    f"{spec.model} {spec.task} needs this input at the output's size: it is "
                    f"{size[0]}x{size[1]}, the job asks {spec.width}x{spec.height}",
                    index=index,
                )
        if (
            spec.mask
            and spec.image
            and spec.mask.startswith("in:")
            and spec.image.startswith("in:")
        ):
            im, mk = found(spec.image), found(spec.mask)
            if (im["width"], im["height"]) != (mk["width"], mk["height"]):
                raise InvalidJob(
                    "mask",
                    f"size {mk['width']}x{mk['height']} does not match the image's {im['width']}x{im['height']}",
                    index=index,
                )
