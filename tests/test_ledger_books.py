"""The books (cloud_core.services.ledger): the fleet's grouped verdicts (:func:`ledger_verdicts`, one
query per chunk of devices) agree with :func:`compute_ledger` device by device, on SQLite and on
PostgreSQL, across key epochs, devices without health, and gaps; the bridge keeps re-exporting the
same functions."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_core.core.db import create_all, make_engine
from cloud_core.models import BatchLedger, Device
from cloud_core.services.ledger import compute_ledger, key_id_of, ledger_verdicts
from iot_protocol import generate_private_key, public_key_b64, public_key_raw


def _fill(engine: Engine, seed: int, n_devices: int = 40) -> list[str]:
    """Devices with random books: one to three key epochs (the current one registered, or none),
    NULL-key rows, gaps, rejected readings, health present or not, device counters that balance or not."""
    rng = random.Random(seed)
    keys = [generate_private_key() for _ in range(3)]
    kids = [key_id_of(public_key_raw(k)) for k in keys]
    ids = []
    with Session(engine) as session:
        for i in range(n_devices):
            device_id = f"books-{seed}-{i:03d}"
            ids.append(device_id)
            current = rng.choice([0, 1, 2, None])
            seq = 0
            rows: dict[int, tuple[int, int, str | None]] = {}  # a seq stored again under a new key overwrites
            for kid in rng.sample([None, *kids], rng.randint(1, 3)):
                if rng.random() < 0.3:
                    seq = 0  # a fresh buffer restarts its seqs
                for _ in range(rng.randint(0, 30)):
                    seq += rng.choice([1, 1, 1, 2, 5])
                    rows[seq] = (rng.randint(0, 10), rng.randint(0, 2), kid)
            for s, (n, rej, kid) in rows.items():
                session.add(BatchLedger(device_id=device_id, seq=s, batch_id=f"b{s}", payload_sha256="0" * 64,
                                        readings=n, rejected_readings=rej, key_id=kid))  # fmt: skip
            stored = sum(n for n, _, _ in rows.values())
            health = None
            if rng.random() < 0.8:
                health = {
                    "produced": stored + rng.randint(-5, 20), "buffer_depth": rng.randint(0, 8),
                    "dropped": rng.randint(0, 3), "quarantined": rng.randint(0, 2),
                    "last_seq": max(0, seq - rng.randint(0, 5)), "at": 1_700_000_000_000,
                }  # fmt: skip
                if rng.random() < 0.5:
                    health["extra"] = {"stored": stored - rng.randint(0, 5), "rejected": rng.randint(0, 5)}
            session.add(Device(
                id=device_id, status="active", health=health,
                last_health_at=datetime.now(UTC) if health else None,
                public_key=public_key_b64(keys[current]) if current is not None else None,
            ))  # fmt: skip
            session.commit()
    return ids


def _check(engine: Engine, ids: list[str]) -> int:
    with Session(engine) as session:
        devices = [session.get(Device, d) for d in ids]
        assert all(d is not None for d in devices)
        bulk = ledger_verdicts(session, devices)  # type: ignore[arg-type]
        for device_id in ids:
            one = compute_ledger(session, device_id)
            assert bulk[device_id] == dataclasses.replace(one, missing=()), device_id
            assert bulk[device_id].verdict == one.verdict
        return sum(1 for b in bulk.values() if not b.balanced)


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path}/meta.db")
    create_all(engine)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fleet_verdicts_match_the_books_of_each_device_sqlite(sqlite_engine: Engine, seed: int) -> None:
    ids = _fill(sqlite_engine, seed)
    unbalanced = _check(sqlite_engine, ids)
    assert 0 < unbalanced < len(ids), "the data exercises both verdicts"


@pytest.mark.integration
def test_fleet_verdicts_match_the_books_of_each_device_postgres(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        create_all(engine)
        ids = _fill(engine, 7, n_devices=450)  # more than one chunk of devices
        _check(engine, ids)
    finally:
        engine.dispose()


def test_a_device_without_health_has_no_verdict_yet(sqlite_engine: Engine) -> None:
    with Session(sqlite_engine) as session:
        session.add(Device(id="quiet", status="active"))
        session.add(BatchLedger(device_id="quiet", seq=3, batch_id="b", payload_sha256="0" * 64, readings=4))
        session.commit()
        books = ledger_verdicts(session, [session.get(Device, "quiet")])["quiet"]  # type: ignore[list-item]
    assert books.verdict == "no-health" and books.stored == 4 and books.last_seq == 3


def test_the_bridge_reexports_the_same_books() -> None:
    import broker_bridge
    import broker_bridge.ledger
    import broker_bridge.pipeline
    from cloud_core.services import ledger

    assert broker_bridge.compute_ledger is ledger.compute_ledger
    assert broker_bridge.ledger.missing_ranges is ledger.missing_ranges
    assert broker_bridge.pipeline.key_id_of is ledger.key_id_of
