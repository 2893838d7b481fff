"""RetryPolicy: waits (backoff, jitter, caps, Retry-After), which errors are retried, what is logged.

The sleep is injected (``fake_sleep``): nothing here waits for real.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
import tenacity

from syncer.api.retry import RetryPolicy, parse_retry_after
from syncer.config import RetryConfig
from syncer.errors import (
    AuthError,
    ConnectionFailed,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    ServerError,
    TimeoutError_,
    UploadOutcomeUnknown,
)

SIGNED = "https://files.example/clinic/files/view/abc?auth_code=deadbeef&time=1700000000"


class FixedRandom:
    """A ``random.Random`` stand-in whose ``random()`` is always ``value``."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class Flaky:
    """An async callable that raises the given errors in turn, then returns ``result``."""

    def __init__(self, *errors: BaseException, result: object = "ok") -> None:
        self.errors = list(errors)
        self.calls = 0
        self.result = result

    async def __call__(self, *args, **kw):
        self.calls += 1
        self.args = (args, kw)
        if self.errors:
            raise self.errors.pop(0)
        return self.result


# -- waits ---------------------------------------------------------------------------------------

def test_backoff_grows_doubling_and_is_capped():
    top = RetryPolicy(attempts=10, max_wait=3.0, min_wait=0.2, rng=FixedRandom(0.999999))
    waits = [top.wait_for(ServerError("x"), n) for n in range(1, 9)]
    assert waits == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0, 3.0], rel=1e-3)
    bottom = RetryPolicy(attempts=10, max_wait=3.0, min_wait=0.2, rng=FixedRandom(0.0))
    assert [bottom.wait_for(ServerError("x"), n) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.5, 1.5])


def test_backoff_jitter_stays_within_half_to_full_bound():
    policy = RetryPolicy(attempts=6, max_wait=30.0, min_wait=0.2)
    for attempt in range(1, 12):
        bound = policy.backoff_bound(attempt)
        for _ in range(50):
            wait = policy.wait_for(TimeoutError_("t"), attempt)
            assert bound / 2 <= wait <= bound
    # a large attempt number does not overflow
    assert policy.backoff_bound(10_000) == 30.0


@pytest.mark.parametrize(("retry_after", "expected"), [(7.0, 7.0), (0.0, 0.0), (100.0, 30.0), (30.0, 30.0)])
def test_retry_after_is_honoured_and_capped(retry_after, expected):
    policy = RetryPolicy(max_wait=30.0, rng=FixedRandom(0.5))
    exc = RateLimitedError("HTTP 429", retry_after=retry_after)
    assert policy.wait_for(exc, 1) == expected
    assert policy.wait_for(exc, 5) == expected  # not scaled by the attempt number


def test_retry_after_on_a_503_is_honoured_too():
    exc = ServerError("HTTP 503")
    exc.retry_after = 4.0
    assert RetryPolicy(max_wait=30.0).wait_for(exc, 3) == 4.0


def test_429_without_retry_after_falls_back_to_backoff():
    policy = RetryPolicy(max_wait=30.0, min_wait=0.5, rng=FixedRandom(0.999999))
    assert policy.wait_for(RateLimitedError("HTTP 429"), 3) == pytest.approx(2.0, rel=1e-3)


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    now = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC).timestamp()
    in_90s = format_datetime(datetime.fromtimestamp(now + 90, UTC), usegmt=True)
    assert parse_retry_after(in_90s, now=now) == pytest.approx(90.0)
    past = format_datetime(datetime.fromtimestamp(now - 90, UTC), usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    for junk in (None, "", "soon", "nan", "inf", "Mon, 99 Foo 2026"):
        assert parse_retry_after(junk) is None


async def test_http_date_retry_after_is_capped_by_the_policy(fake_sleep):
    now = datetime.now(UTC).timestamp()
    far = format_datetime(datetime.fromtimestamp(now + 3600, UTC), usegmt=True)
    exc = RateLimitedError("HTTP 429", retry_after=parse_retry_after(far))
    fn = Flaky(exc)
    policy = RetryPolicy(attempts=3, max_wait=12.0, sleep=fake_sleep)
    assert await policy.call(fn) == "ok"
    assert fake_sleep.calls == [12.0]


# -- what is retried -----------------------------------------------------------------------------

async def test_transient_errors_are_retried_until_success(fake_sleep):
    fn = Flaky(ServerError("HTTP 500"), ConnectionFailed("reset"), TimeoutError_("slow"), result=42)
    policy = RetryPolicy(attempts=6, sleep=fake_sleep)
    assert await policy.call(fn, 1, key="v") == 42
    assert fn.calls == 4
    assert fn.args == ((1,), {"key": "v"})
    assert len(fake_sleep.calls) == 3


async def test_attempts_are_counted_and_our_error_is_reraised(fake_sleep):
    errors = [ServerError(f"HTTP 500 #{i}") for i in range(10)]
    fn = Flaky(*errors)
    policy = RetryPolicy(attempts=4, sleep=fake_sleep)
    with pytest.raises(ServerError) as info:
        await policy.call(fn)
    assert not isinstance(info.value, tenacity.RetryError)
    assert str(info.value) == "HTTP 500 #3"  # the last try's error
    assert fn.calls == 4
    assert len(fake_sleep.calls) == 3


@pytest.mark.parametrize("exc", [
    NotFoundError("HTTP 404"), AuthError("HTTP 401"), ProtocolError("bad json"),
    UploadOutcomeUnknown("lost answer"), ValueError("a bug"),
])
async def test_non_retryable_errors_are_raised_at_once(fake_sleep, exc):
    fn = Flaky(exc)
    with pytest.raises(type(exc)):
        await RetryPolicy(attempts=6, sleep=fake_sleep).call(fn)
    assert fn.calls == 1
    assert fake_sleep.calls == []


async def test_cancellation_is_never_retried(fake_sleep):
    fn = Flaky(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await RetryPolicy(sleep=fake_sleep).call(fn)
    assert fn.calls == 1


async def test_custom_retry_if(fake_sleep):
    fn = Flaky(NotFoundError("HTTP 404"), result="found")
    policy = RetryPolicy(sleep=fake_sleep)
    assert await policy.call(fn, retry_if=lambda e: isinstance(e, NotFoundError)) == "found"
    assert fn.calls == 2


async def test_one_attempt_means_no_retry(fake_sleep):
    fn = Flaky(ServerError("HTTP 503"))
    with pytest.raises(ServerError):
        await RetryPolicy(attempts=1, sleep=fake_sleep).call(fn)
    assert fn.calls == 1 and fake_sleep.calls == []


async def test_retrying_wraps_a_whole_unit_of_work(fake_sleep):
    """The pull's way: a download + write retried as one unit with the same policy."""
    policy = RetryPolicy(attempts=3, sleep=fake_sleep)
    tries = 0
    async for attempt in policy.retrying():
        with attempt:
            tries += 1
            if tries < 3:
                raise ConnectionFailed("cut mid-body")
    assert tries == 3
    assert len(fake_sleep.calls) == 2

    with pytest.raises(ConnectionFailed):
        async for attempt in policy.retrying():
            with attempt:
                raise ConnectionFailed("always")


async def test_on_retry_is_told_each_retry(fake_sleep):
    seen = []
    policy = RetryPolicy(attempts=3, sleep=fake_sleep, on_retry=lambda e, n, w: seen.append((type(e), n, w)))
    with pytest.raises(RateLimitedError):
        await policy.call(Flaky(*[RateLimitedError("HTTP 429", retry_after=2.0) for _ in range(3)]))
    assert seen == [(RateLimitedError, 1, 2.0), (RateLimitedError, 2, 2.0)]
    assert fake_sleep.calls == [2.0, 2.0]


def test_from_config_and_validation(fake_sleep):
    policy = RetryPolicy.from_config(RetryConfig(attempts=3, max_wait=5.0, min_wait=0.1), sleep=fake_sleep)
    assert (policy.attempts, policy.max_wait, policy.min_wait) == (3, 5.0, 0.1)
    assert policy.sleep is fake_sleep
    assert "attempts=3" in repr(policy)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(max_wait=-1)


# -- logging -------------------------------------------------------------------------------------

async def test_retries_are_logged_redacted(fake_sleep, caplog):
    caplog.set_level(logging.DEBUG, logger="syncer.retry")
    errors = [ServerError("HTTP 502: bad gateway", url=SIGNED) for _ in range(3)]
    with pytest.raises(ServerError):
        await RetryPolicy(attempts=3, sleep=fake_sleep).call(Flaky(*errors))
    records = [r for r in caplog.records if r.name == "syncer.retry"]
    assert [r.levelno for r in records] == [logging.DEBUG, logging.INFO]
    text = "\n".join(r.getMessage() for r in records)
    assert "ServerError" in text and "try 1/3" in text and "try 2/3" in text
    assert "/files/view/abc" in text
    assert "auth_code" not in text and "deadbeef" not in text
    assert all(r.exc_info is None for r in records)


async def test_foreign_exception_text_is_never_logged(fake_sleep, caplog):
    caplog.set_level(logging.DEBUG, logger="syncer.retry")
    fn = Flaky(RuntimeError(f"boom at {SIGNED}"), RuntimeError(f"again at {SIGNED}"))
    with pytest.raises(RuntimeError):
        await RetryPolicy(attempts=2, sleep=fake_sleep).call(fn, retry_if=lambda e: True)
    text = caplog.text
    assert "RuntimeError" in text and "withheld" in text
    assert "auth_code" not in text and "deadbeef" not in text
