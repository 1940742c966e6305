"""What the bridge does with each rejection: the one table mapping a reason to its receipt, its
acknowledgement, its dead letter and whether it uses up the seq (docs/protocol.md, "Receipts").

Every rejected message is acknowledged (it never holds the MQTT session: one bad message cannot
wedge the bridge) and dead-lettered (a row in ``rejected_messages`` and a count in
``bridge_rejected_total{reason}``). What differs is what the device is told:

- ``final``: the batch can never be stored; the device deletes it. Said only about a batch whose
  signature verified (anyone may publish on an anonymous broker: an unverified message must not make
  a device delete anything). With a readable seq it is named in ``rejected`` and recorded in the
  ledger (the seq is used; a byte-identical resend gets the same receipt again); without one it is
  named by its SHA-256 in ``unread``.
- ``retry``: not stored, not final: resend the identical bytes after ``after_ms``. Safe to say even
  about an unverified message (a retry never deletes anything), so it is said whenever a seq can be
  read, and nothing is recorded in the ledger.
- a message that is neither verified nor a retry gets no receipt: the device resends it a bounded
  number of times and then quarantines it (docs/protocol.md).

A new reason is one row here. A batch whose readings were
all rejected is final with its first reading's reason (reading-level reasons are not in this table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DISPOSITIONS", "FINAL", "RETRY", "Disposition", "disposition"]

FINAL: Literal["final"] = "final"
RETRY: Literal["retry"] = "retry"


@dataclass(frozen=True, slots=True)
class Disposition:
    """How one rejection reason is answered.

    Attributes:
        receipt: ``final`` (told only when the signature verified) or ``retry`` (always told when a
            seq can be read).
        acked: the MQTT message is acknowledged (always: nothing may hold the session).
        dead_lettered: a ``rejected_messages`` row and a count (always).
        keep_payload: the dead letter keeps the first 4 KiB of the payload (not for floods).
        quiet: logged at DEBUG rather than INFO (floods).
        records_seq: a verified batch rejected for this reason has its seq recorded in the ledger
            (the seq is used up; a resend of the same bytes is answered from the ledger).
    """

    receipt: Literal["final", "retry"]
    acked: bool = True
    dead_lettered: bool = True
    keep_payload: bool = True
    quiet: bool = False
    records_seq: bool = True


_FINAL = Disposition(FINAL)

DISPOSITIONS: dict[str, Disposition] = {
    # before or without verification: final, so told only when verified (never, for these)
    "bad_topic": _FINAL,
    "too_large": _FINAL,  # > 256 KiB before verification; > 1000 readings after it (then told)
    "bad_envelope": _FINAL,
    "unknown_device": _FINAL,
    "inactive_device": _FINAL,
    "bad_signature": _FINAL,
    "device_mismatch": _FINAL,  # kid (unverified) or the signed payload's device_id (verified)
    "malformed": _FINAL,
    # after verification: the device's own batch, told
    "bad_json": _FINAL,
    "bad_schema": _FINAL,
    "unsupported_version": _FINAL,
    "replayed_seq": Disposition(FINAL, records_seq=False),  # the seq's row is the batch stored first
    "store_rejected": _FINAL,
    # throttling: not stored, resend later
    "rate_limited": Disposition(RETRY, keep_payload=False, quiet=True, records_seq=False),
    "quota_exceeded": Disposition(RETRY, keep_payload=False, quiet=True, records_seq=False),  # per device/class
    # the device's key is not cached and the metadata DB is down: resend later
    "registry_unavailable": Disposition(RETRY, keep_payload=False, quiet=True, records_seq=False),
}


def disposition(reason: str) -> Disposition:
    """The disposition of ``reason``; an unknown reason is final (never told unless verified)."""
    return DISPOSITIONS.get(reason, _FINAL)
