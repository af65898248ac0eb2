"""Retry policies, configured once (tenacity), for the stages' calls that must eventually succeed.

Each policy is a function returning a fresh `AsyncRetrying`, used as

    async for attempt in retry.until_accepted(log, "syslog tcp: sink refused"):
        with attempt:
            call()

Only real retry loops use these: one call repeated until it succeeds. A supervision loop (the
weight adapter's rounds, the Kafka sink's spool replayer) and a reader loop (a file tail's polls,
a queue drain) do other work between tries and stop on their own signal; they keep their loops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_exponential, wait_fixed

# A sink pushing back (its spool full while Kafka is away): first retry after 0.1 s, doubling to 5 s.
BACKPRESSURE_FIRST_S = 0.1
BACKPRESSURE_MAX_S = 5.0
# A store refusing a write (ClickHouse down): the same write again every second.
STORE_WRITE_EVERY_S = 1.0


def until_accepted(log: logging.Logger, what: str,
                   on_failure: Callable[[BaseException | None], None] | None = None) -> AsyncRetrying:
    """Hold the caller until the call is accepted: every failure retried, forever, with exponential
    backoff; each logged as `<what>: <error>; retrying in <s>s` (and handed to `on_failure`, for a
    caller that treats a refusal as a sign of trouble). Cancellation ends it."""

    def note(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s: %s; retrying in %.1fs", what, error, delay)
        if on_failure is not None:
            on_failure(error)

    return AsyncRetrying(
        retry=retry_if_exception_type(Exception), stop=stop_never,
        wait=wait_exponential(multiplier=BACKPRESSURE_FIRST_S, max=BACKPRESSURE_MAX_S),
        before_sleep=note, reraise=True,
    )


def until_stored() -> AsyncRetrying:
    """Repeat a write until the store acknowledges it: every failure retried, forever, at a fixed
    interval (the caller counts and logs each failure, knowing what it was writing)."""
    return AsyncRetrying(retry=retry_if_exception_type(Exception), stop=stop_never,
                         wait=wait_fixed(STORE_WRITE_EVERY_S), reraise=True)
