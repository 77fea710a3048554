"""A real HTTP server on 127.0.0.1 (random port) for the transport tests that a mock hides."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


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
    """Uvicorn in a thread on a free loopback port, for the whole test session."""
    recorder = Recorder()
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only
    # when the listening socket says so; without it every response on a reused
    # connection stalls ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        make_app(recorder), log_level="warning", lifespan="off", timeout_keep_alive=30
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    yield LiveServer(f"http://127.0.0.1:{port}", recorder)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
