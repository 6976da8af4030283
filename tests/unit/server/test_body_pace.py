"""BodyPace: the per-read stall timeout and the minimum body rate, counted in time spent
waiting for the client."""

from __future__ import annotations

import pytest

from proxy.server.budget import BodyPace


def test_without_a_rate_each_read_gets_the_stall_timeout() -> None:
    pace = BodyPace(10, 0)
    for _ in range(5):
        assert pace.wait() == pytest.approx(10.0)
        pace.took(1, 9.5)  # a byte within the stall timeout, however few


def test_a_trickle_inside_the_stall_timeout_is_cut_at_the_end_of_its_span() -> None:
    pace = BodyPace(10, 100)  # 1000 bytes per 10 s of waiting
    for _ in range(9):
        pace.took(10, 1.0)
    assert pace.wait() == pytest.approx(1.0)
    with pytest.raises(TimeoutError):
        pace.took(10, 1.0)


def test_a_span_that_got_its_bytes_starts_the_next() -> None:
    pace = BodyPace(10, 100)
    pace.took(1000, 9.0)
    assert pace.wait() == pytest.approx(10.0)
    pace.took(999, 9.9)
    assert pace.wait() == pytest.approx(0.1)


def test_a_fast_span_earns_no_credit_for_a_slow_one() -> None:
    pace = BodyPace(10, 100)
    pace.took(10**9, 0.1)
    with pytest.raises(TimeoutError):
        pace.took(1, 10.5)


def test_time_not_spent_waiting_for_the_client_does_not_count() -> None:
    pace = BodyPace(10, 100)
    for _ in range(1000):  # data already there each time, however long between the reads
        pace.took(1, 0.0)
    assert pace.wait() == pytest.approx(10.0)
