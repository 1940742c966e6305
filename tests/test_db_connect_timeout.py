"""A PostgreSQL host that accepts connections and never answers (a stuck proxy, a half-dead node) must
not hang whoever connects: the engine gives up after CONNECT_TIMEOUT_S, or after the URL's own
``connect_timeout``."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from cloud_core.core import db


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts every connection and never sends a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    srv.close()


def _time_to_fail(url: str) -> float:
    engine = db.make_engine(url)
    t0 = time.monotonic()
    with pytest.raises(OperationalError, match="timeout"), engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    engine.dispose()
    return time.monotonic() - t0


def test_the_default_timeout_ends_a_connection_that_never_answers(
    silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 2)
    took = _time_to_fail(f"postgresql://edu@127.0.0.1:{silent_server}/edu")
    assert 1.5 <= took < 8  # pool_pre_ping does not retry a connect: one attempt, then the error


def test_the_urls_own_connect_timeout_wins(silent_server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 30)
    took = _time_to_fail(f"postgresql://edu@127.0.0.1:{silent_server}/edu?connect_timeout=1")
    assert took < 6


def test_iotctl_db_says_the_database_did_not_answer(silent_server: int) -> None:
    url = f"postgresql://edu@127.0.0.1:{silent_server}/edu?connect_timeout=1"
    r = subprocess.run(
        [sys.executable, "-m", "iotctl", "db", "current", "--db", url], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"cannot read the schema revision of postgresql://edu@127.0.0.1:{silent_server}/edu" in r.stderr
    assert "timeout" in r.stderr
