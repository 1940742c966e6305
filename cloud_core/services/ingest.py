"""HTTP ingest (``POST /v1/data/ingest``): the MQTT wire contract for devices that cannot hold an MQTT
session. The request body is the same signed telemetry message (a JWS, docs/protocol.md §3), and the
response is the same receipt, sent only after the durable write.

A verified message is handed to the one ingest path there is: it is published on the device's
telemetry topic, so the bridge verifies, deduplicates, rate-limits, stores, dead-letters, counts and
receipts it exactly as if the device had sent it over MQTT, and the receipt for it (seen on the
device's receipts topic) becomes the HTTP response. A message that does not verify is answered here
at once (with the reason, as an HTTP error) and dead-lettered here, never forwarded: a forged
request cannot spend a device's rate limit or make the bridge work.

Outcomes (:class:`IngestResult`): 200 stored (the receipt may name rejected readings), 422 finally
rejected (the receipt says why: delete the batch), 429 retry later (``Retry-After``), 400/401/403/404/
413 not verifiable (no receipt: the device's rule for unreceipted batches applies), 503 no receipt in
time (resend the same bytes later).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlmodel import Session

from iot_protocol import (
    MAX_TOKEN_BYTES,
    ProtocolError,
    Receipt,
    Topics,
    encode,
    jws,
    peek_seq,
    public_key_from_b64,
    validate_device_id,
    verify_batch,
)

from ..broker.receipts import ReceiptWaiter
from ..models import Device, RejectedMessage

__all__ = ["HTTP_TOPIC", "IngestResult", "IngestService"]

log = logging.getLogger(__name__)

HTTP_TOPIC = "http:/v1/data/ingest"  # the dead letters' topic for a request naming no device
_PAYLOAD_KEEP = 4096
_STATUS = {  # reasons found before verification -> HTTP status
    "too_large": 413,
    "bad_envelope": 400,
    "unknown_device": 404,
    "inactive_device": 403,
    "bad_signature": 401,
    "device_mismatch": 401,
}


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The HTTP answer: status, JSON body, extra headers, and the outcome for metrics."""

    status: int
    body: bytes
    outcome: str
    headers: dict[str, str] = field(default_factory=dict)


def _claimed_device(token: bytes) -> str | None:
    """The device id an (unverified) token's header names, if it is a valid one."""
    head = token.split(b".", 1)[0][:4096]
    try:
        kid = orjson.loads(jws.b64url_decode(head)).get("kid")
        return validate_device_id(kid) if isinstance(kid, str) else None
    except Exception:
        return None


def _only(receipt: Receipt, seq: int | None, sha256: str) -> Receipt | None:
    """The part of ``receipt`` about this message (by seq, or by SHA-256 when no seq was readable)."""
    if seq is None:
        unread = tuple(u for u in receipt.unread if u.sha256 == sha256)
        return Receipt(unread=unread[:1]) if unread else None
    if seq in receipt.stored:
        return Receipt(stored=(seq,), readings=tuple(o for o in receipt.readings if o.seq == seq)[:1])
    for r in receipt.rejected:
        if r.seq == seq:
            return Receipt(rejected=(r,), readings=tuple(o for o in receipt.readings if o.seq == seq)[:1])
    for x in receipt.retry:
        if x.seq == seq:
            return Receipt(retry=(x,))
    return None


class IngestService:
    """Verifies a posted telemetry message, forwards it to the bridge and waits for its receipt."""

    def __init__(
        self,
        engine: Engine,
        topics: Topics,
        waiter: ReceiptWaiter,
        *,
        receipt_timeout_s: float,
    ) -> None:
        self._engine = engine
        self._topics = topics
        self._waiter = waiter
        self._timeout_s = receipt_timeout_s

    def close(self) -> None:
        self._waiter.close()

    def refuse(self, token: bytes, reason: str, detail: str, device_id: str | None = None) -> IngestResult:
        """Answer and dead-letter a message that cannot be verified (the bridge never sees it)."""
        device_id = device_id if device_id is not None else _claimed_device(token)
        topic = self._topics.telemetry(device_id) if device_id is not None else HTTP_TOPIC
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    insert(RejectedMessage),
                    [
                        {
                            "device_id": device_id,
                            "topic": topic,
                            "reason": reason,
                            "detail": detail[:2000],
                            "seq": None,
                            "reading_index": None,
                            "received_at": datetime.now(UTC),
                            "payload_sha256": hashlib.sha256(token).hexdigest(),
                            "payload": token[:_PAYLOAD_KEEP],
                        }
                    ],
                )
        except Exception as exc:  # the answer matters more than the record; say so in the log
            log.error("dead letter of an HTTP ingest refusal not written: %s", exc, extra={"reason": reason})
        body = orjson.dumps({"detail": detail, "code": reason})
        return IngestResult(_STATUS.get(reason, 400), body, reason)

    def submit(self, token: bytes) -> IngestResult:
        """Handle one posted message (blocking: call it from a worker thread)."""
        if len(token) > MAX_TOKEN_BYTES:
            return self.refuse(token, "too_large", f"message of {len(token)} bytes exceeds {MAX_TOKEN_BYTES}")
        try:
            parsed = jws.decode(token)
            device_id = validate_device_id(parsed.kid)
        except ProtocolError as exc:
            reason = exc.reason if exc.reason in _STATUS else "bad_envelope"
            return self.refuse(token, reason, str(exc))
        with Session(self._engine) as session:
            device = session.get(Device, device_id)
            status, public_key = (device.status, device.public_key) if device is not None else (None, None)
        if status is None:
            return self.refuse(token, "unknown_device", f"no device {device_id!r} in the registry", device_id)
        if status != "active" or not public_key:
            return self.refuse(
                token, "inactive_device", f"device {device_id!r} is not active (deactivated or not enrolled)", device_id
            )
        try:
            verified = verify_batch(token, topic_device=device_id, public_key=public_key_from_b64(public_key))
        except (ProtocolError, ValueError) as exc:
            return self.refuse(token, getattr(exc, "reason", "bad_signature"), str(exc), device_id)
        seq, _ = peek_seq(verified.payload)
        sha256 = hashlib.sha256(token).hexdigest()
        receipt = self._waiter.send_and_wait(
            device_id, token, lambda r: _only(r, seq, sha256), timeout_s=self._timeout_s
        )
        if receipt is None:
            return IngestResult(
                503,
                orjson.dumps(
                    {
                        "detail": f"no receipt within {self._timeout_s:g}s (is the bridge running?): "
                        "resend the same bytes later",
                        "code": "unavailable",
                    }
                ),
                "no_receipt",
                {"Retry-After": "5"},
            )
        body = encode(receipt)
        if receipt.stored:
            return IngestResult(200, body, "stored")
        if receipt.retry:
            after = math.ceil(receipt.retry[0].after_ms / 1000) if receipt.retry[0].after_ms else 1
            return IngestResult(429, body, receipt.retry[0].reason, {"Retry-After": str(max(1, after))})
        reason = receipt.rejected[0].reason if receipt.rejected else receipt.unread[0].reason
        return IngestResult(422, body, reason)
