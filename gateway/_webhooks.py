"""``POST /webhooks/{source}``: cap, verify, parse, dedupe, commit, answer 202.

Nothing more happens before the answer: the run's messages are published after it, and a
rejected delivery stores nothing.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway._body import read_capped
from gateway._config import GatewayConfig
from gateway._errors import ApiError, responses
from gateway._intake import Intake
from gateway._metrics import Metrics
from gateway._models import DeliveryAnswer
from gateway.sources import SECRET_VARIABLES, WebhookSource

_IGNORED = (
    "no actor subscribes to {type!r}; the delivery is recorded and nothing runs. To handle "
    "it, subscribe an actor to it and name its module in BATON_MODULES"
)


def webhook_router(
    intake: Intake, sources: dict[str, WebhookSource], config: GatewayConfig, metrics: Metrics
) -> APIRouter:
    router = APIRouter(tags=["webhooks"])

    @router.post(
        "/webhooks/{source}",
        status_code=202,
        summary="Receive a signed webhook delivery",
        response_model=DeliveryAnswer,
        responses={
            200: {"model": DeliveryAnswer, "description": "A repeat of an accepted delivery"},
            **responses(400, 401, 404, 413, 422, 503),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "The sender's JSON payload, exactly as signed",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
    async def receive_webhook(source: str, request: Request) -> JSONResponse:
        """Verify a delivery from ``github`` (X-Hub-Signature-256) or ``standard`` (Standard
        Webhooks) and start its run: 202 with the run id; a repeated delivery answers 200
        with the run it started; a type no actor subscribes to is recorded and ignored."""
        handler = sources.get(source)
        if handler is None:
            metrics.deliveries.labels("unknown", "unknown_source").inc()
            raise ApiError(
                404,
                "unknown_source",
                f"no webhook source {source!r} is configured here; configured: "
                f"{', '.join(sorted(sources)) or 'none'}. Sources are github "
                f"({SECRET_VARIABLES['github']}) and standard "
                f"({SECRET_VARIABLES['standard']})",
                headers={"Connection": "close"},
            )
        try:
            body = await read_capped(request, config.max_bytes(source))
            handler.verify(request.headers, body)
            delivery = handler.delivery(request.headers, body)
            outcome = await intake.deliver(delivery)
        except ApiError as error:
            metrics.deliveries.labels(source, error.error).inc()
            raise
        except Exception:
            # The store or the gateway failed (503 or 500): the sender should retry.
            metrics.deliveries.labels(source, "failed").inc()
            raise
        metrics.deliveries.labels(source, outcome.status).inc()
        answer = DeliveryAnswer(
            status=outcome.status,
            run_id=outcome.run_id,
            event_type=delivery.event_type,
            delivery_id=delivery.delivery_id,
            detail=_IGNORED.format(type=delivery.event_type)
            if outcome.status == "ignored"
            else None,
        )
        return JSONResponse(
            answer.model_dump(), status_code=200 if outcome.status == "duplicate" else 202
        )

    return router
