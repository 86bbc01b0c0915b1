"""The API's OpenAPI document, saying what submission checks rather than what pydantic infers.

A job is one of its family x task shapes (``anyOf``, exclusive by ``model`` and ``task``), each
with that family's own bounds; a campaign is a job list or a grid (``oneOf``). What JSON Schema
cannot say is left to the 422: rules across fields (steps x strength leaves a step; Kandinsky
2.1 img2img is square), and what depends on stored data or the network (an upload exists and
has the output's size; a job reads an earlier job; a callback URL resolves to a public host).

Responses are documented as sent: JSON lines as ``application/x-ndjson``, the contact sheet as
``image/png``, an upload's body as the image it is.
"""

from __future__ import annotations

import math
from typing import Any

from farm import families
from farm.domain.campaigns import EXHAUSTIVE, MAX_GRID_JOBS, MAX_JOBS
from farm.domain.jobs import (
    INPUT_REF,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    NEEDS,
    SCHEDULERS,
    TAKES,
    bounds,
)
from farm.families.base import Family

NOT_BLANK = r"\S"  # a prompt other than interpolation's holds a non-space character
INPUTS = ("image", "mask", "hint", "interpolate")
REF = {"type": "string", "pattern": INPUT_REF}
NULL = {"type": "null"}
REF_JOB = "#/components/schemas/Job"
REF_GRID = "#/components/schemas/Grid"


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, NULL]}


def _number(lowest: float, highest: float, *, above: bool = False) -> dict:
    low = {"exclusiveMinimum": lowest} if above else {"minimum": lowest}
    return {"type": "number", **low, "maximum": highest}


def _interpolation() -> dict:
    weight = _number(0, 10, above=True)
    text = {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS}
    item = {"type": "object", "additionalProperties": False}
    return {
        "type": "array",
        "minItems": 2,
        "maxItems": 16,
        "items": {
            "anyOf": [
                {
                    **item,
                    "properties": {"text": text, "image": NULL, "weight": weight},
                    "required": ["text", "weight"],
                },
                {
                    **item,
                    "properties": {"text": NULL, "image": REF, "weight": weight},
                    "required": ["image", "weight"],
                },
            ]
        },
    }


def _common() -> dict[str, dict]:
    """Fields whose rules are the same for every family and task."""
    return {
        "negative_prompt": _nullable({"type": "string", "maxLength": MAX_PROMPT_CHARS}),
        "seed": _nullable({"type": "integer", "minimum": 0, "maximum": MAX_SEED}),
        "prior_guidance_scale": _number(0, 100),
        "guidance_scale": _number(0, 100),
        "strength": _number(0, 1, above=True),
        "prior_strength": _number(0, 1, above=True),
        "scheduler": {"type": "string", "enum": list(SCHEDULERS)},
        "num_images_per_prompt": {"type": "integer", "minimum": 1, "maximum": 8},
    }


def _bounded(family: Family) -> dict[str, dict]:
    """The family-bounded fields, as the family bounds them."""
    out = {}
    for name, (lowest, highest) in bounds(family).items():
        out[name] = {"type": "integer", "minimum": lowest, "maximum": highest}
        if name in ("height", "width"):
            out[name]["multipleOf"] = family.limits.size_multiple
    return out


def job_branch(family: Family, task: str, *, default_model: bool) -> dict:
    """One family x task shape of a job: exactly what submission accepts of it, as far as JSON
    Schema can say."""
    props: dict[str, Any] = {
        "model": {"type": "string", "const": family.name},
        "task": {"type": "string", "const": task},
        "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
        **_common(),
        **_bounded(family),
    }
    if task != "interpolate":
        props["prompt"]["pattern"] = NOT_BLANK
    for name in INPUTS:
        if name not in TAKES.get(task, ()):
            props[name] = NULL  # "not used by task ..." unless left out (or null)
        else:
            schema = _interpolation() if name == "interpolate" else REF
            props[name] = schema if name in NEEDS.get(task, ()) else _nullable(schema)
    required = [*NEEDS.get(task, ())]
    required += [] if task == "interpolate" else ["prompt"]
    required += [] if default_model else ["model"]
    required += [] if task == "text2img" else ["task"]
    branch = {
        "type": "object",
        "title": f"{family.name} {task}",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }
    if task == "controlnet-depth":
        branch["anyOf"] = [{"required": ["image"]}, {"required": ["hint"]}]
        props["image"] = props["hint"] = REF  # given, it is a reference (null is "not given")
        branch["required"] = [r for r in required if r not in ("image", "hint")]
    return branch


def _widest(enabled: list[Family]) -> dict[str, dict]:
    """Every job field with the widest bounds across the enabled families (defaults, params)."""
    props: dict[str, Any] = {
        "model": {"type": "string", "enum": [f.name for f in enabled]},
        "task": {
            "type": "string",
            "enum": list(dict.fromkeys(t for f in enabled for t in f.tasks)),
        },
        "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
        **_common(),
        "image": _nullable(REF),
        "mask": _nullable(REF),
        "hint": _nullable(REF),
        "interpolate": _nullable(_interpolation()),
    }
    for name in bounds(enabled[0]):
        lows, highs = zip(*(bounds(f)[name] for f in enabled), strict=True)
        props[name] = {"type": "integer", "minimum": min(lows), "maximum": max(highs)}
    step = math.gcd(*(f.limits.size_multiple for f in enabled))
    props["height"]["multipleOf"] = props["width"]["multipleOf"] = step
    return props


def schemas(enabled_names: list[str] | tuple[str, ...]) -> dict[str, dict]:
    """The request body schemas (OpenAPI components) for the families this farm accepts."""
    enabled = [families.get(n) for n in enabled_names]
    default = families.DEFAULT_FAMILY in enabled_names
    job = {
        "title": "Job",
        "description": "One picture: one of the family x task shapes below (`farm limits`).",
        "anyOf": [
            job_branch(f, t, default_model=default and f.name == families.DEFAULT_FAMILY)
            for f in enabled
            for t in f.tasks
        ],
    }
    widest = _widest(enabled)
    params = {n: {"type": "array", "minItems": 1, "items": s} for n, s in widest.items()}
    del params["prompt"], params["seed"]  # the grid's own lists
    grid = {
        "title": "Grid",
        "type": "object",
        "additionalProperties": False,
        "required": ["prompts"],
        "properties": {
            "prompts": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_GRID_JOBS,
                "items": {"type": "string", "maxLength": MAX_PROMPT_CHARS, "pattern": NOT_BLANK},
            },
            "seeds": {
                "oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": MAX_GRID_JOBS},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_GRID_JOBS,
                        "items": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
                    },
                ]
            },
            "params": {
                "type": "object",
                "additionalProperties": False,
                "properties": params,
                "description": f"Every combination is checked: at most {MAX_GRID_JOBS} jobs and "
                f"{EXHAUSTIVE} combinations of parameters other than guidance, negative prompt "
                "and scheduler.",
            },
        },
    }
    jobs = {"type": "array", "minItems": 1, "maxItems": MAX_JOBS, "items": {"$ref": REF_JOB}}
    campaign = {
        "title": "Campaign",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": _nullable({"type": "string", "maxLength": 200}),
            "jobs": _nullable(jobs),
            "grid": _nullable({"$ref": REF_GRID}),
            "defaults": {
                "type": "object",
                "additionalProperties": False,
                "properties": {n: s for n, s in widest.items()},
            },
            "priority": {"type": "string", "enum": ["high", "normal", "low"]},
            "callback_url": _nullable(
                {"type": "string", "maxLength": 2000, "pattern": r"^https?://[^/?#@\s]+"}
            ),
        },
        # A job list or a grid: the other left out or null.
        "oneOf": [
            {"required": ["jobs"], "properties": {"jobs": jobs, "grid": NULL}},
            {"required": ["grid"], "properties": {"grid": {"$ref": REF_GRID}, "jobs": NULL}},
        ],
    }
    return {"Job": job, "Grid": grid, "Campaign": campaign}


def body(name: str) -> dict:
    """A route's ``openapi_extra``: its JSON body is the named component (the route reads it
    itself, so that the farm checks it as written)."""
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# An upload is the image's own bytes (the server reads the format from them).
UPLOAD = {
    "requestBody": {
        "required": True,
        "content": {
            kind: {"schema": {"type": "string", "format": "binary"}}
            for kind in ("image/png", "image/jpeg", "image/webp", "application/octet-stream")
        },
    }
}
MEDIA = {".jsonl": "application/x-ndjson", ".png": "image/png"}
# Written when the campaign ends: no link from a submission (a new campaign has none yet).
AT_THE_END = ("/results.jsonl", "/contact_sheet.png")
# A page cursor is a job index in decimal, base64url without padding (farm.service.views): the
# pattern admits exactly those, so a cursor the schema allows is one the API reads. 3 digits
# make 4 characters; a last 1 or 2 digits make 2 or 3.
_FIRST = "(?:[MN][DTjz]|O[DT])"  # a digit's top bits and the next one's
CURSOR = f"^(?:{_FIRST}[AEIMQUYcgk][w-z0-5])*(?:{_FIRST}[AEIMQUYcgk]|(?:[MN][AQgw]|O[AQ]))?$"


def install(app, enabled_names) -> None:
    """Complete the app's OpenAPI document: the body schemas, what files are sent as, and links
    from a submission to the operations on the campaign it created."""
    build = app.openapi

    def document() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        doc = build()
        doc.setdefault("components", {}).setdefault("schemas", {}).update(schemas(enabled_names))
        links = {}
        for path, operations in doc["paths"].items():
            kind = next((m for end, m in MEDIA.items() if path.endswith(end)), None)
            if kind:
                ok = operations["get"]["responses"]["200"]
                ok["content"] = {kind: {"schema": {"type": "string", "format": "binary"}}}
            if "{campaign_id}" in path and not path.endswith(AT_THE_END):
                for op in operations.values():
                    links[op["operationId"]] = {
                        "operationId": op["operationId"],
                        "parameters": {"campaign_id": "$response.body#/campaign_id"},
                    }
        for path in ("/v1/campaigns", "/v1/jobs"):
            doc["paths"][path]["post"]["responses"]["201"]["links"] = links
        app.openapi_schema = doc
        return doc

    app.openapi = document
