"""schemathesis fuzzes every operation of the OpenAPI schema: no 500, no response that breaks
its schema. Runs against the real app served on 127.0.0.1 (PostgreSQL + SQS server), with a
bounded number of examples per operation."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.api.app import create_app
from app.config import Settings

EXAMPLES_PER_OPERATION = 40
# What the API promises: never a 5xx, and every response (status, content type, headers, body)
# is one its schema documents. schemathesis's stricter heuristics (e.g. "a schema-valid request
# must get 2xx") do not hold for inputs that are well-typed but wrong, like an unknown task.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

# The schema depends only on the routes, so an app that never starts is enough to read it.
schema = schemathesis.openapi.from_dict(
    create_app(
        Settings(sqs_queue_url="http://unused", log_format="console", auth="disabled")
    ).openapi()
)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_and_responses_match_schema(case: Any, live_api: str) -> None:
    case.call_and_validate(base_url=live_api, checks=CHECKS)
