"""The run API: start, find, inspect, replay, cancel and signal runs. Bearer token required."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError

from gateway._auth import bearer_auth
from gateway._config import GatewayConfig
from gateway._errors import ApiError, responses
from gateway._events import trigger_event
from gateway._intake import Intake
from gateway._models import (
    Cancel,
    Canceled,
    Replay,
    Replayed,
    RunDetail,
    RunPage,
    RunStatus,
    RunView,
    Signalled,
    StartedRun,
    StartRun,
    Usage,
)
from store import (
    NotFound,
    Operator,
    RunFilter,
    SignalAmbiguous,
    cancel_run,
    fork_run,
    list_runs,
    replay_failed_steps,
    resolve_run_id,
    resolve_step_id,
    run_detail,
    send_signal,
)
from workers._durations import seconds

# Who an operation through the API is recorded as: "api:<token name>"; the gateway has one
# token, BATON_API_TOKEN, named "default".
_API_ACTOR = "api:default"
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_datetime = TypeAdapter(datetime)

RunId = Annotated[
    str, Path(min_length=1, max_length=64, description="a run id, or its unique start or end")
]


def runs_router(intake: Intake, config: GatewayConfig) -> APIRouter:
    router = APIRouter(
        prefix="/runs",
        tags=["runs"],
        dependencies=[Depends(bearer_auth(config.api_token))],
        responses=responses(401, 422),
    )
    store = intake.store

    @router.post(
        "",
        status_code=202,
        response_model=StartedRun,
        responses={
            200: {"model": StartedRun, "description": "A repeat of an Idempotency-Key"},
            **responses(503),
        },
    )
    def start(
        body: StartRun,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        traceparent: Annotated[str | None, Header(max_length=60)] = None,
    ) -> JSONResponse:
        """Start a run with a trigger event of a registered type; ``data`` is validated by its
        class. With an ``Idempotency-Key`` header, a repeat answers with the first run."""
        if body.type.startswith("baton."):
            raise ApiError(
                422,
                "invalid_request",
                f"body.type: {body.type!r} is one of Baton's own types; it cannot start a run",
            )
        intake.subscribed(body.type)
        event = trigger_event(body.type, body.data)
        created = intake.start_run(
            event,
            dedupe_key=None if idempotency_key is None else f"api:{idempotency_key}",
            trace_id=_trace_id(traceparent),
        )
        answer = StartedRun(
            run_id=created.run_id, created=created.created, subscribed=created.subscribed
        )
        return JSONResponse(answer.model_dump(), status_code=202 if created.created else 200)

    @router.get("", response_model=RunPage)
    def find(
        status: RunStatus | None = None,
        agent: Annotated[str | None, Query(max_length=200)] = None,
        event_type: Annotated[
            str | None, Query(max_length=200, description="the trigger's type")
        ] = None,
        since: Annotated[
            str | None,
            Query(
                max_length=64,
                description="a duration back from now (30m, 2h, 7d) or an ISO 8601 time",
            ),
        ] = None,
        cursor: Annotated[
            str | None, Query(max_length=64, description="next_cursor of the previous page")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> RunPage:
        """Runs, newest first, filtered; follow ``next_cursor`` for older ones."""
        found = list_runs(
            store,
            RunFilter(
                status=status,
                agent=agent,
                event_type=event_type,
                since=None if since is None else _since(since),
                before_id=cursor,
                limit=limit,
            ),
        )
        page = [RunView.from_row(row) for row in found]
        return RunPage(runs=page, next_cursor=page[-1].id if len(page) == limit else None)

    @router.get("/{run_id}", response_model=RunDetail, responses=responses(404))
    def show(run_id: RunId) -> RunDetail:
        """One run whole: its events, steps with every attempt, waits, memory and usage."""
        detail = run_detail(store, resolve_run_id(store, run_id))
        run = RunView.from_row(detail["run"])
        return RunDetail.model_validate(
            {**detail, "run": run, "usage": Usage.model_validate(detail["run"])}
        )

    @router.post(
        "/{run_id}/replay", status_code=202, response_model=Replayed, responses=responses(404, 409)
    )
    def replay(run_id: RunId, body: Replay) -> Replayed:
        """Re-run the failed steps of a failed run in place (or one of them); succeeded steps
        are not re-run and their recorded results are reused. With ``from_step_id``, fork: a
        new run keeps what came before that step and re-runs it and all that follows (its
        input or its model output edited; ``recorded`` reuses unchanged calls' answers). Each
        is recorded as an operation."""
        full_id = resolve_run_id(store, run_id)
        operator = Operator(actor=_API_ACTOR)
        if body.from_step_id is not None:
            step_id = resolve_step_id(store, full_id, body.from_step_id)
            forked = fork_run(
                store,
                full_id,
                step_id,
                reason=body.reason,
                operator=operator,
                edit=body.edit,
                edit_output=body.edit_output,
                recorded=body.recorded,
            )
            intake.publish(forked.publish)
            return Replayed(
                run_id=full_id,
                replayed_steps=[message.step_id for message in forked.publish],
                operation_id=operator.operation_id,
                fork_run_id=forked.run_id,
            )
        publish = replay_failed_steps(
            store, full_id, reason=body.reason, step_id=body.step_id, operator=operator
        )
        intake.publish(publish)
        return Replayed(
            run_id=full_id,
            replayed_steps=[message.step_id for message in publish],
            operation_id=operator.operation_id,
        )

    @router.post("/{run_id}/cancel", response_model=Canceled, responses=responses(404, 409))
    def cancel(run_id: RunId, body: Cancel) -> Canceled:
        """Cancel a live run: nothing pending runs, nothing in flight is committed after this."""
        full_id = resolve_run_id(store, run_id)
        cancel_run(store, full_id, body.reason, operator=Operator(actor=_API_ACTOR))
        return Canceled(run_id=full_id)

    @router.post(
        "/{run_id}/signals/{name}",
        status_code=202,
        response_model=Signalled,
        responses=responses(404, 409),
    )
    def signal(
        run_id: RunId,
        name: Annotated[str, Path(min_length=1, max_length=200, description="the wait's name")],
        data: Annotated[
            dict[str, Any] | None, Body(description="a JSON object handed to the waiting step")
        ] = None,
        step: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=200,
                description="the waiting step, when several wait for this name (its id, or "
                "the id's unique start or end)",
            ),
        ] = None,
        every: Annotated[
            bool, Query(alias="all", description="deliver to every step waiting for this name")
        ] = False,
    ) -> Signalled:
        """Deliver a named signal (an approval, a callback) to a run waiting for it; 409 if the
        run is not waiting for that name (yet, or any more), or if several steps are and the
        request names neither one of them nor all."""
        full_id = resolve_run_id(store, run_id)
        if step is not None and every:
            raise ApiError(
                422, "invalid_request", "query: step and all exclude each other; give one"
            )
        try:
            publish = send_signal(store, full_id, name, data or {}, step=step, every=every)
        except NotFound as error:
            raise ApiError(409, "no_open_wait", str(error)) from None
        except SignalAmbiguous as error:
            raise ApiError(409, "ambiguous_signal", str(error)) from None
        intake.publish(publish)
        return Signalled(run_id=full_id, name=name, resumed_steps=len(publish))

    return router


def _since(text: str) -> float:
    try:
        return time.time() - seconds(text, what="since")
    except ValueError as duration_error:
        try:
            moment = _datetime.validate_python(text)
        except ValidationError:
            raise ApiError(
                422,
                "invalid_request",
                f"query.since: {duration_error}, or an ISO 8601 time such as 2024-05-01T12:00:00Z",
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()


def _trace_id(traceparent: str | None) -> str | None:
    """The caller's trace id from a W3C ``traceparent``, so the run joins the caller's trace."""
    match = _TRACEPARENT.match(traceparent or "")
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)
