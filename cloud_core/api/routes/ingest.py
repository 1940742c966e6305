"""HTTP ingest: ``POST /v1/data/ingest`` takes one signed telemetry message (the JWS compact bytes of
docs/protocol.md §3, any content type, ``application/jose`` preferred) and answers with its receipt
once it is durably stored (:mod:`cloud_core.services.ingest`). The signature authenticates the
device: no bearer token is needed."""

from __future__ import annotations

import threading

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool

from iot_protocol import MAX_TOKEN_BYTES, Topics

from ...broker.receipts import ReceiptWaiter
from ...services.ingest import IngestResult, IngestService
from ..deps import ContextDep, public

router = APIRouter(prefix="/v1", tags=["ingest"])

_lock = threading.Lock()


def _service(request: Request, ctx: ContextDep) -> IngestService:
    """The app's ingest service, made on first use (its own MQTT connection) and closed with the app."""
    service: IngestService | None = getattr(request.app.state, "ingest", None)
    if service is not None:
        return service
    with _lock:
        service = getattr(request.app.state, "ingest", None)
        if service is None:
            s = ctx.settings
            host, port = s.mqtt_host_port
            waiter = ReceiptWaiter(
                host,
                port,
                Topics(s.topic_prefix),
                username=s.mqtt_username,
                password=s.service_password(),
                protocol=s.mqtt_protocol,
                timeout_s=s.mqtt_timeout_s,
            )
            service = IngestService(
                ctx.engine, Topics(s.topic_prefix), waiter, receipt_timeout_s=s.ingest_receipt_timeout_s
            )
            request.app.state.ingest = service
    return service


def _outcomes(request: Request) -> Counter:
    counter: Counter | None = getattr(request.app.state, "ingest_outcomes", None)
    if counter is None:
        with _lock:
            counter = getattr(request.app.state, "ingest_outcomes", None)
            if counter is None:
                counter = Counter(
                    "edu_ingest_requests",
                    "HTTP ingest requests by outcome (stored, no_receipt, or the rejection reason).",
                    ["outcome"],
                    registry=request.app.state.ctx.metrics.registry,
                )
                request.app.state.ingest_outcomes = counter
    return counter


@router.post(
    "/data/ingest",
    dependencies=[Depends(public("the device's Ed25519 signature over the batch"))],
    responses={
        200: {"description": "Stored: the receipt (it may name rejected readings)."},
        400: {"description": "Not a compact JWS of the contract (bad_envelope): the request is dead-lettered."},
        401: {"description": "The signature does not verify with the device's registered key."},
        403: {"description": "The device is deactivated."},
        404: {"description": "No such device."},
        413: {"description": "Larger than the contract's 256 KiB."},
        422: {"description": "Finally rejected: the receipt says why; delete the batch."},
        429: {"description": "Over the device's rate: resend the same bytes after Retry-After."},
        503: {"description": "No receipt in time: resend the same bytes later."},
    },
)
async def ingest(request: Request, ctx: ContextDep) -> Response:
    """Store one signed telemetry batch, exactly as over MQTT; the response is its receipt."""
    declared = request.headers.get("content-length")
    too_large = declared is not None and declared.isdigit() and int(declared) > MAX_TOKEN_BYTES
    body = bytearray()
    async for chunk in request.stream():  # read at most one byte past the limit
        body += chunk
        if len(body) > (4096 if too_large else MAX_TOKEN_BYTES):
            too_large = True
            break

    def handle() -> IngestResult:
        service = _service(request, ctx)
        if too_large:
            return service.refuse(bytes(body), "too_large", f"message larger than {MAX_TOKEN_BYTES} bytes")
        return service.submit(bytes(body))

    result = await run_in_threadpool(handle)
    _outcomes(request).labels(result.outcome).inc()
    return Response(result.body, status_code=result.status, media_type="application/json", headers=result.headers)
