"""ResilientTransport against a real loopback server and against httpx.MockTransport."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import respx

import resilience
from resilience import (
    CircuitBreaker,
    CircuitOpenError,
    HTTPCircuitOpenError,
    ResilientTransport,
    Retry,
    State,
)
from resilience.testing import FakeClock

from .conftest import LiveServer


def key() -> str:
    return uuid.uuid4().hex


def fast_retry(clock: FakeClock | None = None, **config) -> Retry:
    """The default retry's rules, with a fake clock so that waits are instant."""
    config.setdefault("attempts", 4)
    return Retry(
        on=(httpx.TransportError,),
        retry_if_result=lambda r: r.status_code in resilience.transport.RETRY_STATUSES,
        clock=clock or FakeClock(),
        **config,
    )


def client(**options) -> httpx.Client:
    options.setdefault("retry", fast_retry())
    return httpx.Client(transport=ResilientTransport(**options))


# -- retries ---------------------------------------------------------------------------------------


def test_get_is_retried_until_it_succeeds(server: LiveServer) -> None:
    """Two 503s, then 200: the caller sees the 200 and how many attempts it took."""
    with client() as http:
        response = http.get(f"{server.url}/flaky/{key()}?fails=2")
    assert response.status_code == 200
    assert response.json()["attempt"] == 3
    info = response.extensions["resilience"]
    assert info["attempts"] == 3
    assert info["breaker"].startswith("http://127.0.0.1:")
    assert info["breaker_state"] == "closed"


def test_last_failing_response_is_returned_when_attempts_run_out(server: LiveServer) -> None:
    """After 4 attempts of 503 the caller gets the 4th 503, readable."""
    with client() as http:
        response = http.get(f"{server.url}/flaky/{key()}?fails=10")
    assert response.status_code == 503
    assert response.content == b"x" * 10
    assert response.extensions["resilience"]["attempts"] == 4


def test_post_is_not_retried_by_default(server: LiveServer) -> None:
    """POST is not idempotent: one attempt, the 503 comes back."""
    name = key()
    with client() as http:
        response = http.post(f"{server.url}/flaky/{name}?fails=1", content=b"order")
    assert response.status_code == 503
    assert server.recorder.hits[name] == 1


def test_post_with_an_idempotency_key_is_retried(server: LiveServer) -> None:
    """A caller-supplied Idempotency-Key makes POST safe to retry."""
    name = key()
    with client() as http:
        response = http.post(
            f"{server.url}/flaky/{name}?fails=1",
            content=b"order",
            headers={"Idempotency-Key": "abc"},
        )
    assert response.status_code == 200
    assert server.recorder.hits[name] == 2


def test_generated_idempotency_key_is_reused_on_every_attempt(server: LiveServer) -> None:
    """idempotency_key=True: one key per logical request, the same on each retry."""
    name = key()
    with client(idempotency_key=True) as http:
        response = http.post(f"{server.url}/flaky/{name}?fails=2", content=b"order")
    assert response.status_code == 200
    keys = [r["idempotency_key"] for r in server.recorder.requests if r["key"] == name]
    assert len(keys) == 3
    assert len(set(keys)) == 1
    assert keys[0]


def test_retry_after_seconds_and_http_date_are_honoured(server: LiveServer) -> None:
    """The wait before a retry is at least the server's Retry-After (seconds or date)."""
    clock = FakeClock()
    with client(retry=fast_retry(clock, wait=0)) as http:
        assert http.get(f"{server.url}/flaky/{key()}?fails=1&retry_after=3").status_code == 200
        assert (
            http.get(f"{server.url}/flaky/{key()}?fails=1&retry_after_date=20").status_code == 200
        )
    assert clock.sleeps[0] == 3.0
    assert 18 <= clock.sleeps[1] <= 21  # an HTTP-date has one-second resolution


def test_a_retry_after_beyond_the_maximum_is_not_waited_for(server: LiveServer) -> None:
    """A server asking for an hour gets no retry: the 503 comes back at once."""
    clock = FakeClock()
    with client(retry=fast_retry(clock, max_retry_after=60)) as http:
        response = http.get(f"{server.url}/flaky/{key()}?fails=1&retry_after=3600")
    assert response.status_code == 503
    assert clock.sleeps == []


# -- bodies ----------------------------------------------------------------------------------------


def test_generator_body_is_never_retried(server: LiveServer) -> None:
    """A one-shot stream is sent once; no StreamConsumed, no empty second body."""
    name = key()

    def chunks() -> Iterator[bytes]:
        yield b"part1,"
        yield b"part2"

    with client() as http:
        response = http.put(f"{server.url}/flaky/{name}?fails=1", content=chunks())
    assert response.status_code == 503
    assert [r["body"] for r in server.recorder.requests if r["key"] == name] == [b"part1,part2"]


def test_file_body_is_buffered_on_request_and_replayed_whole(server: LiveServer) -> None:
    """buffer_bodies=True reads a file body once; every attempt sends all of it."""
    name = key()
    with client(buffer_bodies=True) as http:
        response = http.put(f"{server.url}/flaky/{name}?fails=1", content=io.BytesIO(b"payload"))
    assert response.status_code == 200
    assert [r["body"] for r in server.recorder.requests if r["key"] == name] == [b"payload"] * 2


def test_not_retried_errors_say_why() -> None:
    """An error on a request that could not be retried carries a note naming the cause."""

    def chunks() -> Iterator[bytes]:
        yield b"data"

    def fail(request: httpx.Request) -> httpx.Response:
        request.read()
        raise httpx.ConnectError("refused", request=request)

    transport = ResilientTransport(httpx.MockTransport(fail), retry=fast_retry())
    with httpx.Client(transport=transport) as http, pytest.raises(httpx.ConnectError) as caught:
        http.put("http://service.test/x", content=chunks())
    assert "one-shot stream" in caught.value.__notes__[0]


# -- the connection pool ---------------------------------------------------------------------------


def test_a_pool_of_one_connection_survives_100_retried_requests(server: LiveServer) -> None:
    """Failed responses are drained or closed before the retry: nothing leaks."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    # Half of these attempts fail: the default breaker would (rightly) open.
    with client(limits=limits, breaker=False) as http:
        for _ in range(100):
            response = http.get(f"{server.url}/flaky/{key()}?fails=1", timeout=5)
            assert response.status_code == 200


def test_large_failed_bodies_are_closed_not_drained(server: LiveServer) -> None:
    """A failed response bigger than max_drain_bytes is closed; the retry still works."""
    limits = httpx.Limits(max_connections=1)
    with client(limits=limits, max_drain_bytes=100) as http:
        response = http.get(f"{server.url}/flaky/{key()}?fails=2&size=100000", timeout=5)
    assert response.status_code == 200


# -- the breaker -----------------------------------------------------------------------------------


def test_breaker_counts_5xx_and_429_but_not_other_4xx() -> None:
    """Per DESIGN: transport errors, 5xx and 429 are failures; 404 is a success."""
    statuses = iter([404, 500, 429, 200, 400])
    breaker = CircuitBreaker("api", consecutive_failures=100)
    transport = ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(next(statuses))),
        retry=False,
        breaker=breaker,
    )
    with httpx.Client(transport=transport) as http:
        for _ in range(5):
            http.get("http://api.test/")
    calls = breaker.metrics().calls
    assert (calls["success"], calls["failure"]) == (3, 2)


def test_failure_status_is_configurable() -> None:
    """failure_status= decides what the breaker counts."""
    breaker = CircuitBreaker("api", consecutive_failures=100)
    transport = ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(404)),
        retry=False,
        breaker=breaker,
        failure_status=lambda status: status >= 400,
    )
    with httpx.Client(transport=transport) as http:
        http.get("http://api.test/")
    assert breaker.metrics().calls["failure"] == 1


def test_open_breaker_raises_an_error_httpx_code_catches() -> None:
    """The rejection is a CircuitOpenError and an httpx.TransportError, with the request."""
    breaker = CircuitBreaker("api", consecutive_failures=1)
    breaker.force_open()
    transport = ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), breaker=breaker
    )
    with httpx.Client(transport=transport) as http, pytest.raises(httpx.TransportError) as caught:
        http.get("http://api.test/x")
    error = caught.value
    assert isinstance(error, CircuitOpenError)
    assert isinstance(error, HTTPCircuitOpenError)
    assert error.request.url == "http://api.test/x"
    assert error.state is State.FORCED_OPEN


def test_one_breaker_per_origin() -> None:
    """The default registry keys breakers by scheme://host:port."""
    transport = ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), retry=False
    )
    with httpx.Client(transport=transport) as http:
        http.get("http://a.test/1")
        http.get("http://a.test/2")
        http.get("https://a.test/")
        http.get("http://b.test:8080/")
    registry = transport.breakers
    assert isinstance(registry, resilience.BreakerRegistry)
    assert sorted(b.name for b in registry) == [
        "http://a.test:80",
        "http://b.test:8080",
        "https://a.test:443",
    ]


def test_body_phase_error_settles_the_permit_as_a_failure(server: LiveServer) -> None:
    """A ReadTimeout while the caller streams the body counts against the breaker, once."""
    breaker = CircuitBreaker("stall", consecutive_failures=100)
    with client(breaker=breaker, retry=False) as http:
        with http.stream("GET", f"{server.url}/stall?seconds=2", timeout=0.2) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.ReadTimeout):
                response.read()
        http.get(f"{server.url}/flaky/{key()}?fails=0")
    calls = breaker.metrics().calls
    assert (calls["failure"], calls["success"]) == (1, 1)


def test_a_streamed_body_read_to_the_end_is_a_success(server: LiveServer) -> None:
    """The permit of a streamed response settles when the stream closes."""
    breaker = CircuitBreaker("stream", consecutive_failures=100)
    with client(breaker=breaker, retry=False) as http:
        with http.stream("GET", f"{server.url}/flaky/{key()}?fails=0") as response:
            assert breaker.metrics().calls["success"] == 0  # not settled while open
            response.read()
        assert breaker.metrics().calls["success"] == 1


# -- deadlines and timeouts ------------------------------------------------------------------------


def test_deadline_clamps_timeouts_and_travels_downstream(server: LiveServer) -> None:
    """Inside deadline(0.3) a 2 s response times out at ~0.3 s; the header says <= 300 ms."""
    with client(retry=False) as http:
        start = time.monotonic()
        with resilience.deadline(0.3), pytest.raises(resilience.HTTPDeadlineExceededError) as cut:
            http.get(f"{server.url}/slow?seconds=2", timeout=10)
        elapsed = time.monotonic() - start
    assert isinstance(cut.value.__cause__, httpx.ReadTimeout)
    assert cut.value.before_call is False
    assert elapsed < 1.5
    sent = [r["deadline"] for r in server.recorder.requests if r["key"] == "slow"][-1]
    assert sent is not None
    assert 0 < int(sent) <= 300


def test_callers_timeout_dict_is_never_mutated() -> None:
    """The clamped timeouts are a new dict; the caller's stays as it was."""
    seen: list[dict[str, float]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200)

    mine = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}
    transport = ResilientTransport(httpx.MockTransport(record), attempt_timeout=1.0)
    request = httpx.Request("GET", "http://api.test/", extensions={"timeout": mine})
    transport.handle_request(request)
    assert mine == {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}
    assert seen[0] == {"connect": 1.0, "read": 1.0, "write": 1.0, "pool": 1.0}
    assert seen[0] is not mine


def test_the_callers_request_is_never_changed() -> None:
    """Each attempt sends a copy with the deadline header; response.request stays as built."""
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(503 if len(sent) == 1 else 200)

    transport = ResilientTransport(httpx.MockTransport(record), retry=fast_retry())
    with httpx.Client(transport=transport, timeout=60) as http:
        response = http.get("http://api.test/")
    assert len(sent) == 2
    assert all(request is not response.request for request in sent)
    assert resilience.DEADLINE_HEADER not in response.request.headers
    assert response.request.extensions["timeout"] == dict.fromkeys(
        ("connect", "read", "write", "pool"), 60
    )
    for request in sent:
        assert len(request.headers.get_list(resilience.DEADLINE_HEADER)) == 1
        assert max(request.extensions["timeout"].values()) <= 10.0  # the attempt timeout
    first, second = (int(r.headers[resilience.DEADLINE_HEADER]) for r in sent)
    assert 0 < second <= first <= 30_000


@pytest.mark.parametrize("raw_headers", [True, False], ids=["fast", "public-api"])
def test_a_deadline_header_set_by_the_caller_is_replaced(
    raw_headers: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One header goes out, with this hop's budget, on httpx's list or through its API."""
    monkeypatch.setattr(resilience.transport, "_RAW_HEADERS", raw_headers)
    seen: list[list[str]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get_list(resilience.DEADLINE_HEADER))
        return httpx.Response(200)

    transport = ResilientTransport(httpx.MockTransport(record), total_timeout=2.0)
    with httpx.Client(transport=transport) as http:
        http.get("http://api.test/", headers={resilience.DEADLINE_HEADER: "999999"})
        http.get("http://api.test/")
    assert [len(values) for values in seen] == [1, 1]
    assert all(0 < int(values[0]) <= 2000 for values in seen)


def test_httpx_internals_used_by_the_fast_paths_are_recognised() -> None:
    """The installed httpx stores headers and requests as the fast paths expect."""
    assert resilience.transport._RAW_HEADERS
    assert resilience.transport._PLAIN_REQUESTS


@pytest.mark.parametrize("plain", [True, False], ids=["fast", "public-api"])
def test_attempt_copies_carry_the_body(plain: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Either way of copying a request sends the same method, URL, headers and body."""
    monkeypatch.setattr(resilience.transport, "_PLAIN_REQUESTS", plain)
    seen: list[tuple[str, str, str, bytes]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), request.headers["x-mine"], request.read()))
        return httpx.Response(503 if len(seen) == 1 else 200)

    transport = ResilientTransport(httpx.MockTransport(record), retry=fast_retry())
    with httpx.Client(transport=transport) as http:
        http.put("http://api.test/a?b=1", content=b"payload", headers={"x-mine": "1"})
    assert seen == [("PUT", "http://api.test/a?b=1", "1", b"payload")] * 2


def test_timeouts_within_the_limit_are_sent_as_given() -> None:
    """Shorter client timeouts are kept; a missing or longer one is clamped to the limit."""
    seen: list[dict[str, float | None]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200)

    transport = ResilientTransport(
        httpx.MockTransport(record), attempt_timeout=3.0, send_deadline_header=False
    )
    given = {"connect": 1.0, "read": 2.0, "write": 1.0, "pool": 1.0}
    transport.handle_request(httpx.Request("GET", "http://a.test/", extensions={"timeout": given}))
    partial = {"connect": 1.0, "read": None}
    transport.handle_request(
        httpx.Request("GET", "http://a.test/", extensions={"timeout": partial})
    )
    assert seen[0] == given
    assert seen[1] == {"connect": 1.0, "read": 3.0, "write": 3.0, "pool": 3.0}
    assert partial == {"connect": 1.0, "read": None}


def test_an_expired_deadline_sends_nothing() -> None:
    """With no time left the request is not sent; the error is an httpx timeout too."""
    sent: list[httpx.Request] = []
    transport = ResilientTransport(
        httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200))
    )
    with (
        httpx.Client(transport=transport) as http,
        resilience.deadline(0),
        pytest.raises(httpx.TimeoutException) as caught,
    ):
        http.get("http://api.test/")
    assert sent == []
    assert isinstance(caught.value, resilience.DeadlineExceededError)


# -- per-request overrides, configuration, lifecycle -----------------------------------------------


def test_per_request_overrides() -> None:
    """extensions["resilience"] can turn retries or the breaker off for one request."""
    calls = 0

    def always_503(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503)

    transport = ResilientTransport(httpx.MockTransport(always_503), retry=fast_retry())
    with httpx.Client(transport=transport) as http:
        http.get("http://api.test/", extensions={"resilience": {"retry": False}})
        assert calls == 1
        response = http.get("http://api.test/", extensions={"resilience": {"breaker": False}})
        assert response.extensions["resilience"]["breaker"] is None
        with pytest.raises(ValueError, match="unknown keys"):
            http.get("http://api.test/", extensions={"resilience": {"retires": False}})


@respx.mock
def test_respx_routes_through_the_transport() -> None:
    """With respx's default mocker the transport runs for real (retries included)."""
    route = respx.get("http://respx.test/").mock(
        side_effect=[httpx.Response(502), httpx.Response(200, text="ok")]
    )
    with client() as http:
        assert http.get("http://respx.test/").text == "ok"
    assert route.call_count == 2


def test_inner_transport_options_and_close_are_forwarded() -> None:
    """HTTPTransport keyword arguments build the inner transport; close() reaches it."""
    closed: list[bool] = []

    class Inner(httpx.MockTransport):
        def close(self) -> None:
            closed.append(True)

    transport = ResilientTransport(Inner(lambda request: httpx.Response(200)))
    with httpx.Client(transport=transport):
        pass
    assert closed == [True]
    built = ResilientTransport(verify=False, http1=True, retries=1)
    assert isinstance(built._inner, httpx.HTTPTransport)
    built.close()


def test_default_attempt_timeout_follows_a_shorter_total() -> None:
    """total_timeout=5 alone gives 5 s attempts, not an error about the 10 s default."""
    seen: list[dict[str, float]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200)

    transport = ResilientTransport(httpx.MockTransport(record), total_timeout=5)
    transport.handle_request(httpx.Request("GET", "http://api.test/"))
    assert max(seen[0].values()) <= 5


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ([("retry", False)], TypeError, "must be a dict"),
        ({"retires": False}, ValueError, "unknown keys"),
        ({"retry": "no"}, TypeError, r'\["retry"\] must be True, False or None'),
        ({"breaker": 0}, TypeError, r'\["breaker"\] must be True, False or None'),
        ({"attempt_timeout": -1}, ValueError, "attempt_timeout"),
        ({"total_timeout": "5"}, TypeError, "total_timeout"),
        ({"total_timeout": float("nan")}, ValueError, "total_timeout"),
    ],
)
def test_bad_per_request_overrides(overrides, error, match) -> None:
    """extensions["resilience"] is checked per request, before anything is sent."""
    sent: list[httpx.Request] = []
    transport = ResilientTransport(
        httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200))
    )
    with httpx.Client(transport=transport) as http, pytest.raises(error, match=match):
        http.get("http://api.test/", extensions={"resilience": overrides})
    assert sent == []


def test_none_overrides_mean_the_transports_setting() -> None:
    """{"retry": None, "breaker": None, "attempt_timeout": None} changes nothing."""
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503 if calls == 1 else 200)

    transport = ResilientTransport(httpx.MockTransport(flaky), retry=fast_retry())
    overrides = {"retry": None, "breaker": None, "attempt_timeout": None}
    with httpx.Client(transport=transport) as http:
        response = http.get("http://api.test/", extensions={"resilience": overrides})
    assert response.status_code == 200
    assert response.extensions["resilience"]["attempts"] == 2
    assert response.extensions["resilience"]["breaker"] == "http://api.test:80"


@pytest.mark.parametrize("body", [{"content": b"hello"}, {"json": {"a": 1}}], ids=["bytes", "json"])
def test_the_inner_transport_can_read_request_content(body: dict[str, object]) -> None:
    """A body built in memory is readable as request.content on every attempt's copy."""
    seen: list[bytes] = []

    class Signing(httpx.BaseTransport):  # reads .content first, as signing transports do
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.content)
            return httpx.Response(503 if len(seen) == 1 else 200)

    transport = ResilientTransport(Signing(), retry=fast_retry())
    with httpx.Client(transport=transport) as http:
        built = http.build_request("PUT", "http://api.test/", **body)  # type: ignore[arg-type]
        assert http.send(built).status_code == 200
    assert seen == [built.content, built.content]


def test_a_transports_default_retry_can_serve_another_transport() -> None:
    """Reusing transport.retry elsewhere closes the other transport's failed responses."""
    closed: list[bool] = []

    class Tracked(httpx.ByteStream):
        def close(self) -> None:
            closed.append(True)

    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503 if calls == 1 else 200, stream=Tracked(b"x" * 10))

    first = ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), retry=fast_retry()
    )
    assert first.retry is not None
    second = ResilientTransport(httpx.MockTransport(flaky), retry=first.retry, breaker=False)
    with httpx.Client(transport=second) as http:
        assert http.get("http://api.test/").status_code == 200
    assert closed[:1] == [True]  # the 503 was closed before the retry


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"attempt_timeout": 5, "total_timeout": 1}, ValueError, "attempt_timeout="),
        ({"total_timeout": 0}, ValueError, "total_timeout="),
        ({"retry": 3}, TypeError, "retry="),
        ({"breaker": "on"}, TypeError, "breaker="),
        ({"idempotency_key": "yes"}, TypeError, "idempotency_key="),
        ({"max_drain_bytes": -1}, ValueError, "max_drain_bytes="),
        ({"failure_status": 500}, TypeError, "failure_status="),
        (
            {"transport": httpx.MockTransport(lambda r: httpx.Response(200)), "verify": False},
            TypeError,
            "not both",
        ),
        ({"transport": object()}, TypeError, "transport="),
    ],
)
def test_bad_configuration(options, error, match) -> None:
    """Every option is validated at construction, naming the parameter."""
    with pytest.raises(error, match=match):
        ResilientTransport(**options)


def test_failed_response_releases_its_connection_before_the_backoff(server: LiveServer) -> None:
    """While a request waits to retry, its failed response does not hold the only connection."""
    import threading

    clock_sleeping = threading.Event()
    release = threading.Event()

    class SlowClock(FakeClock):
        def sleep(self, seconds: float) -> None:
            clock_sleeping.set()
            release.wait(10)

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    transport = ResilientTransport(
        limits=limits, retry=fast_retry(SlowClock(), wait=1.0), breaker=False
    )
    with httpx.Client(transport=transport, timeout=httpx.Timeout(5.0, pool=1.0)) as http:
        outcome: list[int] = []
        first = threading.Thread(
            target=lambda: outcome.append(
                http.get(f"{server.url}/flaky/{key()}?fails=1").status_code
            )
        )
        first.start()
        assert clock_sleeping.wait(10)
        # The first request sleeps before its retry; the pool's one connection is free.
        assert http.get(f"{server.url}/flaky/{key()}?fails=0").status_code == 200
        release.set()
        first.join(timeout=10)
    assert outcome == [200]


def test_a_body_in_memory_settles_the_permit_on_return() -> None:
    """Nothing can fail while reading a body already in memory: success is recorded at once."""
    breaker = CircuitBreaker("in-memory")
    transport = ResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok")), breaker=breaker
    )
    response = transport.handle_request(httpx.Request("GET", "http://api.test/"))
    assert breaker.metrics().calls["success"] == 1
    assert not isinstance(response.stream, resilience.transport._SettlingStream)
    assert response.read() == b"ok"
    assert breaker.metrics().calls["success"] == 1
