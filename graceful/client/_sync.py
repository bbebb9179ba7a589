"""``Transport``: an ``httpx.BaseTransport`` that retries what is safe, within a budget and a deadline."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable

import httpx

from graceful.client._balancing import BalancePolicy, Balancer, Endpoints, EndpointView
from graceful.client._call import Call, Config, discard_size, logger
from graceful.client._policies import BudgetWindow, Failure, HedgePolicy, RetryBudget, RetryPolicy
from graceful.client._sources import make_source
from graceful.client._stats import StatsSnapshot

DEFAULT_RETRY = RetryPolicy()
DEFAULT_BUDGET = RetryBudget()
DEFAULT_BALANCE = BalancePolicy()
#: Threads that run hedged attempts at once, per transport: a bound on what a slow dependency holds.
HEDGE_THREADS = 32


class Transport(httpx.BaseTransport):
    """Wraps ``transport`` (default ``httpx.HTTPTransport()``): ``httpx.Client(transport=Transport())``.

    ``retry=None`` disables retries, ``budget=None`` removes the retry budget; ``hedge`` turns on
    hedging for idempotent requests. ``endpoints`` makes the transport its own load balancer: each
    attempt goes to one endpoint of that set (a list of "host:port", "dns:///name:port",
    "file:///path", a callable), chosen and judged as ``balance`` says (docs/client.md,
    "Balancing"). ``clock``, ``sleep`` and ``random`` are injectable for tests.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        budget: RetryBudget | None = DEFAULT_BUDGET,
        hedge: HedgePolicy | None = None,
        endpoints: Endpoints | None = None,
        balance: BalancePolicy = DEFAULT_BALANCE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.inner = transport if transport is not None else httpx.HTTPTransport()
        self.config = Config(
            retry=retry,
            budget=BudgetWindow(budget, clock) if budget is not None else None,
            hedge=hedge,
            clock=clock,
            random=random,
        )
        self._sleep = sleep
        self.balancer = (
            None
            if endpoints is None
            else Balancer(
                make_source(endpoints, refresh=balance.refresh), balance, clock=clock, random=random
            )
        )
        self._hedge_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def __repr__(self) -> str:
        config = self.config
        budget = config.budget.budget if config.budget else None
        return f"Transport(retry={config.retry!r}, budget={budget!r}, hedge={config.hedge!r})"

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = Call(self.config, request)
        if call.hedge is not None:
            return self._hedged(call, call.hedge)
        clock = self.config.clock
        for number in range(1, 1 + call.attempt_limit()):
            began = clock()
            try:
                response = self._send(call, number)
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
                _discard(response)
            self._sleep(delay)
        raise AssertionError("unreachable: the last attempt always ends the call")  # pragma: no cover

    def _send(self, call: Call, number: int) -> httpx.Response:
        """One attempt: to the inner transport, through an endpoint of the set when balancing."""
        balancer = self.balancer
        if balancer is None:
            return self.inner.handle_request(call.attempt_request())
        if balancer.needs_first_resolution():
            balancer.source.refresh_now()
        pick = balancer.pick(avoid=call.tried)
        call.went_to(number, pick.endpoint.address)
        try:
            response = self.inner.handle_request(pick.route(call.attempt_request()))
        except BaseException as exc:
            pick.failed(exc)
            raise
        return pick.answered(response)

    def endpoints(self) -> list[EndpointView]:
        """The balancer's view of each endpoint (empty without ``endpoints=``)."""
        return [] if self.balancer is None else self.balancer.view()

    def stats(self) -> StatsSnapshot:
        """What this transport did so far: calls, attempts, retries by reason, hedges, refusals."""
        return self.config.stats.snapshot()

    # -- hedging ----------------------------------------------------------------------------------

    def _hedged(self, call: Call, hedge: HedgePolicy) -> httpx.Response:
        """Start attempts ``hedge.delay`` apart (at once after a failure); the first usable response wins."""
        pool, clock = self._pool(), self.config.clock
        pending: dict[concurrent.futures.Future[httpx.Response], tuple[int, float]] = {}
        launched, may_hedge = 0, True
        last_response: httpx.Response | None = None
        last_error: Exception | None = None

        def launch() -> None:
            nonlocal launched
            launched += 1
            pending[pool.submit(self._send, call, launched)] = (launched, clock())

        launch()
        # Bounded: each pass ends an attempt, starts one, or ends the call.
        for _ in range(4 * hedge.max_attempts + 4):
            can_start = may_hedge and launched < hedge.max_attempts
            left = call.remaining()
            timeout = min(hedge.delay, left) if can_start else left
            done, _ = concurrent.futures.wait(
                pending,
                timeout=None if timeout == math.inf else max(timeout, 0),
                return_when="FIRST_COMPLETED",
            )
            if not done:
                if call.remaining() <= 0:
                    call.stop_reason = f"the call's deadline of {call.deadline:g} s was reached"
                    break
                if can_start and call.take_budget():
                    _note_hedge(call, launched + 1)
                    launch()
                else:
                    may_hedge = False
                continue
            for future in done:
                number, began = pending.pop(future)
                try:
                    response = future.result()
                except httpx.TransportError as exc:
                    failure: Failure | None = call.record_error(exc, number, began, hedge=number > 1)
                    last_error = exc
                else:
                    failure = call.record_response(response, number, began, hedge=number > 1)
                    if failure is None:
                        _abandon(pending, call)
                        return call.finish(response)
                    if last_response is not None:
                        _discard(last_response)
                    last_response = response
                if failure is not None and not call.may_retry(failure):
                    may_hedge = False
            if not pending:
                # Every attempt so far failed: start the next at once (gRPC A6: a non-fatal
                # status during hedging sends the next hedged request immediately).
                if may_hedge and call.may_start_hedge(launched):
                    launch()
                    continue
                break
        _abandon(pending, call)
        if last_response is not None:
            if last_error is not None and not call.stop_reason:
                call.stop_reason = "no attempts left"
            return call.finish(last_response)
        if last_error is None:  # the deadline ended the call before any attempt answered
            last_error = httpx.ReadTimeout(call.stop_reason or "no attempt answered", request=call.request)
        raise call.error(last_error) from last_error

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._pool_lock:
            if self._hedge_pool is None:
                self._hedge_pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=HEDGE_THREADS, thread_name_prefix="graceful-hedge"
                )
            return self._hedge_pool

    def close(self) -> None:
        if self._hedge_pool is not None:
            self._hedge_pool.shutdown(wait=False, cancel_futures=True)
        if self.balancer is not None:
            self.balancer.close()
        self.inner.close()


def _abandon(pending: dict[concurrent.futures.Future[httpx.Response], tuple[int, float]], call: Call) -> None:
    """Cancel the attempts still running: queued ones never start, running ones are closed on arrival.

    A thread cannot be interrupted in a blocking read; closing the response when it comes closes
    its connection (its body unread), so nothing of the losing attempt is kept.
    """
    for future, (number, began) in pending.items():
        call.record_cancelled(number, began)
        if not future.cancel():
            future.add_done_callback(_close_result)
    pending.clear()


def _close_result(future: concurrent.futures.Future[httpx.Response]) -> None:
    with contextlib.suppress(Exception):
        future.result().close()


def _discard(response: httpx.Response) -> None:
    """Done with a response that will be retried: read a small body (the connection stays pooled)."""
    try:
        if discard_size(response):
            response.read()
    except httpx.HTTPError:
        pass
    finally:
        response.close()


def _note_hedge(call: Call, number: int) -> None:
    """A hedge starts after ``hedge.delay`` with no response: count it, say it at DEBUG."""
    call.config.stats.count("hedges")
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "graceful.client: hedging %s %s: attempt %d, no response headers after %g s",
            call.request.method,
            call.request.url,
            number,
            call.hedge.delay if call.hedge else 0,
        )
