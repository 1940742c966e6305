"""The cache seam: the in-process and the Redis implementation pass the same tests."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from cloud_core.cache import Cache, CacheError, CacheUnavailable, open_cache


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    # memory:// URLs are shared per process (like one Redis), so each test takes its own name.
    url = f"memory://{uuid.uuid4().hex}" if request.param == "memory" else request.getfixturevalue("redis_url")
    c = open_cache(url)
    yield c
    c.close()


def _until(predicate, timeout: float = 3.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_get_set_delete(cache: Cache) -> None:
    assert cache.get("k") is None
    cache.set("k", "v1")
    assert cache.get("k") == "v1"
    cache.set("k", "v2")
    assert cache.get("k") == "v2"
    assert cache.delete("k", "missing") == 1
    assert cache.get("k") is None


def test_ttl_expires(cache: Cache) -> None:
    cache.set("short", "x", ttl_s=0.1)
    cache.set("long", "y", ttl_s=60)
    assert cache.get("short") == "x"
    assert _until(lambda: cache.get("short") is None)
    assert cache.get("long") == "y"


def test_set_if_absent_first_writer_wins(cache: Cache) -> None:
    assert cache.set_if_absent("dedup:1", "a", ttl_s=60) is True
    assert cache.set_if_absent("dedup:1", "b", ttl_s=60) is False
    assert cache.get("dedup:1") == "a"
    assert cache.set_if_absent("dedup:2", "a", ttl_s=0.1) is True
    assert _until(lambda: cache.set_if_absent("dedup:2", "b", ttl_s=60))
    assert cache.get("dedup:2") == "b"


def test_set_if_absent_is_atomic_across_threads(cache: Cache) -> None:
    wins: list[bool] = []
    lock = threading.Lock()

    def claim() -> None:
        ok = cache.set_if_absent("race", threading.current_thread().name, ttl_s=60)
        with lock:
            wins.append(ok)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_incr_counts_and_ttl_set_on_create_only(cache: Cache) -> None:
    assert cache.incr("n") == 1
    assert cache.incr("n", 5) == 6
    assert cache.get("n") == "6"
    assert cache.incr("window", ttl_s=0.3) == 1
    assert cache.incr("window", ttl_s=60) == 2  # does not extend the window
    assert _until(lambda: cache.get("window") is None)
    assert cache.incr("window", ttl_s=60) == 1
    cache.set("text", "abc")
    with pytest.raises(CacheError):
        cache.incr("text")


def test_hashes_latest_reading(cache: Cache) -> None:
    assert cache.hgetall("latest:dev-1") == {}
    cache.hset("latest:dev-1", {"ts": "1", "temperature": "21.5"})
    cache.hset("latest:dev-1", {"ts": "2", "humidity": "40"}, ttl_s=60)
    assert cache.hgetall("latest:dev-1") == {"ts": "2", "temperature": "21.5", "humidity": "40"}
    cache.hset("latest:dev-2", {"ts": "1"}, ttl_s=0.1)
    assert _until(lambda: cache.hgetall("latest:dev-2") == {})


def test_stream_consumer_group_delivers_each_entry_once(cache: Cache) -> None:
    cache.ensure_group("events", "analytics")
    cache.ensure_group("events", "analytics")  # idempotent
    ids = [cache.stream_add("events", {"device_id": f"d{i}", "v": str(i)}) for i in range(5)]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert cache.stream_len("events") == 5
    a = cache.stream_read_group("events", "analytics", "worker-a", count=3)
    b = cache.stream_read_group("events", "analytics", "worker-b", count=10)
    assert [e[0] for e in a] == ids[:3]
    assert [e[0] for e in b] == ids[3:]
    assert a[0][1] == {"device_id": "d0", "v": "0"}
    assert cache.stream_read_group("events", "analytics", "worker-a") == []
    # Unacked entries are re-delivered to their consumer on request (crash recovery), acked ones not.
    assert cache.stream_ack("events", "analytics", [ids[0]]) == 1
    assert cache.stream_ack("events", "analytics", [ids[0]]) == 0
    again = cache.stream_read_group("events", "analytics", "worker-a", pending=True)
    assert [e[0] for e in again] == ids[1:3]
    assert again[0][1] == {"device_id": "d1", "v": "1"}
    assert cache.stream_ack("events", "analytics", ids[1:]) == 4
    assert cache.stream_read_group("events", "analytics", "worker-a", pending=True) == []


def test_group_start_dollar_sees_only_new_entries(cache: Cache) -> None:
    cache.stream_add("s", {"n": "old"})
    cache.ensure_group("s", "late", start="$")
    cache.ensure_group("s", "all", start="0")
    new = cache.stream_add("s", {"n": "new"})
    assert [e[0] for e in cache.stream_read_group("s", "late", "c")] == [new]
    assert [e[1]["n"] for e in cache.stream_read_group("s", "all", "c")] == ["old", "new"]


def test_stream_read_blocks_until_an_entry_arrives(cache: Cache) -> None:
    cache.ensure_group("blk", "g")
    t0 = time.monotonic()
    assert cache.stream_read_group("blk", "g", "c", block_ms=150) == []
    assert time.monotonic() - t0 >= 0.1
    timer = threading.Timer(0.2, lambda: cache.stream_add("blk", {"x": "1"}))
    timer.start()
    got = cache.stream_read_group("blk", "g", "c", block_ms=5000)
    timer.join()
    assert [e[1] for e in got] == [{"x": "1"}]


def test_stream_maxlen_trims_old_entries(cache: Cache) -> None:
    for i in range(1000):
        cache.stream_add("trim", {"i": str(i)}, maxlen=100)
    # Redis trims approximately (whole nodes), never below maxlen.
    assert 100 <= cache.stream_len("trim") <= 300


def test_reading_without_group_is_an_error(cache: Cache) -> None:
    cache.stream_add("nogroup", {"a": "b"})
    with pytest.raises(CacheError, match="ensure_group"):
        cache.stream_read_group("nogroup", "missing", "c")


def test_open_cache_rejects_other_urls() -> None:
    with pytest.raises(ValueError, match="memory:// or redis://"):
        open_cache("memcached://localhost")


@pytest.mark.integration
def test_redis_down_is_cache_unavailable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = open_cache(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(CacheUnavailable) as info:
        c.ping()
    assert info.value.retryable
    with pytest.raises(CacheUnavailable):
        c.set("k", "v")
    c.close()


def test_memory_caches_with_one_url_are_one_cache() -> None:
    """In one process, components given the same memory:// URL see the same data (as with Redis)."""
    name = f"memory://{uuid.uuid4().hex}"
    open_cache(name).set("k", "v")
    assert open_cache(name).get("k") == "v"
    assert open_cache(f"memory://{uuid.uuid4().hex}").get("k") is None


def test_stream_claim_takes_over_a_dead_consumers_entries_after_idle_time(cache: Cache) -> None:
    cache.ensure_group("claim", "g", start="0")
    ids = [cache.stream_add("claim", {"i": str(i)}) for i in range(4)]
    dead = cache.stream_read_group("claim", "g", "dead", count=3)  # delivered, never acked
    assert [e[0] for e in dead] == ids[:3]
    assert cache.stream_claim("claim", "g", "alive", min_idle_ms=60_000) == []  # not idle long enough
    time.sleep(0.15)
    got = cache.stream_claim("claim", "g", "alive", min_idle_ms=100, count=2)
    assert [(i, f["i"]) for i, f in got] == [(ids[0], "0"), (ids[1], "1")]
    got += cache.stream_claim("claim", "g", "alive", min_idle_ms=100)
    assert [e[0] for e in got] == ids[:3]
    # now they are alive's pending entries, no longer dead's; claiming restarted their idle time
    assert [e[0] for e in cache.stream_read_group("claim", "g", "alive", pending=True)] == ids[:3]
    assert cache.stream_read_group("claim", "g", "dead", pending=True) == []
    assert cache.stream_claim("claim", "g", "other", min_idle_ms=100) == []
    assert cache.stream_ack("claim", "g", ids[:3]) == 3
    assert [e[0] for e in cache.stream_read_group("claim", "g", "alive")] == [ids[3]]  # new entries unaffected


def test_stream_claim_without_group_is_an_error(cache: Cache) -> None:
    cache.stream_add("noclaim", {"a": "b"})
    with pytest.raises(CacheError):
        cache.stream_claim("noclaim", "missing", "c", min_idle_ms=0)


def test_write_many_applies_hashes_and_stream_entries_in_order(cache: Cache) -> None:
    from cloud_core.cache import HashSet, StreamAdd

    cache.hset("h:old", {"a": "0", "keep": "1"})
    ids = cache.write_many(
        [
            HashSet("h:old", {"a": "1"}),
            StreamAdd("s", {"n": "1"}),
            HashSet("h:ttl", {"x": "y"}, ttl_s=0.2),
            HashSet("h:empty", {}),
            StreamAdd("s", {"n": "2"}, maxlen=10),
        ]
    )
    assert ids[0] is None and ids[2] is None and ids[3] is None
    assert ids[1] is not None and ids[4] is not None
    assert cache.hgetall("h:old") == {"a": "1", "keep": "1"}
    assert cache.hgetall("h:ttl") == {"x": "y"}
    assert cache.hgetall("h:empty") == {}
    cache.ensure_group("s", "g")
    entries = cache.stream_read_group("s", "g", "c", count=10)
    assert [(i, f) for i, f in entries] == [(ids[1], {"n": "1"}), (ids[4], {"n": "2"})]
    assert _until(lambda: cache.hgetall("h:ttl") == {})
    assert cache.write_many([]) == []


def test_write_many_trims_like_stream_add(cache: Cache) -> None:
    from cloud_core.cache import StreamAdd

    cache.write_many([StreamAdd("t", {"i": str(i)}, maxlen=5) for i in range(300)])
    assert 5 <= cache.stream_len("t") < 300
