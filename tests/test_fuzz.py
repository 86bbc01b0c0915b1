"""Schemathesis against the real API app (real Valkey and S3, an isolated Redis database with no
workers), with every check it has: never a 5xx, every response as documented (status, content
type, headers, body), schema-invalid requests refused, schema-valid ones accepted, ``Allow`` as
documented; then its stateful run along the OpenAPI links (submit, then read, page, retry...).

A schema-valid request may still be refused for a rule JSON Schema cannot state (api/openapi.py
lists them: rules across fields, what depends on stored data or the network). Such a refusal
passes only as a 422 naming one of those rules; any other refusal of valid data fails.
"""

from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation import GenerationMode

pytestmark = pytest.mark.slow

load_all_checks()
ALL_CHECKS = CHECKS.get_all()
EXAMPLES = 40  # per operation and mode: ~1,600 requests in about half a minute

# The rules a schema cannot state (field, what the 422 says), as api/openapi.py describes them.
UNSTATABLE = [
    (r"(.*\.)?(image|mask|hint)", r"must name an earlier job"),  # position in the list
    (r"(.*\.)?(image|hint)", r"needs this input at the output's size"),
    (r"(.*\.)?strength", r"leaves no denoising step"),  # int(steps x strength) >= 1
    (r"(.*\.)?prior_strength", r"leaves no prior step"),
    (r"(.*\.)?width", r"kandinsky-2.1 img2img needs height == width"),
    (r"grid", r"cannot read other jobs' images|expands to \d+ jobs"),  # product of lengths
    (r"grid\.params", r"combinations of"),
    (r"callback_url", r"."),  # resolved and refused if private, at submission
    (r"image|mask", r"."),  # an upload's bytes must decode as an image or a NumPy mask
]


def _unstatable(failure: Failure, case, response) -> bool:
    """A valid request refused for a rule the schema cannot state (UNSTATABLE)."""
    if type(failure).__name__ != "RejectedPositiveData" or response.status_code != 422:
        return False
    detail = (response.json().get("detail") or [{}])[0]
    field, message = detail.get("field", ""), detail.get("message", "")
    body = case.body if isinstance(case.body, dict) else {}
    merged = case.operation.label == "POST /v1/campaigns" and (
        body.get("defaults") or body.get("grid")
    )
    if merged and field not in ("campaign", "jobs", "name", "priority", "body"):
        # A job's spec is the defaults merged with it (a grid job's, its combination): a schema
        # cannot merge objects. The campaign's own fields, and a job list without defaults,
        # are held to the schema.
        return True
    return any(re.fullmatch(f, field) and re.search(m, message) for f, m in UNSTATABLE)


@pytest.fixture(scope="module")
def api(settings, tokens):
    from pydantic import SecretStr

    from api.app import create_app
    from farm.service import Farm

    isolated = settings.model_copy(
        update={
            "redis_url": settings.redis_url.rsplit("/", 1)[0] + "/9",
            "feed_depth": 1,
            "webhook_secret": SecretStr("fuzz"),
        }
    )
    farm = Farm(isolated)
    farm.redis.flushdb()
    farm.objects.ensure_bucket()
    app = create_app(isolated, farm=farm)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # As the CLI's -H: sent on every request, and known to the checks as given, not generated.
    auth = {"Authorization": f"Bearer {tokens['alice']}"}
    schema.config.update(headers=auth)
    yield schema, auth
    farm.redis.flushdb()


class Tally:
    def __init__(self):
        self.sent, self.tolerated, self.failures = 0, 0, []

    def check(self, case, response, headers, **kwargs) -> None:
        self.sent += 1
        try:
            case.validate_response(response, checks=ALL_CHECKS, headers=dict(headers), **kwargs)
        except (Failure, FailureGroup) as e:
            found = list(e.exceptions) if isinstance(e, FailureGroup) else [e]
            real = [f for f in found if not _unstatable(f, case, response)]
            self.tolerated += len(found) - len(real)
            for f in real:
                body = response.text[:300]
                self.failures.append(
                    f"{case.operation.label} {case.meta.generation.mode.value if case.meta else ''}"
                    f": {f.title}: {str(f)[:300]}\n  body sent: {str(case.body)[:300]}"
                    f"\n  got {response.status_code}: {body}"
                )


def test_api_matches_its_schema_with_every_check(api):
    """Every operation, positive and negative data, a bounded number of requests each
    (derandomized: CI sends the same requests every time)."""
    from hypothesis import given

    schema, headers = api
    tally = Tally()
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def run(case):
                response = case.call()
                tally.check(case, response, headers)

            try:
                run()
            except Unsatisfiable:
                # No parameters and no body: nothing to make invalid.
                assert mode == GenerationMode.NEGATIVE, operation.label
    print(
        f"fuzz: {tally.sent} requests over {len(operations)} operations, every check; "
        f"{tally.tolerated} valid requests refused for rules a schema cannot state"
    )
    assert len(operations) >= 20 and tally.sent >= 700
    assert not tally.failures, "\n\n".join(tally.failures[:20])


def test_stateful_run_along_the_links(api):
    """Submissions, then the operations their links lead to, with every check (use after
    free, resource availability, ...)."""
    schema, headers = api
    tally = Tally()

    class Machine(schema.as_state_machine()):
        def validate_response(self, response, case, additional_checks=(), **kwargs):
            recorder = getattr(self, "recorder", None)
            tally.check(case, response, headers, transport_kwargs=kwargs or None, recorder=recorder)

    Machine.run(
        settings=settings(
            max_examples=25,
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
    )
    print(f"stateful: {tally.sent} requests; {tally.tolerated} tolerated")
    assert tally.sent >= 50
    assert not tally.failures, "\n\n".join(tally.failures[:20])
