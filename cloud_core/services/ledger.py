"""A device's books: produced = stored + rejected + buffered + dropped + quarantined + in flight, from
the batch ledger (``batch_ledger``, written by the bridge) and the device's last health message.

:func:`compute_ledger` balances one device and names its missing seq ranges (``iotctl devices
ledger``, ``GET /v1/devices/{id}/ledger``); :func:`ledger_verdicts` balances many devices at once
with the same arithmetic from per-device sums computed by the database (the console's fleet page:
one query, whatever the number of batches). :func:`key_id_of` names a signing key's seq epoch; the
bridge records it on every ledger row.

Seq epochs: each row records the id of the key that signed the batch. A device that re-enrolls or is
rotated signs with a new key and may restart its seqs; the current epoch is the rows signed by the
registered key, plus rows of earlier keys below the first seq stored under it. Rows from before the
column (``key_id`` NULL) count as an older epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from iot_protocol import public_key_from_b64

from ..models import BatchLedger, Device

__all__ = [
    "DeviceLedger",
    "compute_ledger",
    "current_key_id",
    "key_id_of",
    "ledger_verdicts",
    "missing_ranges",
]

_CHUNK = 400  # devices per verdict query (4 bound values each: far below SQLite's 32,766)
_NO_HEALTH_UPTO = 2**62  # a device without a health message: every stored row counts


def key_id_of(public_key: bytes) -> str:
    """The id of a signing key: the first 16 hex digits of the SHA-256 of its 32 raw bytes. A seq
    belongs to the key that signed it (a re-enrolled or rotated device starts a new seq epoch)."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def missing_ranges(seqs: Iterable[int], *, first: int, last: int) -> list[tuple[int, int]]:
    """Inclusive ranges of [first, last] not in ``seqs``."""
    have = sorted({s for s in seqs if first <= s <= last})
    out: list[tuple[int, int]] = []
    expect = first
    for s in have:
        if s > expect:
            out.append((expect, s - 1))
        expect = s + 1
    if expect <= last:
        out.append((expect, last))
    return out


@dataclass(frozen=True, slots=True)
class DeviceLedger:
    """A device's books as of its last health message, like with like: the device's counts at that
    moment against the batches it had sealed by then (seqs up to its ``last_seq``), however late they
    were stored. See :func:`compute_ledger`.

    produced = stored + rejected + buffered + dropped + in_flight holds exactly; no term is negative.
    """

    device_id: str
    produced: int
    stored: int  # readings stored in batches up to last_seq
    rejected: int  # invalid readings of stored batches, plus readings of batches rejected whole
    buffered: int  # on the device at the health message and not stored (yet)
    dropped: int
    in_flight: int  # none of the above: deleted by the device yet not stored (lost unless a resend comes)
    stored_batches: int
    last_seq: int
    missing: tuple[tuple[int, int], ...]  # seqs up to last_seq without a stored batch
    health_at: int | None  # the health message's own time (the device's clock)
    awaiting_receipt: int = 0  # in the device's buffer at the health message but already stored
    excess: int = 0  # stored beyond what the device accounts for (another writer under its id?)
    lost: int = 0  # receipted as stored by the device, absent from the ledger
    stored_after: int = 0  # batches sealed after the health message and already stored (not counted)
    health_received_at: datetime | None = None  # when the cloud received that health message
    quarantined: int = 0  # readings the device set aside in batches the cloud never answered
    has_health: bool = True  # False: no health message yet, so nothing to balance against

    @property
    def balanced(self) -> bool:
        """Nothing unaccounted, lost or in excess. Seqs still on the device, or rejected whole, may be
        missing from the ledger of a balanced device."""
        return self.in_flight == 0 and self.excess == 0 and self.lost == 0

    @property
    def verdict(self) -> str:
        """One word for a list: ``no-health`` (nothing to compare with yet), ``balanced``, or the
        first problem: ``in-flight``, ``lost``, ``excess``."""
        if not self.has_health:
            return "no-health"
        if self.in_flight:
            return "in-flight"
        if self.lost:
            return "lost"
        if self.excess:
            return "excess"
        return "balanced"


def current_key_id(device: Device) -> str | None:
    """The key id of the device's registered public key (None when it has none or it is unreadable)."""
    if not device.public_key:
        return None
    try:
        return key_id_of(public_key_from_b64(device.public_key))
    except Exception:  # a corrupt registry entry: no epoch can be told
        return None


@dataclass(frozen=True, slots=True)
class _Health:
    """What the books need from a device's last health message."""

    present: bool
    produced: int
    buffered: int
    dropped: int
    quarantined: int
    last_seq: int
    dev_stored: int | None
    dev_rejected: int | None
    at: int | None

    @classmethod
    def of(cls, device: Device) -> _Health:
        health: dict[str, Any] = device.health or {}
        extra = health.get("extra") if isinstance(health.get("extra"), dict) else {}
        assert isinstance(extra, dict)
        at = health.get("at")
        return cls(
            present=device.health is not None,
            produced=int(health.get("produced", 0) or 0),
            buffered=int(health.get("buffer_depth", 0) or 0),
            dropped=int(health.get("dropped", 0) or 0),
            quarantined=int(health.get("quarantined", 0) or 0),
            last_seq=int(health.get("last_seq", 0) or 0),
            dev_stored=extra.get("stored") if isinstance(extra.get("stored"), int) else None,
            dev_rejected=extra.get("rejected") if isinstance(extra.get("rejected"), int) else None,
            at=int(at) if isinstance(at, int) else None,
        )


def _balance(
    device: Device,
    h: _Health,
    *,
    stored: int,
    rejected_rows: int,
    stored_batches: int,
    last_seq: int,
    missing: tuple[tuple[int, int], ...],
    stored_after: int,
) -> DeviceLedger:
    """The books from the counted rows' sums (the arithmetic both :func:`compute_ledger` and
    :func:`ledger_verdicts` use)."""
    # Rejected readings (whole batches and single readings) are counted as the device counts them when
    # it reports: a rejection whose receipt is still on its way is in ``buffered`` then, not here.
    rejected = h.dev_rejected if h.dev_rejected is not None else rejected_rows
    gap = h.produced - stored - rejected - h.buffered - h.dropped - h.quarantined
    in_flight = max(0, gap)
    awaiting = min(h.buffered, max(0, -gap))
    excess = max(0, -gap - h.buffered)
    lost = max(0, h.dev_stored - stored) if h.dev_stored is not None else 0
    return DeviceLedger(
        device_id=device.id,
        produced=h.produced,
        stored=stored,
        rejected=rejected,
        buffered=h.buffered - awaiting,
        dropped=h.dropped,
        in_flight=in_flight,
        stored_batches=stored_batches,
        last_seq=last_seq,
        missing=missing,
        health_at=h.at,
        awaiting_receipt=awaiting,
        excess=excess,
        lost=lost,
        stored_after=stored_after,
        health_received_at=device.last_health_at,
        quarantined=h.quarantined,
        has_health=h.present,
    )


def compute_ledger(session: Session, device_id: str, *, first_seq: int = 1) -> DeviceLedger:
    """Balance ``device_id``'s books for its current seq epoch from the BatchLedger and its last
    Health (Device.health), comparing like with like.

    The health message is a snapshot at one moment of the device's clock; the ledger keeps growing.
    So only batches the device had sealed by then count (seq <= the message's ``last_seq``), however
    late they were stored, and nothing sealed after it: a healthy device balances at any moment.
    A batch stored before its receipt reached the device is in both the ledger and the device's
    buffer; it is counted once, as stored (``awaiting_receipt`` says how many readings).

    produced = stored + rejected + buffered + dropped + quarantined + in flight, in readings, every
    term >= 0 (quarantined: batches the cloud never answered, set aside on the device).
    ``in_flight`` > 0 means readings the device no longer holds that were never stored;
    ``lost`` > 0 that the device was told they were stored (its ``extra.stored`` counter) and the ledger
    lacks them; ``excess`` > 0 more stored than the device accounts for. Any of them: not balanced.
    ``missing`` names seq ranges up to ``last_seq`` without a stored batch (on the device still, or
    rejected whole: a rejected batch leaves no ledger row).

    The current epoch is the rows signed by the device's registered key, plus rows of earlier keys
    below the first seq stored under it (a device that kept its buffer across a rotation continues its
    seqs and counters; one that restarted with a fresh buffer restarted both). With no row under the
    current key yet, earlier rows up to the health message's ``last_seq`` count. A device without a
    readable key counts every row.

    Raises:
        KeyError: no such device.
    """
    device = session.get(Device, device_id)
    if device is None:
        raise KeyError(device_id)
    h = _Health.of(device)
    rows: list[tuple[int, int, int, str | None]] = [
        (int(seq), int(n), int(rej), kid)
        for seq, n, rej, kid in session.exec(
            select(BatchLedger.seq, BatchLedger.readings, BatchLedger.rejected_readings, BatchLedger.key_id).where(
                BatchLedger.device_id == device_id
            )
        )
    ]
    cur = current_key_id(device)
    if cur is not None:
        mine = [r for r in rows if r[3] == cur]
        floor = min(r[0] for r in mine) if mine else h.last_seq + 1
        rows = mine + [r for r in rows if r[3] != cur and r[0] < floor]
    if not h.present:  # nothing to compare with: show everything stored
        upto, after = rows, []
        last_seq = max((r[0] for r in rows), default=0)
    else:
        upto = [r for r in rows if r[0] <= h.last_seq]
        after = [r for r in rows if r[0] > h.last_seq]
        last_seq = h.last_seq
    return _balance(
        device,
        h,
        stored=sum(r[1] for r in upto),
        rejected_rows=sum(r[2] for r in upto),
        stored_batches=sum(1 for r in upto if r[1] > 0),
        last_seq=last_seq,
        missing=tuple(missing_ranges([r[0] for r in upto], first=first_seq, last=last_seq)),
        stored_after=len(after),
    )


# Per device (v.d): sum the rows of its current epoch (v.cur NULL: every row; else rows of that key,
# and rows of other keys below v.floor) that the health message covers (seq <= v.upto). Built with the
# driver's own placeholders: 4 values per device, no SQL text to parse on every call.
_VERDICT_SQL = """
WITH v(d, cur, floor_seq, upto) AS (VALUES {values})
SELECT b.device_id,
       SUM(CASE WHEN b.seq <= v.upto THEN b.readings ELSE 0 END),
       SUM(CASE WHEN b.seq <= v.upto THEN b.rejected_readings ELSE 0 END),
       SUM(CASE WHEN b.seq <= v.upto AND b.readings > 0 THEN 1 ELSE 0 END),
       SUM(CASE WHEN b.seq > v.upto THEN 1 ELSE 0 END),
       MAX(b.seq)
FROM batch_ledger b JOIN v ON b.device_id = v.d
WHERE v.cur IS NULL OR b.key_id = v.cur OR ((b.key_id IS NULL OR b.key_id <> v.cur) AND b.seq < v.floor_seq)
GROUP BY b.device_id
"""
_ROW = "(CAST({p} AS VARCHAR(64)), CAST({p} AS VARCHAR(16)), CAST({p} AS BIGINT), CAST({p} AS BIGINT))"


def ledger_verdicts(session: Session, devices: Sequence[Device]) -> dict[str, DeviceLedger]:
    """The books of many devices at once, exactly as :func:`compute_ledger` balances each, except
    that ``missing`` is left empty (naming gaps needs every seq; ask :func:`compute_ledger` for one
    device). Two grouped queries per chunk of devices, whatever the number of stored batches."""
    out: dict[str, DeviceLedger] = {}
    conn = session.connection()
    placeholder = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    for i in range(0, len(devices), _CHUNK):
        chunk = list(devices[i : i + _CHUNK])
        ids = [d.id for d in chunk]
        # the first seq stored under each key: where the current epoch's floor lies
        firsts: dict[tuple[str, str | None], int] = {
            (d, k): int(s)
            for d, k, s in conn.execute(
                select(BatchLedger.device_id, BatchLedger.key_id, func.min(BatchLedger.seq))
                .where(col(BatchLedger.device_id).in_(ids))
                .group_by(col(BatchLedger.device_id), col(BatchLedger.key_id))
            )
        }
        healths = {d.id: _Health.of(d) for d in chunk}
        params: list[Any] = []
        for d in chunk:
            h = healths[d.id]
            cur = current_key_id(d)
            floor = firsts.get((d.id, cur), h.last_seq + 1) if cur is not None else 0
            params += [d.id, cur, floor, h.last_seq if h.present else _NO_HEALTH_UPTO]
        row_sql = _ROW.format(p=placeholder)
        sql = _VERDICT_SQL.format(values=", ".join([row_sql] * len(chunk)))
        sums = {row[0]: row[1:] for row in conn.exec_driver_sql(sql, tuple(params))}
        for d in chunk:
            h = healths[d.id]
            stored, rejected_rows, batches, after, max_seq = sums.get(d.id, (0, 0, 0, 0, None))
            out[d.id] = _balance(
                d,
                h,
                stored=int(stored or 0),
                rejected_rows=int(rejected_rows or 0),
                stored_batches=int(batches or 0),
                last_seq=h.last_seq if h.present else int(max_seq or 0),
                missing=(),
                stored_after=int(after or 0),
            )
    return out
