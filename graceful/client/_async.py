"""``AsyncTransport``: the async twin of ``Transport`` (asyncio or trio, through anyio as httpx does)."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable

import anyio
import httpx

from graceful.client._balancing import BalancePolicy, Balancer, Endpoints, EndpointView
from graceful.client._call import Call, Config, discard_size
from graceful.client._policies import BudgetWindow, Failure, HedgePolicy, RetryBudget, RetryPolicy
from graceful.client._sources import make_source
from graceful.client._stats import StatsSnapshot
from graceful.client._sync import DEFAULT_BALANCE, DEFAULT_BUDGET, DEFAULT_RETRY, _note_hedge

Outcome = tuple[int, float, "httpx.Response | httpx.TransportError"]


class AsyncTransport(httpx.AsyncBaseTransport):
    """Wraps ``transport`` (default ``httpx.AsyncHTTPTransport()``).

    ``httpx.AsyncClient(transport=AsyncTransport())`` is the whole wiring.

    Same policies, defaults and balancing as ``Transport``. Losing hedged attempts are cancelled,
    which closes their connections. The first resolution of ``endpoints`` (and every DNS lookup
    after it) runs on a worker thread, never on the event loop.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        budget: RetryBudget | None = DEFAULT_BUDGET,
        hedge: HedgePolicy | None = None,
        endpoints: Endpoints | None = None,
        balance: BalancePolicy = DEFAULT_BALANCE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.inner = transport if transport is not None else httpx.AsyncHTTPTransport()
        self.config = Config(
            retry=retry,
            budget=BudgetWindow(budget, clock) if budget is not None else None,
            hedge=hedge,
            clock=clock,
            random=random,
        )
        self._sleep = sleep if sleep is not None else anyio.sleep
        self.balancer = (
            None
            if endpoints is None
            else Balancer(
                make_source(endpoints, refresh=balance.refresh), balance, clock=clock, random=random
            )
        )

    def __repr__(self) -> str:
        config = self.config
        budget = config.budget.budget if config.budget else None
        return f"AsyncTransport(retry={config.retry!r}, budget={budget!r}, hedge={config.hedge!r})"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = Call(self.config, request)
        if call.hedge is not None:
            return await self._hedged(call, call.hedge)
        clock = self.config.clock
        for number in range(1, 1 + call.attempt_limit()):
            began = clock()
            try:
                response = await self._send(call, number)
            except httpx.TransportError as exc:
                delay = call.next_retry(call.record_error(exc, number, began))
                if delay is None:
                    raise call.error(exc) from exc
            else:
                failure = call.record_response(response, number, began)
                if failure is None:
                    return call.finish(response)
                delay = call.next_retry(failure, call.pushback(response))
                if delay is None:
                    return call.finish(response)
                await _discard(response)
            await self._sleep(delay)
        raise AssertionError("unreachable: the last attempt always ends the call")  # pragma: no cover

    async def _send(self, call: Call, number: int) -> httpx.Response:
        """One attempt: to the inner transport, through an endpoint of the set when balancing."""
        balancer = self.balancer
        if balancer is None:
            return await self.inner.handle_async_request(call.attempt_request())
        if balancer.needs_first_resolution():
            await anyio.to_thread.run_sync(balancer.source.refresh_now)
        pick = balancer.pick(avoid=call.tried)
        call.went_to(number, pick.endpoint.address)
        try:
            response = await self.inner.handle_async_request(pick.route(call.attempt_request()))
        except BaseException as exc:  # a cancelled hedge too: its in-flight count must drop
            pick.failed(exc)
            raise
        return pick.answered(response)

    def endpoints(self) -> list[EndpointView]:
        """The balancer's view of each endpoint (empty without ``endpoints=``)."""
        return [] if self.balancer is None else self.balancer.view()

    def stats(self) -> StatsSnapshot:
        """What this transport did so far: calls, attempts, retries by reason, hedges, refusals."""
        return self.config.stats.snapshot()

    async def _hedged(self, call: Call, hedge: HedgePolicy) -> httpx.Response:
        """As ``Transport._hedged``, with tasks: the losers are cancelled, not only closed."""
        clock = self.config.clock
        send, receive = anyio.create_memory_object_stream[Outcome](hedge.max_attempts)
        running: dict[int, float] = {}
        launched, may_hedge = 0, True
        last_response: httpx.Response | None = None
        last_error: httpx.TransportError | None = None
        winner: httpx.Response | None = None

        async def attempt(number: int, began: float) -> None:
            try:
                outcome: httpx.Response | httpx.TransportError = await self._send(call, number)
            except httpx.TransportError as exc:
                outcome = exc
            send.send_nowait((number, began, outcome))  # room for every attempt: never blocks

        async with anyio.create_task_group() as tasks:

            def launch() -> None:
                nonlocal launched
                launched += 1
                running[launched] = clock()
                tasks.start_soon(attempt, launched, running[launched])

            launch()
            for _ in range(4 * hedge.max_attempts + 4):  # bounded: each pass ends or starts an attempt
                can_start = may_hedge and launched < hedge.max_attempts
                left = call.remaining()
                timeout = min(hedge.delay, left) if can_start else left
                with anyio.move_on_after(None if timeout == math.inf else max(timeout, 0)):
                    number, began, outcome = await receive.receive()
                    running.pop(number)
                    if isinstance(outcome, httpx.Response):
                        failure: Failure | None = call.record_response(
                            outcome, number, began, hedge=number > 1
                        )
                        if failure is None:
                            winner = outcome
                            break
                        if last_response is not None:
                            await _discard(last_response)
                        last_response = outcome
                    else:
                        failure = call.record_error(outcome, number, began, hedge=number > 1)
                        last_error = outcome
                    if failure is not None and not call.may_retry(failure):
                        may_hedge = False
                    if not running:
                        if may_hedge and call.may_start_hedge(launched):
                            launch()
                            continue
                        break
                    continue
                # No attempt finished within the timeout.
                if call.remaining() <= 0:
                    call.stop_reason = f"the call's deadline of {call.deadline:g} s was reached"
                    break
                if can_start and call.take_budget():
                    _note_hedge(call, launched + 1)
                    launch()
                else:
                    may_hedge = False
            for number, began in running.items():
                call.record_cancelled(number, began)
            tasks.cancel_scope.cancel()  # the losers: httpcore closes a connection cancelled mid-request
        # An attempt that answered after the winner was chosen: close it.
        with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
            for _ in range(hedge.max_attempts):
                _, _, late = receive.receive_nowait()
                if isinstance(late, httpx.Response):
                    await late.aclose()
        send.close()
        receive.close()
        if winner is not None:
            if last_response is not None:
                await _discard(last_response)
            return call.finish(winner)
        if last_response is not None:
            return call.finish(last_response)
        if last_error is None:
            error = httpx.ReadTimeout(call.stop_reason or "no attempt answered", request=call.request)
            raise call.error(error) from None
        raise call.error(last_error) from last_error

    async def aclose(self) -> None:
        if self.balancer is not None:
            self.balancer.close()
        await self.inner.aclose()


async def _discard(response: httpx.Response) -> None:
    try:
        if discard_size(response):
            await response.aread()
    except httpx.HTTPError:
        pass
    finally:
        await response.aclose()
