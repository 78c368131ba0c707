"""SMS opt-out keywords, recorded per tenant and sender, checked before every send.

Keywords (the whole message decides; case-insensitive):

* opt out: STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT;
* opt back in: START, UNSTOP.

Matching rule (:func:`classify`): the message is trimmed of whitespace (any Unicode
whitespace, including newlines) and of trailing sentence punctuation (``. ! ? , ; :``
and their repeats, so ``"Stop."``, ``"STOP!!"`` and ``" stop \\n"`` match) and must then be
exactly one keyword. Anything else is not a keyword: ``"stop please"``, ``"don't stop"``,
``"S T O P"``, ``"stopp"``. (A false opt-out silently drops a customer; a missed one is
answered by the next exact STOP, which carriers tell customers to send.)

Scope: STOP (and the other opt-out words) applies to the channel (our number) it was sent to;
STOPALL to every channel of the tenant (stored with channel ``*``); START / UNSTOP opts the
sender back in on that channel, overriding an earlier STOPALL there. The most recent keyword
wins (``opt_outs.updated``). Addresses are normalised: phone numbers to their digits
(``+1 (650) 466-1149`` == ``16504661149``), email addresses to lower case.

:class:`OptOutList` stores the state durably (``opt_outs``) and caches each check in Redis
(``optout:<tenant>:<address>``: the sender's rows, 5 minutes); a write updates the cache after the
database. When the cache is down the database answers.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

import sqlalchemy as sa

from engine.store.errors import CacheError, Conflict
from engine.store.webhook_tables import opt_outs

if TYPE_CHECKING:
    from engine.store.cache import Cache
    from engine.store.db import Store

log = logging.getLogger("nexus.channels.optout")

OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP"})
ALL_CHANNELS = "*"
CACHE_TTL_SECONDS = 300.0

_TRAILING = re.compile(r"[.!?,;:]+$")
_PHONE = re.compile(r"^[+\d][\d\s().\-]*$")


class OptAction(StrEnum):
    OUT = "out"
    IN = "in"


@dataclass(frozen=True, slots=True)
class Keyword:
    keyword: str  # upper case, e.g. 'STOPALL'
    action: OptAction
    all_channels: bool


def classify(text: str | None) -> Keyword | None:
    """The opt-out / opt-in keyword a whole message is, or None."""
    if not text:
        return None
    word = _TRAILING.sub("", text.strip()).strip().upper()
    if word in OPT_OUT_KEYWORDS:
        return Keyword(word, OptAction.OUT, word == "STOPALL")
    if word in OPT_IN_KEYWORDS:
        return Keyword(word, OptAction.IN, False)
    return None


def normalise_address(address: str) -> str:
    value = address.strip()
    if "@" in value:
        return value.lower()
    if _PHONE.match(value):
        return re.sub(r"\D", "", value)
    return value


class OptOutList:
    """The durable opt-out list of every tenant, with a Redis-cached check."""

    def __init__(
        self, store: Store, cache: Cache | None = None, *, ttl: float = CACHE_TTL_SECONDS
    ) -> None:
        self.store = store
        self.cache = cache
        self.ttl = ttl

    @staticmethod
    def _key(tenant: str, address: str) -> str:
        return f"optout:{tenant}:{address}"

    async def record(
        self,
        tenant: str,
        channel_id: str,
        address: str,
        keyword: Keyword,
        *,
        message_id: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Store a keyword of ``address`` sent to ``channel_id`` (upsert)."""
        addr = normalise_address(address)
        channel = ALL_CHANNELS if keyword.all_channels else channel_id
        when = (at or datetime.now(UTC)).astimezone(UTC)
        values = {
            "status": str(keyword.action),
            "keyword": keyword.keyword,
            "message_id": message_id,
            "updated": when,
        }
        where = sa.and_(
            opt_outs.c.tenant == tenant,
            opt_outs.c.channel_id == channel,
            opt_outs.c.address == addr,
        )
        for _ in range(2):  # an insert racing another insert becomes an update
            async with self.store.transaction():
                existing = await self.store.fetch_one(sa.select(opt_outs.c.tenant).where(where))
                try:
                    if existing is None:
                        await self.store.execute(
                            sa.insert(opt_outs).values(
                                tenant=tenant, channel_id=channel, address=addr, **values
                            )
                        )
                    else:
                        await self.store.execute(sa.update(opt_outs).where(where).values(**values))
                except Conflict:
                    continue
            break
        await self._forget(tenant, addr)

    async def handle_inbound(
        self,
        tenant: str,
        channel_id: str,
        address: str,
        text: str | None,
        *,
        message_id: str | None = None,
    ) -> Keyword | None:
        """Record ``text`` when it is a keyword; returns the keyword (None otherwise)."""
        keyword = classify(text)
        if keyword is not None:
            await self.record(tenant, channel_id, address, keyword, message_id=message_id)
        return keyword

    async def is_opted_out(self, tenant: str, channel_id: str, address: str) -> bool:
        """True when the latest keyword of ``address`` covering ``channel_id`` opted out."""
        addr = normalise_address(address)
        rows = await self._rows(tenant, addr)
        relevant = [r for r in rows if r[0] in (channel_id, ALL_CHANNELS)]
        if not relevant:
            return False
        # latest wins; on a tie the opt-out wins (never send to someone who said STOP)
        latest = max(
            relevant,
            key=lambda r: (datetime.fromisoformat(r[2]), r[1] == str(OptAction.OUT)),
        )
        return latest[1] == str(OptAction.OUT)

    async def _rows(self, tenant: str, address: str) -> list[tuple[str, str, str]]:
        """(channel, status, updated ISO) of every row of a sender: cached per sender."""
        key = self._key(tenant, address)
        if self.cache is not None:
            try:
                cached = await self.cache.get(key)
            except CacheError:
                cached = None
            if cached is not None:
                return [tuple(item) for item in json.loads(cached)]  # type: ignore[misc]
        records = await self.store.fetch_all(
            sa.select(opt_outs.c.channel_id, opt_outs.c.status, opt_outs.c.updated).where(
                opt_outs.c.tenant == tenant, opt_outs.c.address == address
            )
        )
        rows = [
            (r["channel_id"], r["status"], _aware(r["updated"]).isoformat()) for r in records
        ]
        if self.cache is not None:
            try:
                await self.cache.set(key, json.dumps(rows), ttl=self.ttl)
            except CacheError:
                log.debug("opt-out cache write failed", exc_info=True)
        return rows

    async def _forget(self, tenant: str, address: str) -> None:
        """Drop the cached rows of a sender after a write."""
        if self.cache is None:
            return
        try:
            await self.cache.delete(self._key(tenant, address))
        except CacheError:
            log.warning("opt-out cache invalidation failed; the entry expires in %ss", self.ttl)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
