"""The outbound retry policy: exponential backoff with jitter, driven by the model's
``environment.delivery`` (timeoutSeconds, maxAttempts, initialDelaySeconds,
backoffMultiplier, maxDelaySeconds, jitter).

Delay before retry ``n`` (1-based; retry 1 follows attempt 1)::

    base(n) = min(initial * multiplier ** (n - 1), max_delay)

* ``jitter`` mode (the default, "full jitter over a fraction"): ``base * (1 - j * u)`` with
  ``u`` uniform in [0, 1) and ``j`` the delivery's ``jitter`` fraction: ``j = 0`` is no
  jitter, ``j = 1`` is AWS's "full jitter" (uniform in (0, base]).
* ``decorrelated`` mode: ``min(max_delay, initial + u * (3 * previous - initial))``.

A provider's ``Retry-After`` is honoured: the delay is at least that long.

:func:`compute_delay` is pure (the random draw is a parameter); :func:`send_with_retry` runs
a send with this policy, with injectable ``sleep`` and ``rng`` so tests never sleep.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from engine.channels.base import PermanentSendError, TransientSendError
from engine.config.model import Delivery

T = TypeVar("T")
JitterMode = Literal["fraction", "decorrelated"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.1
    mode: JitterMode = "fraction"
    timeout: float = 10.0

    @classmethod
    def from_delivery(cls, delivery: Delivery, mode: JitterMode = "fraction") -> RetryPolicy:
        return cls(
            max_attempts=int(delivery.max_attempts),
            initial_delay=float(delivery.initial_delay_seconds),
            multiplier=float(delivery.backoff_multiplier),
            max_delay=float(delivery.max_delay_seconds),
            jitter=float(delivery.jitter),
            mode=mode,
            timeout=float(delivery.timeout_seconds),
        )

    def base_delay(self, retry: int) -> float:
        exponent = max(0, retry - 1)
        try:
            raw = self.initial_delay * self.multiplier**exponent
        except OverflowError:
            raw = self.max_delay
        return min(raw, self.max_delay)


def compute_delay(
    policy: RetryPolicy,
    retry: int,
    u: float,
    *,
    previous: float | None = None,
    retry_after: float | None = None,
) -> float:
    """Seconds before retry number ``retry`` (1-based) for the random draw ``u`` in [0, 1)."""
    if not 0.0 <= u <= 1.0:
        raise ValueError("u must be in [0, 1]")
    if policy.mode == "decorrelated":
        last = policy.initial_delay if previous is None else previous
        high = max(policy.initial_delay, 3.0 * last)
        delay = min(policy.max_delay, policy.initial_delay + u * (high - policy.initial_delay))
    else:
        base = policy.base_delay(retry)
        delay = base * (1.0 - min(1.0, max(0.0, policy.jitter)) * u)
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return max(0.0, delay)


class DeliveryGaveUp(PermanentSendError):
    """Every attempt failed transiently: the message is undeliverable for good."""

    def __init__(self, last_error: TransientSendError, attempts: int) -> None:
        super().__init__(
            f"gave up after {attempts} attempts: {last_error}",
            status_code=last_error.status_code,
        )
        self.last_error = last_error
        self.attempts = attempts


RetryHook = Callable[[int, TransientSendError, float], Awaitable[None] | None]


async def send_with_retry(
    send: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
    on_retry: RetryHook | None = None,
) -> T:
    """Call ``send(attempt)`` until it succeeds, fails permanently or runs out of attempts.

    :class:`PermanentSendError` propagates at once; :class:`TransientSendError` is retried
    after :func:`compute_delay`; after ``max_attempts`` tries :class:`DeliveryGaveUp` is
    raised (a :class:`PermanentSendError`). ``on_retry(attempt, error, delay)`` runs before
    each sleep.
    """
    previous: float | None = None
    attempts = max(1, policy.max_attempts)
    for attempt in range(1, attempts + 1):
        try:
            return await send(attempt)
        except TransientSendError as exc:
            if attempt >= attempts:
                raise DeliveryGaveUp(exc, attempt) from exc
            delay = compute_delay(
                policy, attempt, rng(), previous=previous, retry_after=exc.retry_after
            )
            previous = delay
            if on_retry is not None:
                result = on_retry(attempt, exc, delay)
                if result is not None:
                    await result
            await sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
