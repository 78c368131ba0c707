"""When the durable queues' background loops run: on a nudge or when work is due, not on a
fast blind poll.

The outbound reply sender, the campaign sender and the webhook dispatcher each run one loop
per process (:class:`QueueLoop`). A loop runs a *round* (claim due rows and work on them)

* at start (rows left by a crash or a stop are due again);
* right after a round that took something (more may be waiting);
* on a **local nudge**: work was queued in this process (:meth:`Wakeup.notify`);
* on a **cross-process nudge**: a message on the queue's Redis channel (``bg:<name>``).
  :meth:`Wakeup.notify` publishes one when this process's loop cannot take the new work at
  once (it is busy with a round, or stopped), so that an idle process takes it now; at most
  one publish per :data:`PUBLISH_GAP` seconds, and one more after the gap for the nudges
  that arrived within it;
* when the **next due time** it read from the store arrives (a retry's ``next_attempt_at``,
  the end of a lease a dead process left behind);
* on the **safety poll**: nudges are fire-and-forget (lost while Redis is down, or when the
  process that queued the work dies before its loop ran), so an idle loop still asks the
  store when the next row is due (one small indexed query) every ``idle_interval`` seconds.

A round that took nothing although a row was due (another process holds it: a claim in
flight, a campaign sender's lock) is retried after ``poll_interval`` seconds, doubling up to
``idle_interval`` while that lasts. Nothing of this is needed for correctness: the claims in
the store keep every row single; the wake-ups only decide how soon a loop looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

from engine.store.errors import CacheError, StoreError

if TYPE_CHECKING:
    from engine.store.cache import Cache

log = logging.getLogger("nexus.messaging.wakeup")

#: at most one cross-process nudge per queue and process in this many seconds
PUBLISH_GAP = 0.05
#: default safety poll of an idle loop (seconds): only lost nudges wait that long
IDLE_INTERVAL = 5.0
#: a listener that cannot subscribe tries again after this many seconds (doubling up to 10 s)
RESUBSCRIBE_DELAY = 0.5


def channel_of(name: str) -> str:
    """The Redis channel (without the cache prefix) of the queue ``name``."""
    return f"bg:{name}"


class Wakeup:
    """Wakes one queue's loop in this process, and through Redis in the others (see the
    module docstring). Without a cache it is a local event only."""

    def __init__(self, cache: Cache | None, name: str) -> None:
        self.cache = cache
        self.channel = channel_of(name)
        self._origin = uuid.uuid4().hex  # our own nudges come back: ignore them
        self._event = asyncio.Event()
        self._waiting = False  # the loop is asleep in wait(): a local nudge is enough
        self._pending = False  # a cross-process nudge waits for the next publish slot
        self._publisher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        #: set while the listener is subscribed (nudges from other processes arrive)
        self.subscribed = asyncio.Event()

    # -- nudging -------------------------------------------------------------------------

    def set(self) -> None:
        """Wake this process's loop only (it will look at the store itself)."""
        self._event.set()

    def notify(self) -> None:
        """Work was queued: wake this process's loop, and the other processes' too when
        this one cannot take it at once."""
        self._event.set()
        if self._waiting or self.cache is None:
            return
        self._pending = True
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(
                self._publish_pending(), name=f"nudge-{self.channel}"
            )

    async def _publish_pending(self) -> None:
        while self._pending:
            self._pending = False
            await self.publish()
            await asyncio.sleep(PUBLISH_GAP)

    async def publish(self) -> None:
        """Nudge the loops of the other processes now (best effort)."""
        if self.cache is None:
            return
        try:
            await self.cache.publish(self.channel, self._origin)
        except (CacheError, OSError) as exc:
            log.debug("nudge on %s not published: %s", self.channel, exc)

    # -- the loop's side -----------------------------------------------------------------

    @property
    def asleep(self) -> bool:
        """The loop waits in :meth:`wait` with no nudge pending."""
        return self._waiting and not self._event.is_set()

    def clear(self) -> None:
        """Forget earlier nudges: called right before a round, so that a nudge arriving
        during the round makes the loop run another one."""
        self._event.clear()

    async def wait(self, timeout: float) -> bool:
        """Sleep until nudged (True) or ``timeout`` seconds passed (False)."""
        if self._event.is_set():
            return True
        self._waiting = True
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await self._event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting = False

    # -- the cross-process listener ------------------------------------------------------

    def start(self) -> None:
        """Listen for the other processes' nudges (in the background)."""
        if self.cache is None or (self._listener is not None and not self._listener.done()):
            return
        self._listener = asyncio.create_task(self._listen(), name=f"listen-{self.channel}")

    async def stop(self) -> None:
        for task in (self._listener, self._publisher):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listener = self._publisher = None

    async def _listen(self) -> None:
        assert self.cache is not None
        delay = RESUBSCRIBE_DELAY
        while True:
            try:
                subscription = await self.cache.subscribe(self.channel)
            except (CacheError, OSError) as exc:
                log.debug("cannot subscribe to %s (%s); the safety poll covers", self.channel,
                          exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = RESUBSCRIBE_DELAY
            self.subscribed.set()
            self._event.set()  # nudges sent before the subscription was confirmed: look now
            try:
                async for message in subscription:
                    if message.data != self._origin:
                        self._event.set()
            finally:
                self.subscribed.clear()
                await subscription.close()
            await asyncio.sleep(delay)  # closed under us (the cache closed): not in a spin


Work = Callable[[], Awaitable[int]]
DueIn = Callable[[], Awaitable[float | None]]


class QueueLoop:
    """One queue's background loop (see the module docstring).

    ``work()`` runs one round (claims and works on due rows) and returns how many it took;
    ``due_in()`` returns the seconds until the next row is due (0 or less: due now; None:
    none waits).
    Both may raise: a failed round is retried after ``poll_interval`` (doubling up to
    ``idle_interval`` while it keeps failing); a failed ``due_in`` counts as "none known"."""

    def __init__(
        self,
        name: str,
        wakeup: Wakeup,
        work: Work,
        due_in: DueIn,
        *,
        poll_interval: float,
        idle_interval: float,
        logger: logging.Logger,
    ) -> None:
        self.name = name
        self.wakeup = wakeup
        self._work = work
        self._due_in = due_in
        self.poll_interval = poll_interval
        self.idle_interval = max(idle_interval, poll_interval)
        self.log = logger
        self.stopping = asyncio.Event()
        self._misses = 0  # rounds in a row that took nothing although a row was due

    def stop(self) -> None:
        self.stopping.set()
        self.wakeup.set()

    async def run(self) -> None:
        run_round = True
        while not self.stopping.is_set():
            after_round = run_round
            if run_round:
                self.wakeup.clear()
                taken = await self._guarded_round()
                if taken is None:  # failed: try again soon, less often while it keeps failing
                    await self.wakeup.wait(self._retry_delay())
                    continue
                if taken:
                    self._misses = 0
                    continue
            delay, due = await self._next_wait(after_round)
            if delay <= 0:
                run_round = True
                continue
            run_round = await self.wakeup.wait(delay) or due

    async def _guarded_round(self) -> int | None:
        try:
            return await self._work()
        except StoreError as exc:
            self.log.warning("%s: store error: %s", self.name, exc)
        except Exception:  # noqa: BLE001 - the loop must survive any one round
            self.log.exception("%s round failed", self.name)
        return None

    async def _next_wait(self, after_round: bool) -> tuple[float, bool]:
        """(seconds to sleep, whether a round is due when they have passed)."""
        try:
            seconds = await self._due_in()
        except StoreError as exc:
            self.log.warning("%s: store error: %s", self.name, exc)
            seconds = None
        except Exception:  # noqa: BLE001 - the safety poll looks again
            self.log.exception("%s: cannot tell when work is due", self.name)
            seconds = None
        if seconds is None:
            self._misses = 0
            return self.idle_interval, False
        if seconds > 0:
            self._misses = 0
            return min(seconds, self.idle_interval), seconds <= self.idle_interval
        if not after_round:
            return 0.0, True  # found due by the check: take it now
        return self._retry_delay(), True  # due, yet the round took nothing: held elsewhere

    def _retry_delay(self) -> float:
        delay = min(self.poll_interval * 2 ** min(self._misses, 16), self.idle_interval)
        self._misses += 1
        return delay


def seconds_until(due: datetime | None, now: datetime) -> float | None:
    """``due - now`` in seconds (None when nothing is due at all)."""
    return None if due is None else (due - now).total_seconds()
