from __future__ import annotations

import threading

import pytest

from resilience import BreakerRegistry, CircuitBreaker, State
from resilience.events import BreakerEvicted, Event
from resilience.testing import FakeClock


def test_get_or_create_with_shared_defaults() -> None:
    """The same name gives the same breaker; defaults apply, overrides win."""
    clock = FakeClock()
    registry = BreakerRegistry(consecutive_failures=2, clock=clock)
    a = registry.get("a")
    assert registry.get("a") is a
    assert a.consecutive_failures == 2
    assert a.clock is clock
    b = registry.get("b", consecutive_failures=7)
    assert b.consecutive_failures == 7
    assert registry.get("b", consecutive_failures=7) is b
    assert "a" in registry
    assert len(registry) == 2
    assert [breaker.name for breaker in registry] == ["a", "b"]


def test_settings_of_an_existing_breaker_cannot_change() -> None:
    """Different overrides for an existing name are an error, not silently ignored."""
    registry = BreakerRegistry()
    registry.get("a", consecutive_failures=3)
    with pytest.raises(ValueError, match="already exists with other settings"):
        registry.get("a", consecutive_failures=4)
    assert registry.get("a").consecutive_failures == 3


def test_least_recently_used_closed_breaker_is_evicted_with_an_event() -> None:
    """Over max_size, the LRU closed breaker goes; an open one is kept while possible."""
    registry = BreakerRegistry(max_size=3, consecutive_failures=1, clock=FakeClock())
    events: list[Event] = []
    registry.events.subscribe(events.append)
    a, _, _ = (registry.get(name) for name in "abc")
    a.acquire().record_failure()  # a is open
    registry.get("b")  # b is now more recently used than c
    registry.get("d")
    assert [breaker.name for breaker in registry] == ["a", "b", "d"]
    assert events == [BreakerEvicted(name="c", time=0.0, state=State.CLOSED)]


def test_open_breakers_are_evicted_only_when_nothing_else_can_go() -> None:
    """If every breaker is open, the LRU one is dropped, and the event says it was open."""
    clock = FakeClock()
    registry = BreakerRegistry(max_size=2, consecutive_failures=1, clock=clock)
    events: list[Event] = []
    registry.events.subscribe(events.append)
    for name in "ab":
        registry.get(name).acquire().record_failure()
    registry.get("c")
    assert [breaker.name for breaker in registry] == ["b", "c"]
    assert events == [BreakerEvicted(name="a", time=0.0, state=State.OPEN)]


def test_remove() -> None:
    """remove() forgets a breaker and returns it."""
    registry = BreakerRegistry()
    a = registry.get("a")
    assert registry.remove("a") is a
    assert registry.remove("a") is None
    assert registry.get("a") is not a


def test_concurrent_get_creates_one_breaker_per_name() -> None:
    """16 threads asking for the same names at once share one breaker per name."""
    registry = BreakerRegistry(max_size=100)
    barrier = threading.Barrier(16, timeout=30)
    seen: list[dict[str, CircuitBreaker]] = []

    def worker() -> None:
        barrier.wait()
        seen.append({name: registry.get(name) for name in ("x", "y", "z")})

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(seen) == 16
    for name in ("x", "y", "z"):
        assert len({id(result[name]) for result in seen}) == 1
    assert len(registry) == 3


def test_bounded_under_churn() -> None:
    """Ten thousand distinct names never grow the registry past max_size."""
    registry = BreakerRegistry(max_size=50)
    for i in range(10_000):
        registry.get(f"host-{i}")
    assert len(registry) == 50
    assert repr(registry) == "<BreakerRegistry 50/50 breakers>"


def test_lock_free_hits_survive_concurrent_evictions() -> None:
    """8 threads hitting and evicting a small registry: no error, right names, bounded."""
    registry = BreakerRegistry(max_size=8)
    barrier = threading.Barrier(8, timeout=30)
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        barrier.wait()
        try:
            for i in range(3_000):
                name = f"host-{(i * 7 + offset) % 24}"  # 24 names, room for 8: constant churn
                assert registry.get(name).name == name
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(registry) <= 8
    assert len(list(registry)) == len(registry)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_size": 0}, ValueError, "max_size="),
        ({"max_size": "10"}, TypeError, "max_size="),
        ({"name": "x"}, TypeError, "name="),
        ({"minimum_calls": 0}, ValueError, "minimum_calls="),
        ({"colour": "red"}, TypeError, "colour"),
    ],
)
def test_bad_registry_configuration(kwargs, error, match) -> None:
    """Bad defaults fail when the registry is built, not at the first get()."""
    with pytest.raises(error, match=match):
        BreakerRegistry(**kwargs)
