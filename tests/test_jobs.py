"""Job specs: validation names the field and the limit; seeds are drawn and kept."""

from __future__ import annotations

import pytest

from farm.errors import InvalidJob
from farm.jobs import JobSpec, JobState
from farm.submit import validate


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"prompt": "x", "height": 100}, "height", "multiple of 64"),
        ({"prompt": "x", "width": 0}, "width", "greater than or equal to 64"),
        ({"prompt": "x", "width": 4096}, "width", "less than or equal to 2048"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"prompt": "   "}, "prompt", "blank"),
        ({}, "prompt", "required"),
        (
            {"prompt": "x", "num_inference_steps": 0},
            "num_inference_steps",
            "greater than or equal to 1",
        ),
        ({"prompt": "x", "prior_num_inference_steps": -3}, "prior_num_inference_steps", ">= 1"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale", "greater than or equal to 0"),
        ({"prompt": "x", "seed": -1}, "seed", "greater than or equal to 0"),
        ({"prompt": "x", "stepz": 3}, "stepz", "unknown field"),
        ({"prompt": "x" * 2001}, "prompt", "at most 2000"),
        ({"prompt": 5}, "prompt", "valid string"),
    ],
)
def test_bad_spec_names_field_and_limit(data, field, words):
    with pytest.raises(InvalidJob) as exc:
        JobSpec.parse(data)
    assert exc.value.field == field
    text = str(exc.value).replace("greater than or equal to", ">=")
    assert words.replace("greater than or equal to", ">=") in text


def test_list_error_names_the_job():
    with pytest.raises(InvalidJob) as exc:
        validate([{"prompt": "ok"}, {"prompt": "ok", "height": 65}])
    assert exc.value.index == 1
    assert str(exc.value).startswith("jobs[1].height:")


def test_empty_list_refused():
    with pytest.raises(InvalidJob, match="at least one job"):
        validate([])


def test_non_object_refused():
    with pytest.raises(InvalidJob, match="must be an object"):
        JobSpec.parse(["prompt"])


def test_seed_drawn_once_and_kept():
    specs = validate([{"prompt": "a"}, {"prompt": "b", "seed": 7}])
    assert isinstance(specs[0].seed, int) and 0 <= specs[0].seed < 2**32
    assert specs[1].seed == 7
    assert specs[0].with_seed() is specs[0]


def test_defaults_are_the_pipelines_defaults():
    spec = JobSpec.parse({"prompt": "cat"})
    assert (spec.height, spec.width) == (512, 512)
    assert spec.num_inference_steps == 100 and spec.prior_num_inference_steps == 25
    assert spec.guidance_scale == 4.0 and spec.prior_guidance_scale == 4.0


def test_multilingual_prompt_round_trips():
    spec = JobSpec.parse({"prompt": "قطة حمراء 一只猫", "seed": 1})
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec


def test_terminal_states():
    assert JobState.DONE.terminal and JobState.FAILED.terminal
    assert not JobState.QUEUED.terminal and not JobState.DECODING.terminal
