"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .redis_server import RedisServer, free_port


def _running_redis() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own (it may kill and restart it)."""
    yield from _running_redis()


@pytest.fixture(scope="module")
def shared_redis_server() -> Iterator[RedisServer]:
    """One server for a whole module (its tests use distinct key prefixes)."""
    yield from _running_redis()
