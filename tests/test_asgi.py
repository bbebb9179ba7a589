"""GracefulMiddleware at the ASGI boundary: probes, /shutdown, Connection: close while draining.

These drive the middleware through httpx's ASGI transport, which lets a test pick the peer
address (a non-loopback caller cannot be made on one machine otherwise). Server-level behaviour
is tested with real uvicorn in test_asgi_uvicorn.py and test_uvicorn_integration.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest

from graceful import Lifecycle, Phase, Settings
from graceful._logging import ProbeLogFilter
from graceful.asgi import GracefulMiddleware

TOKEN = "a-long-enough-token-123"
pytestmark = pytest.mark.anyio


async def hello(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"connection", b"keep-alive")]})
    await send({"type": "http.response.body", "body": b"hello"})


def client_for(lifecycle: Lifecycle, host: str = "127.0.0.1", server: str = "127.0.0.1") -> httpx.AsyncClient:
    app = GracefulMiddleware(hello, lifecycle=lifecycle)
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    # The URL host becomes scope["server"]: a loopback address, as uvicorn reports a local connection.
    return httpx.AsyncClient(transport=transport, base_url=f"http://{server}")


def make_lifecycle(**settings: object) -> Lifecycle:
    return Lifecycle(Settings(**settings))  # type: ignore[arg-type]


async def test_probes_follow_the_phase() -> None:
    """live stays 200 throughout; ready is 200 only in service; startup turns 200 once started."""
    lifecycle = make_lifecycle()
    async with client_for(lifecycle) as client:
        # Before the server started (no lifespan, no request yet): the startup gate is closed.
        assert lifecycle.phase is Phase.STARTING
        ready = await client.get("/healthz/ready")  # the first request opens the gate
        assert ready.status_code == 200 and ready.text == "ready\n"
        assert (await client.get("/healthz/startup")).status_code == 200
        lifecycle.begin_drain("test")
        codes = [
            (await client.get(p)).status_code for p in ("/healthz/live", "/healthz/ready", "/healthz/startup")
        ]
        assert codes == [200, 503, 200]
        assert (await client.get("/")).status_code == 200  # ordinary traffic is still served
    lifecycle.close()


async def test_health_json_has_the_figures_and_nothing_sensitive() -> None:
    """GET /healthz shows phase, readiness, in-flight, uptime, drain seconds; no token, no settings."""
    lifecycle = make_lifecycle(shutdown_token=TOKEN)
    async with client_for(lifecycle) as client:
        body = (await client.get("/healthz")).json()
        assert body["phase"] == "ready" and body["ready"] is True and body["in_flight"] == 0
        assert body["draining_seconds"] is None and body["uptime_seconds"] >= 0
        lifecycle.begin_drain("test")
        response = await client.get("/healthz")
        assert response.status_code == 503 and response.json()["draining_seconds"] >= 0
        assert TOKEN not in response.text and "shutdown" not in response.text
    lifecycle.close()


async def test_head_probe_has_no_body_and_other_methods_are_refused() -> None:
    """HEAD answers like GET without a body; POST to a probe is 405 and changes nothing."""
    lifecycle = make_lifecycle()
    async with client_for(lifecycle) as client:
        head = await client.head("/healthz/ready")
        assert head.status_code == 200 and head.content == b""
        post = await client.post("/healthz/ready")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
    lifecycle.close()


async def test_connection_close_only_while_draining() -> None:
    """Responses keep the app's connection header until the drain, then say close (once)."""
    lifecycle = make_lifecycle()
    async with client_for(lifecycle) as client:
        assert (await client.get("/")).headers["connection"] == "keep-alive"
        assert "connection" not in (await client.get("/healthz/live")).headers
        lifecycle.begin_drain("test")
        response = await client.get("/")
        assert response.headers.get_list("connection") == ["close"]
        assert (await client.get("/healthz/live")).headers["connection"] == "close"
    lifecycle.close()


async def test_shutdown_refused_from_a_remote_peer_without_credentials() -> None:
    """A caller that is not on loopback and has no token gets 403, and the phase does not change."""
    lifecycle = make_lifecycle(shutdown_token=TOKEN)
    async with client_for(lifecycle, host="10.1.2.3") as client:
        await client.get("/healthz/ready")
        for headers in (
            {},
            {"authorization": "Bearer wrong-token-000000"},
            {"authorization": f"Basic {TOKEN}"},
        ):
            response = await client.post("/shutdown", headers=headers)
            assert response.status_code == 403 and response.text == "forbidden\n"
        assert lifecycle.phase is Phase.READY and lifecycle.board.drains == 0
    lifecycle.close()


async def test_shutdown_with_token_drains_once() -> None:
    """With the bearer token a remote caller starts the drain; calling twice drains once."""
    lifecycle = make_lifecycle(shutdown_token=TOKEN)
    async with client_for(lifecycle, host="10.1.2.3") as client:
        await client.get("/healthz/ready")
        auth = {"authorization": f"Bearer {TOKEN}"}
        first = await client.post("/shutdown", headers=auth)
        second = await client.post("/shutdown", headers=auth)
        assert first.status_code == second.status_code == 202
        assert first.json()["drain_started"] is True and second.json()["drain_started"] is False
        assert lifecycle.phase is Phase.DRAINING and lifecycle.board.drains == 1
        assert (await client.get("/healthz/ready")).status_code == 503
    lifecycle.close()


async def test_shutdown_from_loopback_and_its_switches() -> None:
    """Loopback is trusted by default but not when trust is off; GET only when allowed."""
    distrusting = make_lifecycle(shutdown_trust_loopback=False)
    async with client_for(distrusting) as client:
        assert (await client.post("/shutdown")).status_code == 403
        assert distrusting.board.drains == 0
    distrusting.close()

    trusting = make_lifecycle()
    async with client_for(trusting) as client:
        get = await client.get("/shutdown")
        assert get.status_code == 405 and get.headers["allow"] == "POST"
        assert trusting.board.drains == 0
        assert (await client.post("/shutdown")).status_code == 202
    trusting.close()

    get_allowed = make_lifecycle(shutdown_allow_get=True)
    async with client_for(get_allowed) as client:
        assert (await client.get("/shutdown")).status_code == 202
        assert get_allowed.board.drains == 1
    get_allowed.close()


# What Envoy's HTTP connection manager adds with its default config (seen with envoy 1.40).
ENVOY_HEADERS = {
    "x-forwarded-proto": "http",
    "x-request-id": "5b0c",
    "x-envoy-expected-rq-timeout-ms": "15000",
}


@pytest.mark.parametrize(
    ("host", "server", "headers"),
    [
        ("127.0.0.1", "127.0.0.1", ENVOY_HEADERS),  # an HTTP sidecar connecting to loopback
        ("127.0.0.1", "127.0.0.1", {"x-real-ip": "203.0.113.7"}),  # nginx's usual config
        ("127.0.0.1", "127.0.0.1", {"forwarded": "for=203.0.113.7"}),
        ("127.0.0.6", "10.1.2.3", {}),  # Istio's inbound passthrough (L4) to the pod IP
    ],
)
async def test_shutdown_through_a_local_proxy_is_refused(
    host: str, server: str, headers: dict[str, str]
) -> None:
    """A loopback peer is not trusted when the request shows a proxy or arrived on the pod IP:
    403, readiness unchanged, and /healthz without check detail; the token still works."""
    lifecycle = make_lifecycle(shutdown_token=TOKEN)
    transport = httpx.ASGITransport(app=GracefulMiddleware(hello, lifecycle=lifecycle), client=(host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{server}", headers=headers) as client:
        assert (await client.get("/healthz/ready")).status_code == 200
        assert (await client.post("/shutdown")).status_code == 403
        assert "checks" not in (await client.get("/healthz")).json()
        assert (await client.get("/healthz/ready")).status_code == 200
        assert lifecycle.phase is Phase.READY and lifecycle.board.drains == 0
        with_token = await client.get("/healthz", headers={"authorization": f"Bearer {TOKEN}"})
        assert "checks" in with_token.json()
        assert (
            await client.post("/shutdown", headers={"authorization": f"Bearer {TOKEN}"})
        ).status_code == 202
    lifecycle.close()


async def test_direct_loopback_caller_sees_check_detail() -> None:
    """The preStop shape (curl on the pod's loopback, no proxy header) is trusted: detail shown."""
    lifecycle = make_lifecycle()
    app = GracefulMiddleware(hello, lifecycle=lifecycle)
    app.add_check("secret-db", lambda: True, critical=False)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        assert "secret-db" in (await client.get("/healthz")).json()["checks"]
    lifecycle.close()


async def test_shutdown_wait_holds_until_the_drain_delay_is_over() -> None:
    """?wait=1 answers only when the drain delay has passed (kubelet then sends SIGTERM)."""
    lifecycle = make_lifecycle(drain_delay=0.4, shutdown_allow_get=True)
    async with client_for(lifecycle) as client:
        started = time.monotonic()
        response = await client.get("/shutdown?wait=1")
        waited = time.monotonic() - started
        assert response.status_code == 202
        assert 0.4 <= waited < 3.0, waited
        assert json.loads(response.text)["drain_delay_seconds"] == 0.4
    lifecycle.close()


async def test_shutdown_wait_ends_early_when_the_stop_comes_first() -> None:
    """A second signal (STOPPING) releases a waiting /shutdown before the delay is over."""
    lifecycle = make_lifecycle(drain_delay=30, shutdown_allow_get=True)
    async with client_for(lifecycle) as client:
        waiting = asyncio.ensure_future(client.get("/shutdown?wait=1"))
        deadline = time.monotonic() + 5
        while lifecycle.phase is not Phase.DRAINING and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        lifecycle.begin_stop()
        response = await asyncio.wait_for(waiting, 5)
        assert response.status_code == 202
    lifecycle.close()


async def test_other_scopes_pass_through_untouched() -> None:
    """A scope type the middleware does not know reaches the app as it is."""
    seen = []

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        seen.append(scope)

    lifecycle = make_lifecycle()
    scope = {"type": "custom.thing"}
    await GracefulMiddleware(app, lifecycle=lifecycle)(scope, None, None)  # type: ignore[arg-type]
    assert seen == [scope]
    lifecycle.close()


def test_probe_requests_are_kept_out_of_the_access_log() -> None:
    """uvicorn's access records for probe paths are dropped; others are kept."""
    log_filter = ProbeLogFilter(frozenset({"/healthz/ready"}))

    def record(path: str) -> logging.LogRecord:
        args = ("127.0.0.1:1", "GET", path, "1.1", 200)
        return logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', args, None)

    assert not log_filter.filter(record("/healthz/ready"))
    assert not log_filter.filter(record("/healthz/ready?x=1"))
    assert log_filter.filter(record("/orders"))
