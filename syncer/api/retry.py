"""The one retry policy: which errors are tried again, how long to wait, and how retries are logged.

Built on tenacity.  ``RetryPolicy.call`` retries one idempotent request (the client uses it for list,
info, rename and delete); ``RetryPolicy.retrying()`` gives the tenacity iterator for callers that retry a
larger unit of work (the pull retries a whole download + write, since a stream cannot be retried
piecewise).  Both share the same wait computation and the same redacting log callback.

Waits: a ``Retry-After`` the server sent (``retry_after`` on the error, already turned into seconds by
the client) is honoured, capped at ``max_wait``.  Otherwise exponential backoff with "equal jitter": the
n-th retry waits between ``b/2`` and ``b`` where ``b = min(max_wait, min_wait * 2**(n-1))``.  Not full
jitter (0..b): with a handful of attempts, full jitter can spend them all in well under a second against
a server that is down for a few seconds; equal jitter still spreads a burst of workers apart.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import functools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from syncer.errors import SyncerError, error_class, is_retryable
from syncer.redact import scrub

if TYPE_CHECKING:
    import tenacity

    from syncer.config import RetryConfig

T = TypeVar("T")

log = logging.getLogger("syncer.retry")

OnRetry = Callable[[BaseException, int, float], None]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP-date (a date in the past is 0).
    None when absent or unusable, so the caller falls back to its own backoff."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; parsedate gives naive for "-0000"
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class RetryPolicy:
    """How many times to try, how long to wait between tries, and what to log.

    ``attempts`` counts the first try.  ``sleep`` is injectable so tests take no real time.
    ``on_retry(exc, attempt, wait)`` is called before each sleep (``attempt`` is the number of the try
    that just failed, from 1), e.g. to count retries for the run summary.
    """

    def __init__(
        self,
        attempts: int = 6,
        max_wait: float = 30.0,
        min_wait: float = 0.2,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_retry: OnRetry | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if max_wait < 0 or min_wait < 0:
            raise ValueError("max_wait and min_wait must not be negative")
        self.attempts = attempts
        self.max_wait = float(max_wait)
        self.min_wait = float(min_wait)
        self.sleep = sleep
        self.on_retry = on_retry
        self._random = (rng or random.Random()).random

    @classmethod
    def from_config(cls, cfg: RetryConfig, **kw) -> RetryPolicy:
        """A policy from ``[retry]`` settings; ``kw`` passes ``sleep`` / ``on_retry`` / ``rng``."""
        return cls(cfg.attempts, cfg.max_wait, cfg.min_wait, **kw)

    def __repr__(self) -> str:
        return f"RetryPolicy(attempts={self.attempts}, max_wait={self.max_wait}, min_wait={self.min_wait})"

    def backoff_bound(self, attempt: int) -> float:
        """The longest backoff after the ``attempt``-th failed try (no Retry-After)."""
        exp = min(max(attempt - 1, 0), 60)  # 2**60 * anything is past any cap already
        return min(self.max_wait, self.min_wait * (2**exp))

    def wait_for(self, exc: BaseException, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th try failed with ``exc``."""
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, (int, float)) and retry_after >= 0:
            return min(float(retry_after), self.max_wait)
        bound = self.backoff_bound(attempt)
        return bound / 2 + self._random() * bound / 2

    # -- tenacity plumbing --------------------------------------------------------------------------

    def _wait(self, state: tenacity.RetryCallState, offset: int = 0) -> float:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if exc is None:  # only reached when retrying on a result, which we never do
            return self.backoff_bound(state.attempt_number + offset)
        return self.wait_for(exc, state.attempt_number + offset)

    def _before_sleep(self, state: tenacity.RetryCallState, offset: int = 0) -> None:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if exc is not None:
            self._note(exc, state.attempt_number + offset, state.upcoming_sleep)

    def _note(self, exc: BaseException, attempt: int, wait: float) -> None:
        # Never the raw exception: a foreign one can hold a signed URL.  Ours are redacted when
        # built, and scrub is a second belt for anything that slipped through.
        text = scrub(str(exc)) if isinstance(exc, SyncerError) else "(details withheld)"
        level = logging.DEBUG if attempt == 1 else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "try %d/%d failed: %s: %s; retrying in %.2fs",
                    attempt, self.attempts, error_class(exc), text, wait)
        if self.on_retry is not None:
            self.on_retry(exc, attempt, wait)

    def retrying(self, retry_if: Callable[[BaseException], bool] = is_retryable, *,
                 tries_done: int = 0) -> tenacity.AsyncRetrying:
        """A tenacity ``AsyncRetrying`` using this policy: ``async for attempt in policy.retrying(): ...``.

        Re-raises the last error itself (never ``tenacity.RetryError``); errors for which ``retry_if``
        is false are raised at once.  ``tries_done``: tries already made (and slept after) outside it.
        """
        import tenacity  # here: a run whose requests all succeed at once never needs it (~4 ms of start-up)

        return tenacity.AsyncRetrying(
            sleep=self.sleep,
            stop=tenacity.stop_after_attempt(self.attempts - tries_done),
            wait=functools.partial(self._wait, offset=tries_done),
            retry=tenacity.retry_if_exception(retry_if),
            before_sleep=functools.partial(self._before_sleep, offset=tries_done),
            reraise=True,
        )

    async def call(
        self,
        fn: Callable[..., Awaitable[T]],
        *args,
        retry_if: Callable[[BaseException], bool] = is_retryable,
        **kw,
    ) -> T:
        """``await fn(*args, **kw)``, tried again on errors ``retry_if`` accepts."""
        # The first try goes straight through: most calls succeed, and setting up tenacity's
        # machinery for each of thousands of downloads costs more CPU than the download's own parsing.
        try:
            return await fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - classified right below
            if self.attempts == 1 or not retry_if(exc):
                raise
            wait = self.wait_for(exc, 1)
            self._note(exc, 1, wait)
        await self.sleep(wait)
        async for attempt in self.retrying(retry_if, tries_done=1):
            with attempt:
                return await fn(*args, **kw)
        raise AssertionError("unreachable: tenacity re-raises or returns")  # pragma: no cover
