"""Schemathesis against the real API app (real Valkey and S3, an isolated Redis database with no
workers): no request may get a 5xx, and every response must match the OpenAPI schema (status
codes documented, one error body shape)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

pytestmark = pytest.mark.slow

# What a response must be: never a 5xx, a documented status, the documented content type, a
# body matching its schema. (Schemathesis' "positive data acceptance" is left out: the schema
# cannot say every rule, such as "a job list or a grid", that submission checks.)
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]


@pytest.fixture(scope="module")
def api_schema(settings, tokens):
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
    yield schema
    farm.redis.flushdb()


def test_api_never_5xx_and_matches_its_schema(api_schema, tokens):
    """Every operation, a bounded number of generated requests each (derandomized: CI runs the
    same requests every time)."""
    from hypothesis import given

    headers = {"Authorization": f"Bearer {tokens['alice']}"}
    failures, sent = [], []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=80,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case):
            sent.append(case.operation.label)
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            run()
        except BaseException as e:  # noqa: BLE001 - collected: every operation is tried
            if isinstance(e, KeyboardInterrupt):
                raise
            failures.append(f"{operation.label}: {str(e)[:600]}")
    print(f"fuzz: {len(sent)} requests over {len(set(sent))} operations")
    assert len(set(sent)) >= 15 and len(sent) >= 1000
    assert not failures, "\n\n".join(failures)
