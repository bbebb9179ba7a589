"""graceful.metrics: both writers, the names and types, and /healthz/metrics behind both middlewares."""

from __future__ import annotations

import builtins
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from graceful import Lifecycle, Phase, Settings, SettingsError
from graceful import metrics as metrics_module
from graceful._checks import Check, Checks
from graceful.asgi import GracefulMiddleware as AsgiMiddleware
from graceful.metrics import GracefulCollector, MetricsSnapshot, render, render_stdlib, snapshot
from graceful.wsgi import GracefulMiddleware as WsgiMiddleware

TOKEN = "a-long-enough-token-123"

EXPECTED_TYPES = {
    "graceful_phase": "gauge",
    "graceful_in_flight_requests": "gauge",
    "graceful_websockets_open": "gauge",
    "graceful_requests": "counter",  # the parser strips _total from a counter family's name
    "graceful_shed": "counter",
    "graceful_warmup_share": "gauge",
    "graceful_check_up": "gauge",
    "graceful_drain_started_timestamp_seconds": "gauge",
    "graceful_processes": "gauge",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and labels (parsed by prometheus-client)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def a_snapshot(**changes: Any) -> MetricsSnapshot:
    figures: dict[str, Any] = {
        "phase": Phase.DRAINING,
        "in_flight": 3,
        "websockets": 1,
        "requests": 1234567,
        "shed": 5,
        "warmup_share": 0.25,
        "checks": {"db": True, 'odd "name"\\\n': False},
        "drain_started": 1764689012.125,
        "processes": 3,
    }
    figures.update(changes)
    return MetricsSnapshot(**figures)


@pytest.fixture
def lifecycle() -> Iterator[Lifecycle]:
    made = Lifecycle(Settings(drain_delay=0.2))
    try:
        yield made
    finally:
        made.close()


def test_both_writers_give_the_same_bytes_and_the_parser_reads_them() -> None:
    """The stdlib writer is prometheus-client's generate_latest byte for byte, escapes included."""
    for snap in (a_snapshot(), a_snapshot(phase=Phase.STARTING, checks={}, drain_started=None, requests=0)):
        through_client = render(snap)
        assert render_stdlib(snap) == through_client
        assert samples(through_client.decode())  # parses


def test_names_types_and_values() -> None:
    """Every family of the issue, with its type; graceful_phase has one sample per phase."""
    text = render(a_snapshot()).decode()
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert families == EXPECTED_TYPES
    found = samples(text)
    phases = {labels[0][1]: value for (name, labels), value in found.items() if name == "graceful_phase"}
    assert phases == {p.name.lower(): (1.0 if p is Phase.DRAINING else 0.0) for p in Phase}
    assert found[("graceful_in_flight_requests", ())] == 3
    assert found[("graceful_requests_total", ())] == 1234567
    assert found[("graceful_shed_total", ())] == 5
    assert found[("graceful_check_up", (("check", "db"),))] == 1
    assert found[("graceful_check_up", (("check", 'odd "name"\\\n'),))] == 0
    assert found[("graceful_drain_started_timestamp_seconds", ())] == 1764689012.125
    assert found[("graceful_processes", ())] == 3


def test_fallback_writer_without_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """With prometheus-client not importable, render takes the stdlib writer (same bytes), and the
    collector says which extra to install."""
    snap = a_snapshot()
    expected = render(snap)
    real_import = builtins.__import__
    calls: list[str] = []

    def no_prometheus(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("prometheus_client"):
            calls.append(name)
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_prometheus)
    called = []
    monkeypatch.setattr(metrics_module, "render_stdlib", lambda s: called.append(s) or render_stdlib(s))
    assert render(snap) == expected
    assert called == [snap] and calls
    with pytest.raises(ImportError, match=r"graceful-rollout\[prometheus\]"):
        GracefulCollector()


def test_snapshot_reads_the_board(lifecycle: Lifecycle) -> None:
    """In flight, totals, shed and the drain's Unix start come from the board; 0 before a drain."""
    assert snapshot(lifecycle).drain_started is None
    assert (
        samples(render(snapshot(lifecycle)).decode())[("graceful_drain_started_timestamp_seconds", ())] == 0
    )
    lifecycle.request_started()
    lifecycle.request_started()
    lifecycle.request_finished()
    lifecycle.request_shed()
    lifecycle.open_gate()
    lifecycle.begin_drain("test")
    snap = snapshot(
        lifecycle, clock=lambda: lifecycle.board.drain_started_at + 2.0, wall_clock=lambda: 1000.0
    )  # type: ignore[operator]
    assert (snap.in_flight, snap.requests, snap.shed, snap.processes) == (1, 2, 1, 1)
    assert snap.phase is Phase.DRAINING and snap.drain_started == 998.0 and snap.warmup_share == 1.0


def test_collector_yields_the_same_samples(lifecycle: Lifecycle) -> None:
    """A GracefulCollector in a private registry gives the samples /healthz/metrics gives."""
    lifecycle.request_started()
    registry = CollectorRegistry()
    registry.register(GracefulCollector(lifecycle))
    from prometheus_client.exposition import generate_latest

    through_registry = samples(generate_latest(registry).decode())
    assert through_registry == samples(render(snapshot(lifecycle)).decode())
    assert through_registry[("graceful_in_flight_requests", ())] == 1


def test_metrics_settings_validated() -> None:
    """The path must be usable and free; the switch a boolean; both come from the environment."""
    with pytest.raises(SettingsError, match="metrics_path='/healthz/ready' is the same path as ready_path"):
        Settings(metrics_path="/healthz/ready")
    with pytest.raises(SettingsError, match="metrics_path='metrics' is not a usable URL path"):
        Settings(metrics_path="metrics")
    with pytest.raises(SettingsError, match="GRACEFUL_METRICS_PUBLIC='maybe' is not a boolean"):
        Settings.from_env({"GRACEFUL_METRICS_PUBLIC": "maybe"})
    parsed = Settings.from_env({"GRACEFUL_METRICS_PATH": "/metrics", "GRACEFUL_METRICS_PUBLIC": "1"})
    assert (parsed.metrics_path, parsed.metrics_public) == ("/metrics", True)
    assert (Settings().metrics_path, Settings().metrics_public) == ("/healthz/metrics", False)


# -- the endpoint, ASGI ------------------------------------------------------------------------------


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def asgi_get(lifecycle: Lifecycle, path: str, host: str, **headers: str) -> httpx.Response:
    app = AsgiMiddleware(hello, lifecycle=lifecycle)
    app.add_check("db", lambda: True)
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.get(path, headers=headers)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("settings", "host", "headers", "status"),
    [
        ({}, "127.0.0.1", {}, 200),  # loopback, no proxy header
        ({}, "10.0.0.7", {}, 403),  # remote without the token
        ({}, "127.0.0.1", {"x-forwarded-for": "10.0.0.7"}, 403),  # a local proxy forwarding
        ({"shutdown_token": TOKEN}, "10.0.0.7", {"authorization": f"Bearer {TOKEN}"}, 200),
        ({"metrics_public": True}, "10.0.0.7", {}, 200),
    ],
)
async def test_asgi_metrics_trust(
    settings: dict[str, Any], host: str, headers: dict[str, str], status: int
) -> None:
    """Same rule as the /healthz detail: loopback or token; metrics_public opens it; 403 says nothing."""
    lifecycle = Lifecycle(Settings(**settings))
    try:
        reply = await asgi_get(lifecycle, "/healthz/metrics", host, **headers)
    finally:
        lifecycle.close()
    assert reply.status_code == status
    if status == 403:
        assert reply.text == "forbidden\n"
    else:
        assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert samples(reply.text)[("graceful_processes", ())] == 1


@pytest.mark.anyio
async def test_asgi_metrics_path_setting() -> None:
    """metrics_path moves the endpoint; the old path is then the app's."""
    lifecycle = Lifecycle(Settings(metrics_path="/internal/metrics"))
    try:
        moved = await asgi_get(lifecycle, "/internal/metrics", "127.0.0.1")
        old = await asgi_get(lifecycle, "/healthz/metrics", "127.0.0.1")
    finally:
        lifecycle.close()
    assert ("graceful_in_flight_requests", ()) in samples(moved.text)
    assert old.text == "hello"


# -- the endpoint, WSGI ------------------------------------------------------------------------------


def wsgi_hello(env: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def wsgi_get(app: Any, path: str, host: str, **extra: Any) -> tuple[str, dict[str, str], bytes]:
    env = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "REMOTE_ADDR": host,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
        **extra,
    }
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, {k.lower(): v for k, v in headers}
        return lambda data: None

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return seen["status"], seen["headers"], body


@pytest.mark.parametrize(
    ("settings", "host", "extra", "code"),
    [
        ({}, "127.0.0.1", {}, "200"),
        ({}, "10.0.0.7", {}, "403"),
        ({"shutdown_token": TOKEN}, "10.0.0.7", {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}, "200"),
        (
            {"shutdown_token": TOKEN},
            "10.0.0.7",
            {"HTTP_AUTHORIZATION": "Bearer wrong-token-of-length"},
            "403",
        ),
        ({"metrics_public": True}, "10.0.0.7", {}, "200"),
    ],
)
def test_wsgi_metrics_trust(settings: dict[str, Any], host: str, extra: dict[str, str], code: str) -> None:
    """The WSGI middleware serves the same endpoint under the same rule."""
    lifecycle = Lifecycle(Settings(**settings))
    app = WsgiMiddleware(wsgi_hello, lifecycle=lifecycle)
    try:
        status, headers, body = wsgi_get(app, "/healthz/metrics", host, **extra)
    finally:
        app.stop()
        lifecycle.close()
    assert status.split()[0] == code
    if code == "403":
        assert body == b"forbidden\n"
    else:
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert samples(body.decode())[("graceful_phase", (("phase", "ready"),))] == 1


def test_wsgi_metrics_path_setting_and_checks(lifecycle: Lifecycle) -> None:
    """The moved path answers; checks show up once they have run; metric scrapes are not in flight."""
    lifecycle.settings = Settings(metrics_path="/metrics")
    app = WsgiMiddleware(wsgi_hello, lifecycle=lifecycle, checks=[Check(name="db", func=lambda: True)])
    try:
        wsgi_get(app, "/fast", "127.0.0.1")
        _, _, body = wsgi_get(app, "/metrics", "127.0.0.1")
        found = samples(body.decode())
        assert found[("graceful_requests_total", ())] == 1
        assert found[("graceful_in_flight_requests", ())] == 0
        _, _, old = wsgi_get(app, "/healthz/metrics", "127.0.0.1")
        assert old == b"hello"
    finally:
        app.stop()


def test_check_results_become_check_up() -> None:
    """A check that has not run is left out; a run one is 1 or 0."""
    import asyncio
    import time

    checks = Checks(default_timeout=1.0, clock=time.monotonic)
    checks.add(Check(name="db", func=lambda: True))
    checks.add(Check(name="cache", func=lambda: False))
    checks.add(Check(name="never", func=lambda: True, kind="liveness"))
    asyncio.run(checks.run_kind("readiness"))
    assert metrics_module._check_results(checks) == {"db": True, "cache": False}


def test_shed_requests_reach_the_board(lifecycle: Lifecycle) -> None:
    """Admission control's 503s are counted on the board once each: graceful_shed_total."""
    from graceful._admission import ThreadAdmissionControl

    lifecycle.open_gate()
    admission = ThreadAdmissionControl(Settings(max_concurrency=1, queue_size=0), lifecycle)
    assert admission.acquire()
    assert not admission.acquire()
    assert not admission.acquire()
    assert (admission.shed, snapshot(lifecycle).shed) == (2, 2)


def test_client_transports_series_through_the_same_collector() -> None:
    """graceful.client counters and endpoint states, labelled by client name, parsed back."""
    import socket

    from graceful.client import Transport

    with socket.socket() as sock:  # a port nothing listens on: every attempt is refused
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    transport = Transport(endpoints=[dead])
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError):
        client.get("http://payments/charge")
    registry = CollectorRegistry()
    registry.register(GracefulCollector(transports={"payments": transport}, instance=False))
    from prometheus_client.exposition import generate_latest

    text = generate_latest(registry).decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    client_label = ("client", "payments")
    assert samples[("graceful_client_calls_total", (client_label,))] == 1
    assert samples[("graceful_client_failed_calls_total", (client_label,))] == 1
    assert samples[("graceful_client_attempts_total", (client_label,))] == 13
    assert samples[("graceful_client_transparent_retries_total", (client_label,))] == 10
    assert samples[("graceful_client_retries_total", (client_label, ("reason", "never_sent")))] == 12
    # A single endpoint cannot be ejected (at most half the set): it stays ready.
    assert samples[("graceful_client_endpoints", (client_label, ("state", "ready")))] == 1
    assert samples[("graceful_client_ejections_total", (client_label,))] == 0
    assert not any(name.startswith("graceful_phase") for name, _ in samples)  # instance=False
