"""BodyPace: the per-read stall timeout and the minimum body rate, on a hand-driven clock."""

from __future__ import annotations

import pytest

from proxy.server.budget import BodyPace


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_without_a_rate_each_read_gets_the_stall_timeout() -> None:
    clock = Clock()
    pace = BodyPace(10, 0, clock)
    for _ in range(5):
        assert pace.wait() == pytest.approx(10.0)
        clock.now += 9.5
        pace.took(1)  # a byte within the stall timeout, however few


def test_a_trickle_inside_the_stall_timeout_is_cut_at_the_end_of_its_span() -> None:
    clock = Clock()
    pace = BodyPace(10, 100, clock)  # 1000 bytes per 10 s span
    for _ in range(9):
        clock.now += 1
        pace.took(10)
    assert pace.wait() == pytest.approx(1.0)
    clock.now += 1.5
    assert pace.wait() == 0.0
    with pytest.raises(TimeoutError):
        pace.took(10)


def test_a_span_that_got_its_bytes_starts_the_next() -> None:
    clock = Clock()
    pace = BodyPace(10, 100, clock)
    clock.now += 9
    pace.took(1000)
    assert pace.wait() == pytest.approx(10.0)
    clock.now += 9.9
    pace.took(999)
    assert pace.wait() == pytest.approx(0.1)


def test_a_fast_span_earns_no_credit_for_a_slow_one() -> None:
    clock = Clock()
    pace = BodyPace(10, 100, clock)
    pace.took(10**9)
    clock.now += 10.5
    with pytest.raises(TimeoutError):
        pace.took(1)
