"""Contacts: tenant-scoped matching, normalisation, merge, and history.

Normalisation
    * email: trimmed, lower-cased, must look like ``local@domain.tld`` (at most 320 chars);
    * phone: E.164 (``+`` and 7 to 15 digits, no leading 0): spaces, dashes, dots, slashes
      and parentheses are removed; ``00`` -> ``+``; a national number (no ``+``/``00``) loses
      one trunk ``0`` and gets the default country calling code (parameter, default ``"1"``;
      with ``"1"`` an 11-digit national number starting with 1 is taken as already
      international). Anything else (letters, a ``+`` inside, too short or long) is rejected
      with :class:`InvalidContact`.

Matching and merge (deterministic; never across tenants)
    Only live contacts (``merged_into`` null) match. A contact is looked up by email and by
    phone in the tenant:

    * neither matches: a new contact is created (only when an email or phone is given:
      without one there is nothing to match a later visit on, so none is created);
    * one matches (or both match the same contact): that contact; its empty fields
      (names, nickname, the other identifier) are filled from the new data, never
      overwritten;
    * email and phone match two different contacts: they are merged into the **older** one
      (``created``, then the smaller id): the younger gets ``merged_into``, its
      conversations are moved to the survivor, contacts merged into it are re-pointed, and
      the survivor's empty fields are filled from it.

    The partial unique indexes ``(tenant, email)`` / ``(tenant, phone)`` over live contacts
    make concurrent first contacts safe: a losing insert retries and matches the winner.

Tenants whose config provisions the ``PlatformUCS`` service use :class:`engine.routing.ucs.
UcsClient` instead (see :class:`Contacts`).
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from engine.config.model import Model
from engine.routing.conversation_models import (
    Contact,
    ContactNotFound,
    Conversation,
    HistoryEntry,
    InvalidContact,
    Message,
    Segment,
    from_epoch,
)
from engine.routing.conversation_repo import ConversationRepo
from engine.routing.ucs import UcsClient
from engine.store.conversation_tables import contacts, conversations
from engine.store.db import Store
from engine.store.errors import Conflict
from engine.store.planning import by_key_only

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_PHONE_STRIP_RE = re.compile(r"[\s\-./()\u00a0]")
_E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_MAX_RETRIES = 5


def normalize_email(raw: str | None) -> str | None:
    """Trimmed and lower-cased email; None for None/blank; :class:`InvalidContact` if bad."""
    if raw is None:
        return None
    value = raw.strip().lower()
    if not value:
        return None
    if len(value) > 320 or not _EMAIL_RE.match(value):
        raise InvalidContact(f"invalid email address {raw!r}", field="email")
    return value


def normalize_phone(raw: str | None, default_country: str = "1") -> str | None:
    """E.164 form of a phone number; None for None/blank; :class:`InvalidContact` if bad."""
    if raw is None:
        return None
    return _normalize_phone(raw, default_country)


@functools.lru_cache(maxsize=8192)  # every inbound SMS normalises its sender: most repeat
def _normalize_phone(raw: str, default_country: str) -> str | None:
    value = _PHONE_STRIP_RE.sub("", raw.strip())
    if not value:
        return None
    if not default_country.isdigit() or default_country.startswith("0"):
        raise ValueError(f"invalid default country calling code {default_country!r}")
    if value.startswith("+"):
        digits = value[1:]
    elif value.startswith("00"):
        digits = value[2:]
    else:
        national = value
        if not national.isascii() or not national.isdigit():
            raise InvalidContact(f"invalid phone number {raw!r}", field="phone")
        if default_country == "1" and len(national) == 11 and national.startswith("1"):
            digits = national
        else:
            digits = default_country + national.removeprefix("0")
    candidate = "+" + digits
    if not digits.isascii() or not _E164_RE.match(candidate):
        raise InvalidContact(f"invalid phone number {raw!r}", field="phone")
    return candidate


@dataclass(frozen=True, slots=True)
class ContactData:
    first_name: str | None = None
    last_name: str | None = None
    nickname: str | None = None
    email: str | None = None  # normalised
    phone: str | None = None  # normalised

    @classmethod
    def parse(
        cls,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        nickname: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        default_country: str = "1",
    ) -> ContactData:
        def clean(value: str | None) -> str | None:
            value = (value or "").strip()
            return value[:255] or None

        return cls(
            first_name=clean(first_name),
            last_name=clean(last_name),
            nickname=clean(nickname),
            email=normalize_email(email),
            phone=normalize_phone(phone, default_country),
        )

    def as_attributes(self) -> dict[str, Any]:
        return {
            "firstName": self.first_name,
            "lastName": self.last_name,
            "nickname": self.nickname,
            "email": self.email,
            "phone": self.phone,
        }


class ContactDirectory:
    """The engine's own contact store (tenants without PlatformUCS)."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self.repo = ConversationRepo(store, clock)

    async def _live_by(self, tenant: str, column: str, value: str | None) -> Contact | None:
        if value is None:
            return None
        row = await self.store.fetch_one(
            sa.select(contacts).where(
                contacts.c.tenant == tenant,
                contacts.c[column] == value,
                contacts.c.merged_into.is_(None),
            )
        )
        return None if row is None else Contact.from_row(row)

    async def identify(self, tenant: str, data: ContactData) -> Contact | None:
        """Match (or create, or merge) the contact of ``data`` in ``tenant``; None when the
        data has neither email nor phone."""
        if data.email is None and data.phone is None:
            return None
        for attempt in range(_MAX_RETRIES):
            try:
                async with self.store.transaction():
                    return await self._identify(tenant, data)
            except Conflict:
                if attempt == _MAX_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def _identify(self, tenant: str, data: ContactData) -> Contact:
        now = from_epoch(self.clock())
        by_email = await self._live_by(tenant, "email", data.email)
        by_phone = await self._live_by(tenant, "phone", data.phone)
        if by_email is None and by_phone is None:
            contact_id = str(uuid.uuid4())
            row = await self.store.fetch_one(
                sa.insert(contacts)
                .values(
                    id=contact_id,
                    tenant=tenant,
                    first_name=data.first_name,
                    last_name=data.last_name,
                    nickname=data.nickname,
                    email=data.email,
                    phone=data.phone,
                    created=now,
                    updated=now,
                )
                .returning(*contacts.c)
            )
            assert row is not None
            return Contact.from_row(row)
        if by_email is not None and by_phone is not None and by_email.id != by_phone.id:
            survivor = await self._merge(tenant, by_email, by_phone)
        else:
            survivor = by_email or by_phone
            assert survivor is not None
        return await self._fill(survivor, data)

    async def _merge(self, tenant: str, a: Contact, b: Contact) -> Contact:
        winner, loser = sorted((a, b), key=lambda c: (c.created, c.id))
        now = from_epoch(self.clock())
        await self.store.execute(
            sa.update(contacts)
            .where(contacts.c.id == loser.id, by_key_only(contacts.c.tenant == tenant))
            .values(merged_into=winner.id, updated=now)
        )
        await self.store.execute(
            sa.update(contacts)
            .where(contacts.c.merged_into == loser.id, contacts.c.tenant == tenant)
            .values(merged_into=winner.id, updated=now)
        )
        await self.store.execute(
            sa.update(conversations)
            .where(conversations.c.contact_id == loser.id, conversations.c.tenant == tenant)
            .values(contact_id=winner.id)
        )
        return await self._fill(
            winner,
            ContactData(
                first_name=loser.first_name,
                last_name=loser.last_name,
                nickname=loser.nickname,
                email=loser.email,
                phone=loser.phone,
            ),
        )

    async def _fill(self, contact: Contact, data: ContactData) -> Contact:
        values: dict[str, Any] = {}
        for name in ("first_name", "last_name", "nickname", "email", "phone"):
            new = getattr(data, name)
            if new is not None and getattr(contact, name) is None:
                values[name] = new
        if not values:
            return contact
        values["updated"] = from_epoch(self.clock())
        await self.store.execute(
            sa.update(contacts).where(contacts.c.id == contact.id).values(**values)
        )
        found = await self.get(contact.tenant, contact.id, follow=False)
        assert found is not None
        return found

    async def get(self, tenant: str, contact_id: str, *, follow: bool = True) -> Contact | None:
        """The contact (following ``merged_into`` to the survivor unless ``follow=False``)."""
        for _ in range(8):
            row = await self.store.fetch_one(
                sa.select(contacts).where(
                    contacts.c.id == contact_id, by_key_only(contacts.c.tenant == tenant)
                )
            )
            if row is None:
                return None
            contact = Contact.from_row(row)
            if not follow or contact.merged_into is None:
                return contact
            contact_id = contact.merged_into
        return None

    async def history(self, tenant: str, contact_id: str) -> list[HistoryEntry]:
        """The contact's conversations (oldest first) with their interactions and messages."""
        contact = await self.get(tenant, contact_id)
        if contact is None:
            raise ContactNotFound(f"no contact {contact_id!r}", field="contactId")
        merged = await self.store.fetch_all(
            sa.select(contacts.c.id).where(
                contacts.c.tenant == tenant, contacts.c.merged_into == contact.id
            )
        )
        ids = [contact.id, *(r["id"] for r in merged)]
        convs = await self.repo.conversations_of_contact(tenant, ids)
        cids = [c.id for c in convs]
        segs = await self.repo.segments_of(cids)
        msgs = await self.repo.messages_of(cids)
        return [
            HistoryEntry(
                conversation=c.as_dict(),
                segments=tuple(s.as_dict() for s in segs[c.id]),
                messages=tuple(m.as_dict() for m in msgs[c.id]),
            )
            for c in convs
        ]


class Contacts:
    """Contact matching and history for every tenant: the local :class:`ContactDirectory`,
    or the tenant's UCS (``PlatformUCS`` service) through :class:`UcsClient`.

    ``tenant`` arguments are ccids. ``model`` is the config model or a callable returning
    the current one (config reloads).
    """

    def __init__(
        self,
        store: Store,
        model: Model | Callable[[], Model],
        *,
        clock: Callable[[], float],
        ucs: UcsClient | None = None,
        default_country: str = "1",
    ) -> None:
        self.local = ContactDirectory(store, clock)
        self._model = model
        self.ucs = ucs or UcsClient()
        self.default_country = default_country

    @property
    def model(self) -> Model:
        return self._model() if callable(self._model) else self._model

    def _ucs_url(self, tenant: str) -> str | None:
        config = self.model.tenant_by_ccid(tenant)
        service = config.service("PlatformUCS") if config is not None else None
        return service.url if service is not None and service.url else None

    def parse(self, **fields: str | None) -> ContactData:
        return ContactData.parse(default_country=self.default_country, **fields)

    async def identify(self, tenant: str, data: ContactData) -> str | None:
        """The contact id for ``data`` (created on first contact), None without identity."""
        url = self._ucs_url(tenant)
        if url is not None:
            if data.email is None and data.phone is None:
                return None
            return await self.ucs.identify(url, tenant, data.as_attributes())
        contact = await self.local.identify(tenant, data)
        return None if contact is None else contact.id

    async def history(self, tenant: str, contact_id: str) -> list[dict[str, Any]]:
        url = self._ucs_url(tenant)
        if url is not None:
            return await self.ucs.history(url, tenant, contact_id)
        return [entry.as_dict() for entry in await self.local.history(tenant, contact_id)]

    async def record_interaction(
        self,
        conversation: Conversation,
        segment: Segment,
        messages: list[Message],
    ) -> None:
        """Tell the tenant's UCS about a finished interaction (the local store already has
        it). Raises :class:`UcsUnavailable` when UCS cannot be reached."""
        url = self._ucs_url(conversation.tenant)
        if url is None or conversation.contact_id is None:
            return
        entry = HistoryEntry(
            conversation=conversation.as_dict(),
            segments=(segment.as_dict(),),
            messages=tuple(m.as_dict() for m in messages if m.segment_id in (segment.id, None)),
        )
        await self.ucs.add_interaction(
            url, conversation.tenant, conversation.contact_id, entry.as_dict()
        )

    async def close(self) -> None:
        await self.ucs.close()
