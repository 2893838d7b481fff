"""TransferSlots (syncer.pull.slots): the transfer connections whole files and segments share."""

from __future__ import annotations

import asyncio

import pytest

from syncer.pull.slots import TransferSlots


async def test_try_take_never_jumps_the_queue():
    slots = TransferSlots(1)
    await slots.take()
    waiter = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    assert not slots.try_take()  # none free
    slots.give()  # goes to the waiter, not back to the pool
    await asyncio.wait_for(waiter, 1)
    assert slots.free == 0 and not slots.try_take()
    slots.give()
    assert slots.try_take()


async def test_a_waiter_cancelled_before_it_ran_raises_cancelled_error():
    """give() drops a cancelled waiter; the waiter must still end with CancelledError (it once raised
    ValueError, which a pool worker took for an item's failure: it went on waiting on its queue, and
    the run hung)."""
    slots = TransferSlots(1)
    await slots.take()
    waiter = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    waiter.cancel()
    slots.give()  # before the waiter runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.free == 1 and slots.try_take()


async def test_a_slot_handed_to_a_cancelled_waiter_is_passed_on():
    slots = TransferSlots(1)
    await slots.take()
    first = asyncio.create_task(slots.take())
    second = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    slots.give()  # to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert slots.free == 0
