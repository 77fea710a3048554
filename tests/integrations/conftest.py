"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .redis_server import RedisServer, free_port


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def shared_redis_server() -> Iterator[RedisServer]:
    """One server for a whole module (its tests use distinct key prefixes)."""
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()
