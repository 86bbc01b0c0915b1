"""Every refusal of a bounded field names the limit `farm limits` prints for the job's family,
whatever the value's size, and a value at that limit is accepted (issue 17, item 4)."""

from __future__ import annotations

import re

import pytest

from farm.domain.jobs import JobSpec
from farm.errors import InvalidJob
from farm.families import REGISTRY
from farm.limits import markdown_limits


def _table() -> dict[str, dict[str, tuple[int, int]]]:
    """The rows `farm limits` prints: family -> field -> (lowest, highest)."""
    out = {}
    for line in markdown_limits().splitlines():
        m = re.match(r"\| `([^`]+)` \| (\d+)–(\d+) \| \d+ \| (\d+)–(\d+) \| .*?(\d+)–(\d+)", line)
        if m:
            name, *nums = m.groups()
            lo_side, hi_side, lo_steps, hi_steps, lo_prior, hi_prior = map(int, nums)
            out[name] = {
                "height": (lo_side, hi_side),
                "width": (lo_side, hi_side),
                "num_inference_steps": (lo_steps, hi_steps),
                "prior_num_inference_steps": (lo_prior, hi_prior),
            }
    return out


TABLE = _table()
CASES = [
    (model, field, value)
    for model in REGISTRY
    for field in ("height", "width", "num_inference_steps", "prior_num_inference_steps")
    for value in ("just below", "just above", 0, -1, 100_000, 10**9, 10**30)
]


def _job(model: str, **fields) -> dict:
    family = REGISTRY[model]
    task = "text2img" if "text2img" in family.tasks else next(iter(family.tasks))
    data = {"model": model, "task": task, "prompt": "a cat", **fields}
    if task == "img2img":
        data |= {"image": "in:" + "a" * 64, "strength": 1.0}  # a step left even at 1 step
    return data


def test_the_table_has_every_family():
    assert set(TABLE) == set(REGISTRY)


@pytest.mark.parametrize(("model", "field", "value"), CASES)
def test_a_refusal_names_the_tables_limit(model, field, value):
    lowest, highest = TABLE[model][field]
    value = {"just below": lowest - 1, "just above": highest + 1}.get(value, value)
    if lowest <= value <= highest:
        pytest.skip("within the limits")
    with pytest.raises(InvalidJob) as exc:
        JobSpec.parse(_job(model, **{field: value}))
    assert exc.value.field == field, str(exc.value)
    # The bound it states is the table's, on the side the value broke (or both).
    stated = re.search(r"between (\d+) and (\d+)|at least (\d+)|at most (\d+)", exc.value.reason)
    assert stated, str(exc.value)
    if stated[1]:
        assert (int(stated[1]), int(stated[2])) == (lowest, highest), str(exc.value)
    else:
        assert int(stated[3] or stated[4]) == (lowest if value < lowest else highest), str(
            exc.value
        )
        assert ("at least" in stated[0]) == (value < lowest), str(exc.value)
    # Following the message works: the limits it states are accepted.
    for at in (lowest, highest):
        multiple = REGISTRY[model].limits.size_multiple if field in ("height", "width") else 1
        assert at % multiple == 0, (model, field, at)
        spec = JobSpec.parse(_job(model, **{field: at}))
        assert getattr(spec, field) == at
