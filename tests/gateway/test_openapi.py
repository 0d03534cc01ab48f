"""Schemathesis over the running gateway's /openapi.json: no 5xx, every status documented,
every response matching its schema. Bounded: at most 10 generated requests for each of the 10
operations.

Schemathesis's pytest loader does not run under pytest 9 (it reads ``Function._nodeid``), so
the test drives its strategies with Hypothesis directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from store import Store
from tests.conftest import wait_for_run
from tests.gateway.conftest import TOKEN, Gateway, standard_body, standard_headers
from workers import Worker

CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 10


# Schemathesis's own strategies use the `random` module, which Hypothesis now deprecates; the
# warning is about the library, not about the gateway.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_every_route_keeps_its_documented_contract(
    gateway: Gateway, store: Store, start_worker: Callable[..., Worker]
) -> None:
    # Given some real runs, so listings and details return real rows and not only 404s
    start_worker()
    with gateway.client() as client:
        finished = client.post("/runs", json={"type": "test.gateway.pinged", "data": {"n": 1}})
        waiting = client.post(
            "/runs", json={"type": "test.gateway.approval", "data": {"item": "x"}}
        )
        body = standard_body("test.gateway.pinged", {"n": 2})
        client.post("/webhooks/standard", content=body, headers=standard_headers(body))
    wait_for_run(store, finished.json()["run_id"])
    wait_for_run(store, waiting.json()["run_id"], until=frozenset({"waiting"}))
    # When Schemathesis generates requests for every operation in the published document
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) == 10
    calls: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def keeps_contract(case: Any) -> None:
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
            # Then no answer is a 5xx, and each is documented and matches its schema
            case.call_and_validate(
                base_url=gateway.url,
                headers={"Authorization": f"Bearer {TOKEN}"},
                checks=CHECKS,
            )

        keeps_contract()
    # And the run was not vacuous: every operation was called, about 100 requests in all
    assert set(calls) == {operation.label for operation in operations}
    assert 50 <= sum(calls.values()) <= 10 * len(operations), calls


def test_the_document_names_every_routes_errors(gateway: Gateway) -> None:
    # Given the published document
    with gateway.client(token=None) as client:
        document = client.get("/openapi.json").json()

    def statuses(path: str, method: str) -> set[str]:
        return set(document["paths"][path][method]["responses"])

    # Then the webhook receiver documents each way a delivery is refused
    assert statuses("/webhooks/{source}", "post") >= {
        "200",
        "202",
        "400",
        "401",
        "404",
        "413",
        "422",
    }
    # And every run route documents 401 and 422, and 404 where it names a run
    for path, methods in document["paths"].items():
        for method in methods:
            if path.startswith("/runs"):
                assert statuses(path, method) >= {"401", "422"}, (method, path)
            if "{run_id}" in path:
                assert "404" in statuses(path, method), (method, path)
    # And errors share one schema: {"error", "detail"}
    error = document["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"error", "detail"}
    assert document["paths"]["/runs"]["get"]["security"] == [{"HTTPBearer": []}]
