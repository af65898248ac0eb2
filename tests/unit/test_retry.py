"""The retry policies of infra/core/retry.py: what they retry, how long they wait, what they log."""

from __future__ import annotations

import asyncio
import logging

import pytest
from tenacity import AsyncRetrying

from infra.core import retry


def _run(policy: AsyncRetrying, failures: int) -> tuple[list[float], int]:
    """Drive `policy` over a call failing `failures` times; (the sleeps it asked for, calls made)."""
    sleeps: list[float] = []
    calls = 0

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> None:
        nonlocal calls
        async for attempt in policy.copy(sleep=sleep):
            with attempt:
                calls += 1
                if calls <= failures:
                    raise ConnectionError(f"refused {calls}")

    asyncio.run(main())
    return sleeps, calls


def test_until_accepted_backs_off_exponentially_to_its_cap_and_logs_each_retry(
        caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.retry")
    with caplog.at_level(logging.WARNING, logger="test.retry"):
        sleeps, calls = _run(retry.until_accepted(log, "sink refused"), failures=8)
    assert calls == 9
    assert sleeps == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert caplog.messages[0] == "sink refused: refused 1; retrying in 0.1s"
    assert len(caplog.messages) == 8


def test_until_stored_repeats_the_write_every_second() -> None:
    sleeps, calls = _run(retry.until_stored(), failures=3)
    assert (sleeps, calls) == ([1.0, 1.0, 1.0], 4)


def test_cancellation_is_not_retried() -> None:
    async def main() -> None:
        async for attempt in retry.until_stored():
            with attempt:
                raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
