"""proxy/server/budget.py: the per-process memory budget of verify-first reads."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from proxy.config.server import ServerConfig
from proxy.server.budget import BudgetExhausted, MemoryBudget


async def test_reservations_within_capacity_are_immediate_and_returned() -> None:
    budget = MemoryBudget(100, wait=5.0)
    await budget.acquire(60)
    await budget.acquire(40)
    assert budget.in_use == 100
    budget.release(60)
    budget.release(40)
    assert budget.in_use == 0
    await budget.acquire(0)  # an empty object reserves nothing
    assert budget.in_use == 0


async def test_one_that_does_not_fit_waits_then_is_refused() -> None:
    budget = MemoryBudget(100, wait=0.3)
    await budget.acquire(80)
    began = time.monotonic()
    with pytest.raises(BudgetExhausted):
        await budget.acquire(30)
    waited = time.monotonic() - began
    assert 0.25 <= waited < 2.0
    assert budget.in_use == 80 and budget.waiting == 0


async def test_more_than_the_whole_budget_is_refused_at_once() -> None:
    budget = MemoryBudget(100, wait=10.0)
    began = time.monotonic()
    with pytest.raises(BudgetExhausted):
        await budget.acquire(101)
    assert time.monotonic() - began < 1.0
    assert budget.in_use == 0


async def test_a_waiter_gets_what_is_released_within_the_wait() -> None:
    budget = MemoryBudget(100, wait=5.0)
    await budget.acquire(70)
    waiter = asyncio.create_task(budget.acquire(50))
    await asyncio.sleep(0.05)
    assert not waiter.done() and budget.waiting == 1
    budget.release(70)
    await asyncio.wait_for(waiter, 1.0)
    assert budget.in_use == 50 and budget.waiting == 0


async def test_a_release_too_small_for_a_waiter_keeps_it_waiting() -> None:
    budget = MemoryBudget(100, wait=0.5)
    await budget.acquire(50)
    await budget.acquire(40)
    waiter = asyncio.create_task(budget.acquire(55))
    await asyncio.sleep(0.05)
    budget.release(40)  # 50 in use: 55 still does not fit
    with pytest.raises(BudgetExhausted):
        await waiter
    assert budget.in_use == 50 and budget.waiting == 0


async def test_only_what_fits_is_taken_when_many_wait() -> None:
    budget = MemoryBudget(100, wait=0.5)
    await budget.acquire(100)
    waiters = [asyncio.create_task(budget.acquire(40)) for _ in range(3)]
    await asyncio.sleep(0.05)
    budget.release(100)
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert sum(r is None for r in results) == 2
    assert sum(isinstance(r, BudgetExhausted) for r in results) == 1
    assert budget.in_use == 80


async def test_hold_returns_the_bytes_however_the_block_ends() -> None:
    budget = MemoryBudget(100, wait=0.1)
    async with budget.hold(30):
        assert budget.in_use == 30
    assert budget.in_use == 0
    with pytest.raises(RuntimeError):
        async with budget.hold(30):
            raise RuntimeError("the response failed")
    assert budget.in_use == 0

    entered = asyncio.Event()

    async def stalled() -> None:
        async with budget.hold(100):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(stalled())
    await entered.wait()
    assert budget.in_use == 100
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert budget.in_use == 0


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    budget = MemoryBudget(10, wait=5.0)
    await budget.acquire(10)
    waiter = asyncio.create_task(budget.acquire(5))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.waiting == 0 and budget.in_use == 10
    budget.release(10)
    assert budget.in_use == 0


async def test_a_failed_hold_reserves_nothing() -> None:
    budget = MemoryBudget(10, wait=0.05)
    await budget.acquire(10)
    with pytest.raises(BudgetExhausted):
        async with budget.hold(1):
            pytest.fail("entered without a reservation")
    assert budget.in_use == 10


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        MemoryBudget(0)
    with pytest.raises(ValueError):
        MemoryBudget(10, wait=-1)
    budget = MemoryBudget(10)
    with pytest.raises(ValueError):
        budget.release(1)  # more than is reserved
    with pytest.raises(ValueError):
        asyncio.run(budget.acquire(-1))


def test_the_config_gives_a_positive_budget() -> None:
    plain = {"tls": False, "plain_http_listen": "127.0.0.1:8080"}
    assert ServerConfig.model_validate(plain).verify_first_memory_bytes == 128 * 1024 * 1024
    assert ServerConfig.model_validate({**plain, "verify_first_memory_bytes": 1}).verify_first_memory_bytes == 1
    for bad in (0, -1, "64MiB", 1.5):
        with pytest.raises(ValidationError):
            ServerConfig.model_validate({**plain, "verify_first_memory_bytes": bad})
