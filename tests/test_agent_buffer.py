"""The agent's durable buffer: order, bound and drop accounting, seq persistence, identical resends,
and consistency after the writing process is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.buffer import Buffer
from iot_protocol import Reading, generate_private_key, open_batch, public_key_raw

KEY = generate_private_key()
PUB = public_key_raw(KEY)
T0 = 1_750_000_000_000


def readings(start: int, n: int) -> list[Reading]:
    return [Reading(T0 + (start + i) * 1000, "env", {"temperature": float(start + i)}) for i in range(n)]


def drain(buf: Buffer, n: int = 10) -> list[float]:
    out = []
    while (b := buf.next_batch("dev1", KEY, max_readings=n, now_ms=T0)) is not None:
        out += [r.values["temperature"] for r in open_batch(b.token, topic_device="dev1", public_key=PUB).readings]
        buf.ack([b.seq])
    return out


def test_drains_in_production_order_and_empties(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")
    for i in range(0, 95, 5):
        buf.add(readings(i, 5))
    assert drain(buf, 10) == [float(i) for i in range(95)]
    st = buf.stats()
    assert (st.depth, st.produced, st.stored, st.dropped, st.last_seq) == (0, 95, 95, 0, 10)


def test_drop_oldest_counts_every_dropped_reading(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db", max_rows=20)
    for i in range(0, 50, 5):
        buf.add(readings(i, 5))
    st = buf.stats()
    assert (st.depth, st.produced, st.dropped) == (20, 50, 30)
    assert drain(buf) == [float(i) for i in range(30, 50)]  # the newest 20 survive


def test_drop_newest_refuses_new_readings(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db", max_rows=20, overflow="drop_newest")
    kept = [buf.add(readings(i, 5)) for i in range(0, 50, 5)]
    assert kept == [5, 5, 5, 5, 0, 0, 0, 0, 0, 0]
    assert (buf.stats().dropped, buf.stats().produced) == (30, 50)
    assert drain(buf) == [float(i) for i in range(20)]


def test_byte_bound(tmp_path: Path) -> None:
    size = len(b'{"ts":1750000000000,"sensor_type":"env","values":{"temperature":1.0},"quality":1.0}')
    buf = Buffer(tmp_path / "b.db", max_rows=10_000, max_bytes=max(4096, size * 50))
    buf.add(readings(0, 200))
    st = buf.stats()
    assert st.bytes <= max(4096, size * 50)
    assert st.depth + st.dropped == 200 and st.dropped > 0


def test_bound_drops_a_sealed_batch_only_when_nothing_else_is_left(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db", max_rows=10)
    buf.add(readings(0, 10))
    b = buf.next_batch("dev1", KEY, max_readings=10, now_ms=T0)
    assert b is not None and b.n == 10
    buf.add(readings(10, 3))  # over the bound and the oldest readings are sealed: the batch goes, counted
    st = buf.stats()
    assert (st.depth, st.dropped, st.batches) == (3, 10, 0)
    assert buf.ack([b.seq]) == 0  # a late receipt for the dropped batch is harmless


def test_seq_and_sealed_bytes_survive_reopen(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")
    buf.add(readings(0, 25))
    sent = [buf.next_batch("dev1", KEY, max_readings=10, now_ms=T0) for _ in range(3)]
    buf.ack([sent[0].seq])  # type: ignore[union-attr]
    buf.close()
    again = Buffer(tmp_path / "b.db")
    pending = again.unreceipted()
    assert [(p.seq, p.batch_id, p.token) for p in pending] == [(s.seq, s.batch_id, s.token) for s in sent[1:]]  # type: ignore[union-attr]
    buf2 = again.next_batch("dev1", KEY, max_readings=10, now_ms=T0)
    assert buf2 is None  # all 25 readings are in batches 1..3
    again.add(readings(25, 1))
    assert again.next_batch("dev1", KEY, max_readings=10, now_ms=T0).seq == 4  # type: ignore[union-attr]
    assert again.stats().stored == 10


def test_fresh_cursor_takes_only_newer_readings(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")
    buf.add(readings(0, 30))
    mark = buf.max_id()
    buf.add(readings(30, 2))
    fresh = buf.next_batch("dev1", KEY, max_readings=10, now_ms=T0, after_id=mark)
    vals = [r.values["temperature"] for r in open_batch(fresh.token, topic_device="dev1", public_key=PUB).readings]  # type: ignore[union-attr]
    assert vals == [30.0, 31.0]
    assert drain(buf) == [float(i) for i in range(30)]


WRITER = textwrap.dedent(
    """
    import sys, time
    from edge_agent.buffer import Buffer
    from iot_protocol import Reading, generate_private_key
    key = generate_private_key()
    buf = Buffer(sys.argv[1], max_rows=500, keep_produced_log=True)
    i = int(sys.argv[2])
    print("ready", flush=True)
    while True:
        buf.add([Reading(1750000000000 + i * 10 + k, "env", {"temperature": float(i)}) for k in range(3)])
        i += 1
        if i % 7 == 0:
            b = buf.next_batch("dev1", key, max_readings=20, now_ms=1)
            if b is not None and b.seq % 2 == 0:
                buf.ack([b.seq])
    """
)


@pytest.mark.parametrize("run", range(3))
def test_sigkill_leaves_a_consistent_buffer(tmp_path: Path, run: int) -> None:
    path = tmp_path / "b.db"
    last_seq = 0
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(round_ * 100_000)], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.05 + 0.1 * ((run + round_) % 3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        buf = Buffer(path, max_rows=500, keep_produced_log=True)
        st = buf.stats()
        logged = len(buf.produced_log())
        assert st.produced == logged > 0
        assert st.produced == st.depth + st.dropped + st.stored  # every reading accounted for
        assert st.last_seq >= last_seq  # seq never goes back
        pend = buf.unreceipted()
        assert all(p.seq <= st.last_seq for p in pend)
        last_seq = st.last_seq
        buf.close()


def test_a_lean_buffer_keeps_what_a_default_one_keeps() -> None:
    # the simulator's in-memory buffers are lean (no statement cache, 1 KiB pages): the same
    # operations must give the same batches, counters and stats as the agent's default buffer
    key = generate_private_key()
    lean, ref = Buffer(":memory:", lean=True, max_rows=25), Buffer(":memory:", max_rows=25)
    assert lean._db.execute("PRAGMA page_size").fetchone()[0] == 1024
    for step in range(12):
        outs = []
        for buf in (lean, ref):
            buf.add(readings(1_000 * step, 7))
            b = buf.next_batch("dev-1", key, max_readings=5, now_ms=1_700_000_000_000)
            acked = buf.ack([b.seq]) if b is not None and step % 3 else 0
            outs.append(
                (
                    b
                    and (
                        b.seq,
                        b.n,
                        open_batch(b.token, topic_device="dev-1", public_key=public_key_raw(key)).readings,
                    ),
                    acked,
                    buf.stats(),
                )
            )
        assert outs[0] == outs[1]


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 4)),
        st.tuples(st.just("seal"), st.integers(0, 2)),
        st.tuples(st.just("ack"), st.integers(0, 3)),
        st.tuples(st.just("quarantine"), st.integers(0, 3)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS, overflow=st.sampled_from(["drop_oldest", "drop_newest"]))
def test_what_the_buffer_keeps_in_memory_matches_its_database(ops: list[tuple[str, int]], overflow: str) -> None:
    # The buffer answers some questions without SQLite (readings not yet sealed, the last reading id,
    # the counters as committed): after any sequence of operations, a bound hit and a reopen, those
    # answers are the database's, and a fresh cursor at last_id selects what one at max_id() does.
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "b.db"
        buf, n, sealed = Buffer(path, max_rows=5, overflow=overflow), 0, []
        for op, k in ops:
            if op == "add":
                buf.add(readings(n, k))
                n += k
            elif op == "seal":
                after = buf.last_id - k if k else 0
                b = buf.next_batch("dev1", KEY, max_readings=3, now_ms=T0, after_id=max(0, after))
                sealed += [b.seq] if b is not None else []
            elif op == "ack" and sealed:
                buf.ack([sealed.pop(k % len(sealed))])
            elif op == "quarantine" and sealed:
                buf.quarantine(sealed.pop(k % len(sealed)), "no_receipt", T0)
            elif op == "reopen":
                buf.close()
                buf = Buffer(path, max_rows=5, overflow=overflow)
            db = buf._db
            assert buf._unbatched == db.execute("SELECT count(*) FROM readings WHERE seq IS NULL").fetchone()[0]
            assert buf.last_id >= buf.max_id()
            assert not db.execute(
                "SELECT 1 FROM readings WHERE id > ? AND id <= ?", (buf.max_id(), buf.last_id)
            ).fetchone()
            assert dict(db.execute("SELECT name, value FROM counters").fetchall()) == buf.counters
        buf.close()
