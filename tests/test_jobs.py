"""Job specs: validation names the field and the limit; seeds are drawn and kept."""

from __future__ import annotations

import pytest

from farm.domain.campaigns import CampaignSpec
from farm.domain.jobs import JobSpec, JobState
from farm.errors import InvalidJob


def validate(jobs):
    return CampaignSpec.parse({"jobs": jobs}).expand()


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"prompt": "x", "height": 100}, "height", "multiple of 64"),
        ({"prompt": "x", "width": 32}, "width", "between 64 and 2048 for kandinsky-2.2 (got 32)"),
        ({"prompt": "x", "width": 0}, "width", "between 64 and 2048 for kandinsky-2.2 (got 0)"),
        ({"prompt": "x", "width": 4096}, "width", "between 64 and 2048 for kandinsky-2.2"),
        (
            {"prompt": "x", "num_inference_steps": 600},
            "num_inference_steps",
            "at most 500 for kandinsky-2.2",
        ),
        ({"prompt": ""}, "prompt", "required"),
        ({"prompt": "   "}, "prompt", "blank"),
        ({}, "prompt", "required"),
        (
            {"prompt": "x", "num_inference_steps": 0},
            "num_inference_steps",
            "at least 1 for kandinsky-2.2 (got 0)",
        ),
        (
            {"prompt": "x", "prior_num_inference_steps": -3},
            "prior_num_inference_steps",
            "at least 2 for kandinsky-2.2 (got -3)",
        ),
        ({"prompt": "x", "height": "512"}, "height", "must be a number, not str"),
        ({"prompt": "x", "seed": True}, "seed", "must be a number, not bool"),
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


def test_grid_expands_cross_product_in_order():
    spec = CampaignSpec.parse(
        {
            "grid": {"prompts": ["a", "b"], "seeds": [1, 2], "params": {"guidance_scale": [3, 5]}},
            "defaults": {"height": 64, "width": 128},
        }
    )
    jobs = spec.expand()
    assert len(jobs) == 8
    assert [(j.prompt, j.guidance_scale, j.seed) for j in jobs[:4]] == [
        ("a", 3, 1),
        ("a", 3, 2),
        ("a", 5, 1),
        ("a", 5, 2),
    ]
    assert all(j.height == 64 and j.width == 128 for j in jobs)


def test_grid_seed_count_draws_seeds():
    jobs = CampaignSpec.parse({"grid": {"prompts": ["a"], "seeds": 3}}).expand()
    assert len(jobs) == 3 and all(j.seed is not None for j in jobs)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"grid": {"prompts": ["a"], "params": {"height": [64, 100]}}}, "grid.params.height"),
        ({"grid": {"prompts": ["a"], "params": {"stepz": [1]}}}, "grid.params.stepz"),
        ({"grid": {"prompts": [""]}}, "grid.prompts"),
        ({"grid": {"prompts": ["a"], "seeds": [-1]}}, "grid.seeds"),
        ({"grid": {"prompts": ["a"], "seeds": 0}}, "grid.seeds"),
        ({"grid": {"prompts": ["a"]}, "defaults": {"width": 7}}, "defaults.width"),
        ({"grid": {"prompts": ["a"]}, "defaults": {"nope": 7}}, "defaults.nope"),
        ({"grid": {"prompts": []}}, "grid.prompts"),
        ({"grid": {"prompts": ["a"]}, "jobs": [{"prompt": "b"}]}, "campaign"),
        ({}, "campaign"),
        ({"grid": {"prompts": ["a"] * 1000, "seeds": 1001}}, "grid"),
        ({"jobs": [{"prompt": "a"}], "extra": 1}, "extra"),
    ],
)
def test_bad_campaign_names_where(body, field):
    with pytest.raises(InvalidJob) as exc:
        CampaignSpec.parse(body).expand()
    assert exc.value.field == field, str(exc.value)


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"prompt": "x", "model": "dalle"}, "model", "unknown model 'dalle'; known: kandinsky-2.2"),
        ({"prompt": "x", "task": "img2img"}, "image", "required for task img2img"),
        (
            {"prompt": "x", "task": "inpaint", "image": "in:" + "a" * 64},
            "mask",
            "required for task inpaint",
        ),
        ({"prompt": "x", "image": "in:" + "a" * 64}, "image", "not used by task text2img"),
        (
            {"prompt": "x", "task": "img2img", "image": "http://169.254.169.254/x"},
            "image",
            "pattern",
        ),
        (
            {"prompt": "x", "task": "img2img", "image": "in:" + "a" * 64, "strength": 1.5},
            "strength",
            "1",
        ),
        ({"task": "interpolate"}, "interpolate", "required for task interpolate"),
        (
            {"task": "interpolate", "interpolate": [{"text": "a", "weight": 1}]},
            "interpolate",
            "at least 2",
        ),
        (
            {"task": "interpolate", "interpolate": [{"text": "a", "weight": 1}, {"weight": 1}]},
            "interpolate.1",
            "exactly one of text or image",
        ),
        (
            {
                "task": "interpolate",
                "interpolate": [{"text": "a", "weight": 0}, {"text": "b", "weight": 1}],
            },
            "interpolate.0.weight",
            "greater than 0",
        ),
        ({"prompt": "x", "scheduler": "euler-magic"}, "scheduler", "'default', 'ddim' or 'ddpm'"),
        (
            {"prompt": "x", "task": "paint"},
            "task",
            "unknown task 'paint'; known: text2img, img2img, inpaint, interpolate, controlnet-depth, controlnet-depth-img2img",
        ),
        (
            {"prompt": "x", "model": "kandinsky-3", "task": "inpaint"},
            "model",
            "kandinsky-3 does not support 'inpaint'; it supports: text2img, img2img",
        ),
    ],
)
def test_task_fields_are_checked(data, field, words):
    with pytest.raises(InvalidJob) as exc:
        JobSpec.parse(data)
    assert exc.value.field == field, str(exc.value)
    assert words in str(exc.value)


def test_interpolation_needs_no_prompt():
    spec = JobSpec.parse(
        {
            "task": "interpolate",
            "interpolate": [
                {"text": "a cat", "weight": 0.3},
                {"image": "in:" + "b" * 64, "weight": 0.7},
            ],
        }
    )
    assert spec.input_refs() == ["in:" + "b" * 64]


def test_model_defaults_are_the_models_own():
    k3 = JobSpec.parse({"model": "kandinsky-3", "prompt": "x"})
    assert (k3.height, k3.num_inference_steps, k3.guidance_scale) == (1024, 25, 3.0)
    k3_explicit = JobSpec.parse({"model": "kandinsky-3", "prompt": "x", "guidance_scale": 7})
    assert k3_explicit.guidance_scale == 7
    assert JobSpec.parse({"prompt": "x"}).num_inference_steps == 100


def test_controlnet_img2img_needs_at_least_one_prior_step():
    with pytest.raises(InvalidJob) as exc:
        JobSpec.parse(
            {
                "prompt": "x",
                "task": "controlnet-depth-img2img",
                "image": "in:" + "a" * 64,
                "prior_num_inference_steps": 2,
                "prior_strength": 0.3,
            }
        )
    assert exc.value.field == "prior_strength" and "no prior step" in str(exc.value)


def test_img2img_needs_at_least_one_denoising_step():
    with pytest.raises(InvalidJob) as exc:
        JobSpec.parse(
            {
                "prompt": "x",
                "task": "img2img",
                "image": "in:" + "a" * 64,
                "num_inference_steps": 2,
                "strength": 0.3,
            }
        )
    assert exc.value.field == "strength" and "no denoising step" in str(exc.value)


def test_defaults_match_each_pipelines_own_signature():
    """A job that leaves a field out renders as the guide's call that leaves it out."""
    import inspect

    import diffusers
    from diffusers.pipelines.auto_pipeline import (
        AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
        AUTO_INPAINT_PIPELINES_MAPPING,
        AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
    )

    from farm.families import REGISTRY

    # An AutoPipeline runs the class diffusers maps the loaded pipeline to.
    auto = {
        "AutoPipelineForText2Image": AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
        "AutoPipelineForImage2Image": AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
        "AutoPipelineForInpainting": AUTO_INPAINT_PIPELINES_MAPPING,
    }
    real = {
        "kandinsky-2.2-auto": "kandinsky22",
        "sdxl-refiner": "stable-diffusion-xl",
    }
    for model, family in REGISTRY.items():
        for task, spec in family.tasks.items():
            cls = spec.decoder.cls
            if cls in auto:
                cls = auto[cls][real[model]].__name__
            params = inspect.signature(getattr(diffusers, cls).__call__).parameters
            data = {"model": model, "task": task, "prompt": "x"}
            data |= (
                {"image": "in:" + "a" * 64, "mask": "in:" + "b" * 64}
                if task in ("img2img", "inpaint")
                else {}
            )
            if task == "img2img":
                data.pop("mask")
            if task.startswith("controlnet"):
                data["image"] = "in:" + "a" * 64
            if task == "interpolate":
                data["interpolate"] = [{"text": "a", "weight": 1}, {"text": "b", "weight": 1}]
            spec = JobSpec.parse(data)
            for name in ("guidance_scale", "num_inference_steps", "strength", "height", "width"):
                if name in params and params[name].default is not None:
                    assert getattr(spec, name) == params[name].default, (model, task, name)


def test_a_huge_grid_is_refused_before_anything_is_built():
    """Ten million jobs from three short lists: refused from their lengths, at once."""
    import resource
    import time

    body = {
        "grid": {
            "prompts": [f"p{i}" for i in range(10)],
            "params": {"guidance_scale": list(range(1000)), "strength": list(range(1000))},
        }
    }
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(InvalidJob) as e:
        CampaignSpec.parse(body).expand()
    assert time.perf_counter() - t0 < 1.0
    assert e.value.field == "grid" and "10000000 jobs" in e.value.reason
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB


def test_jobs_and_grid_together_are_refused_by_parse_naming_both():
    """Checked when the campaign is read, not only by expand(): submission of a grid never
    called expand(), so the job list was dropped without a word."""
    body = {"jobs": [{"prompt": "a"}], "grid": {"prompts": ["b"]}}
    with pytest.raises(InvalidJob) as exc:
        CampaignSpec.parse(body)
    assert exc.value.field == "campaign"
    assert "'jobs'" in exc.value.reason and "'grid'" in exc.value.reason


def test_a_grid_combination_that_fails_only_together_is_refused_at_submission():
    """Above 10,000 combinations each value used to be checked alone: (kandinsky-2.2, 72 px)
    passed submission and failed when the feeder computed that job."""
    from farm.domain.campaigns import plan_grid
    from farm.domain.manifest import Manifest

    body = {
        "grid": {
            "prompts": ["a"],
            "params": {
                "model": ["sd-1.5", "kandinsky-2.2"],
                "height": [64, 72],
                "guidance_scale": [i / 25 for i in range(2501)],  # 10,004 combinations
            },
        },
        "defaults": {"width": 64},
    }
    campaign = CampaignSpec.parse(body)
    with pytest.raises(InvalidJob) as exc:
        plan_grid(campaign)
    assert exc.value.field == "grid.params.height" and "multiple of 64" in exc.value.reason
    # Without the bad pair, every job the feeder computes is one submission accepted.
    body["grid"]["params"]["height"] = [64, 128]
    campaign = CampaignSpec.parse(body)
    total, seeds, _ = plan_grid(campaign)
    spec = campaign.model_dump(mode="json")
    manifest = Manifest("c", "t", "p", total, spec, 0.0, seeds=seeds)
    for i in range(0, total, 97):
        manifest.grid_spec(i)


def test_a_grid_varying_too_many_coupled_parameters_is_refused_with_the_limit():
    body = {
        "grid": {
            "prompts": ["a"],
            "params": {"height": [64] * 101, "num_inference_steps": list(range(1, 101))},
        }
    }
    with pytest.raises(InvalidJob) as exc:
        CampaignSpec.parse(body).expand()
    assert exc.value.field == "grid.params" and "at most 10000" in exc.value.reason


def test_a_default_input_applies_only_where_the_task_reads_it():
    """A campaign default such as ``mask`` fits the inpainting jobs and is left out of the
    others (a grid over tasks); an input a job names itself for a task that ignores it is still
    refused."""
    from farm.domain.campaigns import CampaignSpec, plan_grid

    image, mask = "in:" + "a" * 64, "in:" + "b" * 64
    defaults = {"image": image, "mask": mask, "height": 64, "width": 64}
    listed = CampaignSpec.model_validate(
        {
            "defaults": defaults,
            "jobs": [
                {"prompt": "a", "task": "inpaint"},
                {"prompt": "b", "task": "img2img"},
                {"prompt": "c"},
            ],
        }
    ).expand()
    assert [(s.image, s.mask) for s in listed] == [(image, mask), (image, None), (None, None)]
    grid = CampaignSpec.model_validate(
        {
            "defaults": defaults,
            "grid": {"prompts": ["a"], "seeds": [1], "params": {"task": ["inpaint", "text2img"]}},
        }
    )
    total, _, _ = plan_grid(grid)
    specs = grid.expand()  # through the manifest, as the feeder computes them
    assert total == 2 and [(s.task, s.mask) for s in specs] == [
        ("inpaint", mask),
        ("text2img", None),
    ]
    with pytest.raises(InvalidJob) as e:
        CampaignSpec.model_validate(
            {"defaults": defaults, "jobs": [{"prompt": "a", "task": "text2img", "mask": mask}]}
        ).expand()
    assert e.value.field == "mask"
