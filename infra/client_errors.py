"""When a faulty instance started failing its clients: the moment the demo's drain has to beat.

A leak's crash is not its first harm. Before it, the instance slows down until requests outlast the
client's timeout, and a client that gave up saw an error even though HAProxy later logged the
instance's 200. So the demo does not judge its drain against the crash alone but against the first
request of the instance that failed for its client (5xx, or slower than the client waits), in a window
where such requests passed 1 % of what the instance was sent. A drain only protects requests sent after
it, so the onset is that request's send time (HAProxy's accept time, the access log's `ts_ms`). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

ERROR_SHARE = 0.01  # "before its error rate passed 1 %"


def failed_for_client(status: int, latency_ms: float, client_timeout_ms: float) -> bool:
    """A 5xx (a crash with requests in flight is HAProxy's 502), or an answer after the client gave up."""
    return status >= 500 or latency_ms >= client_timeout_ms


def error_onset_ms(requests: Iterable[tuple[int, int, float]], client_timeout_ms: float, window_ms: int,
                   share: float = ERROR_SHARE) -> int | None:
    """The send time of the first failed request (`failed_for_client`) at which the failed share of the
    requests sent in the `window_ms` up to it passed `share`; None when it never did. `requests`:
    (ts_ms, status, latency_ms) of one instance."""
    ordered = sorted(requests)
    failed = [failed_for_client(status, latency, client_timeout_ms) for _, status, latency in ordered]
    first = 0  # the oldest request inside the window
    errors = 0  # failed requests inside the window
    for i, (ts, _, _) in enumerate(ordered):
        errors += failed[i]
        while ordered[first][0] <= ts - window_ms:
            errors -= failed[first]
            first += 1
        if failed[i] and errors / (i - first + 1) > share:
            return ts
    return None
