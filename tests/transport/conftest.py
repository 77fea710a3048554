"""A real HTTP server on 127.0.0.1 (random port) for the transport tests that a mock hides."""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.servers import serve_in_thread


class Recorder:
    """What the server saw, for assertions."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.requests: list[dict[str, object]] = []
        self.lock = threading.Lock()

    def record(self, key: str, **details: object) -> int:
        with self.lock:
            self.hits[key] += 1
            self.requests.append({"key": key, **details})
            return self.hits[key]


def make_app(recorder: Recorder) -> Starlette:
    async def flaky(request: Request) -> Response:
        """Fails `fails` times per key with `code`, then answers 200 with what it saw."""
        key = request.path_params["key"]
        body = await request.body()
        count = recorder.record(
            key,
            body=body,
            deadline=request.headers.get("x-resilience-deadline-ms"),
            idempotency_key=request.headers.get("idempotency-key"),
        )
        fails = int(request.query_params.get("fails", "1"))
        if count <= fails:
            headers = {}
            if "retry_after" in request.query_params:
                headers["Retry-After"] = request.query_params["retry_after"]
            if request.query_params.get("retry_after_date"):
                when = time.time() + float(request.query_params["retry_after_date"])
                headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
            code = int(request.query_params.get("code", "503"))
            return Response(b"x" * int(request.query_params.get("size", "10")), code, headers)
        return JSONResponse({"attempt": count, "body": body.decode()})

    async def slow(request: Request) -> Response:
        recorder.record("slow", deadline=request.headers.get("x-resilience-deadline-ms"))
        await asyncio.sleep(float(request.query_params.get("seconds", "1")))
        return Response(b"late")

    async def stall(request: Request) -> Response:
        """Sends headers and a first chunk, then stalls mid-body."""

        async def body() -> object:
            yield b"first chunk;"
            await asyncio.sleep(float(request.query_params.get("seconds", "2")))
            yield b"too late"

        return StreamingResponse(body(), media_type="text/plain")

    return Starlette(
        routes=[
            Route("/flaky/{key}", flaky, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
            Route("/slow", slow),
            Route("/stall", stall),
        ]
    )


class LiveServer:
    def __init__(self, url: str, recorder: Recorder) -> None:
        self.url = url
        self.recorder = recorder


@pytest.fixture(scope="session")
def server() -> Iterator[LiveServer]:
    """The test app on a real uvicorn server, for the whole test session."""
    recorder = Recorder()
    with serve_in_thread(make_app(recorder)) as url:
        yield LiveServer(url, recorder)
