"""Servers and log capture for the middleware tests: tracebacks must not appear."""

from __future__ import annotations

import io
import logging
import socketserver
import threading
import time
import wsgiref.simple_server
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# uvicorn configures "uvicorn" with propagate=False: its error log never reaches
# the root logger (nor pytest's caplog), so the handler goes on it directly.
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.asgi")


class Captured:
    """The records logged while capturing, each once."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []
        self._seen: set[int] = set()

    def keep(self, record: logging.LogRecord) -> None:
        if id(record) not in self._seen:
            self._seen.add(id(record))
            self.records.append(record)

    def wait_for(self, exception: type[BaseException], timeout: float = 3.0) -> bool:
        """Wait (bounded) until a record carries a traceback of `exception`.

        A server logs an error after it answered: the response can arrive first.
        """
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if any(r.exc_info and r.exc_info[0] is exception for r in list(self.records)):
                return True
            time.sleep(0.01)
        return False

    def errors(self) -> list[str]:
        """Every record at ERROR or above, or with a traceback: formatted."""
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        return [
            formatter.format(record)
            for record in self.records
            if record.levelno >= logging.ERROR or record.exc_info
        ]


@contextmanager
def captured_logs() -> Iterator[Captured]:
    """Capture WARNING and above from the root logger and uvicorn's loggers.

    Start it after every uvicorn server of the test is created: creating a
    uvicorn Config re-applies its logging configuration (levels, handlers).
    """
    captured = Captured()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.keep(record)

    handler = Keep(logging.WARNING)
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        yield captured
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


class QuietWSGIHandler(wsgiref.simple_server.WSGIRequestHandler):
    """wsgiref's request handler, with its error stream kept for the test to read.

    wsgiref prints an application's traceback to `wsgi.errors` (stderr by
    default) and answers 500; the server's `errors` attribute collects it.
    """

    server: Any

    def get_stderr(self) -> Any:
        return self.server.errors

    def log_message(self, *args: Any) -> None:
        pass


class ThreadingWSGIServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    """wsgiref's server, one thread per request (a hanging request blocks no other)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.errors = io.StringIO()


@contextmanager
def serve_wsgi(app: Any) -> Iterator[tuple[str, ThreadingWSGIServer]]:
    """Serve a WSGI app on a free loopback port from a thread; yield its URL and server."""
    server = wsgiref.simple_server.make_server(
        "127.0.0.1", 0, app, server_class=ThreadingWSGIServer, handler_class=QuietWSGIHandler
    )
    assert isinstance(server, ThreadingWSGIServer)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
