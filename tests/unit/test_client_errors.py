"""When the faulty instance's clients started seeing errors: the onset the demo's drain is judged against."""

from infra.client_errors import error_onset_ms, failed_for_client

TIMEOUT_MS = 10_000.0
WINDOW_MS = 10_000


def test_an_answer_the_client_gave_up_on_is_a_failure_even_when_haproxy_logged_200() -> None:
    assert failed_for_client(200, 12_000.0, TIMEOUT_MS)
    assert failed_for_client(502, 3.0, TIMEOUT_MS)
    assert not failed_for_client(200, 9_999.0, TIMEOUT_MS) and not failed_for_client(404, 5.0, TIMEOUT_MS)


def test_the_onset_is_the_send_time_of_the_first_failure_once_failures_pass_the_share() -> None:
    # 10 req/s, latency growing 50 ms per request: request 200 is the first over 10 s, 1 of the 100 sent in its
    # window (1 %, not past it); request 201 makes 2 of 100
    requests = [(1_000 + 100 * i, 200, 50.0 * i) for i in range(260)]
    assert error_onset_ms(requests, TIMEOUT_MS, WINDOW_MS) == 1_000 + 100 * 201
    assert error_onset_ms(reversed(requests), TIMEOUT_MS, WINDOW_MS) == 1_000 + 100 * 201  # order does not matter
    assert error_onset_ms(requests[:200], TIMEOUT_MS, WINDOW_MS) is None  # no failure: no onset


def test_a_lone_failure_among_many_does_not_pass_one_percent_but_a_second_one_does() -> None:
    # 200 requests in each 10 s: one failure is 0.5 %, two are 1 %, three pass it
    requests = [(50 * i, 200, 10.0) for i in range(1_000)]
    requests[500] = (25_000, 503, 10.0)
    assert error_onset_ms(requests, TIMEOUT_MS, WINDOW_MS) is None
    requests[550] = (27_500, 503, 10.0)
    assert error_onset_ms(requests, TIMEOUT_MS, WINDOW_MS) is None  # 2 of the 200 in the window: not past 1 %
    requests[560] = (28_000, 503, 10.0)
    assert error_onset_ms(requests, TIMEOUT_MS, WINDOW_MS) == 28_000
    # failures a window apart each stay alone
    spread = [(50 * i, 503 if i % 400 == 399 else 200, 10.0) for i in range(2_000)]
    assert error_onset_ms(spread, TIMEOUT_MS, WINDOW_MS) is None
