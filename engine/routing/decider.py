"""How the router asks a routing strategy what to do with an interaction.

The router depends only on :class:`StrategyDecider`; :class:`RunnerDecider` adapts the SCXML
``StrategyRunner`` (``engine/routing/runner.py``: ``await runner.run(name, interaction,
params=None, event=...) -> StrategyOutcome(actions=[...], final_state, error)``) to it.
Actions coming back from any decider are normalised by :func:`coerce_action`, so the runner's
own action classes (``Redirect(queue)``, ``Terminate(reason)``, ``Retry(at, attempt)``,
``Submit(queue)``) work as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

log = logging.getLogger("nexus.routing.decider")


@dataclass(frozen=True, slots=True)
class InteractionInfo:
    """What a strategy sees of an interaction (``_genesys.ixn.interactions[id]``)."""

    id: str
    queue: str
    udata: Mapping[str, Any]
    endpoint: str | None = None
    tenant: str | None = None  # the tenant's config name (as udata.tenant)
    media: str = "chat"
    conversation_id: str | None = None
    last_agent: str | None = None
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Redirect:
    queue: str


@dataclass(frozen=True, slots=True)
class Submit:
    queue: str


@dataclass(frozen=True, slots=True)
class Terminate:
    reason: str = "terminated"


@dataclass(frozen=True, slots=True)
class Retry:
    at: float | datetime  # epoch seconds or an aware datetime
    attempt: int = 1


Action = Redirect | Submit | Terminate | Retry


class StrategyDecider(Protocol):
    async def decide(self, strategy_name: str, interaction: InteractionInfo) -> Sequence[Any]:
        """Run the named strategy for the interaction; return its actions."""
        ...


def coerce_action(action: Any) -> Action | None:
    """One of this module's actions, from ours or from any object of the same shape (class
    name Redirect/Submit/Terminate/Retry with the same attributes). None if unknown."""
    if isinstance(action, Redirect | Submit | Terminate | Retry):
        return action
    kind = type(action).__name__
    if kind == "Redirect":
        return Redirect(str(action.queue))
    if kind == "Submit":
        return Submit(str(action.queue))
    if kind == "Terminate":
        return Terminate(str(getattr(action, "reason", None) or "terminated"))
    if kind == "Retry":
        return Retry(action.at, int(getattr(action, "attempt", 1)))
    log.warning("ignoring unknown strategy action %r", action)
    return None


@dataclass
class FakeDecider:
    """A decider answering from a table (strategy name -> actions, or a callable of the
    interaction): for tests and for running without SCXML. Records every call."""

    answers: dict[str, Sequence[Any] | Callable[[InteractionInfo], Sequence[Any]]] = field(
        default_factory=dict
    )
    calls: list[tuple[str, InteractionInfo]] = field(default_factory=list)

    async def decide(self, strategy_name: str, interaction: InteractionInfo) -> Sequence[Any]:
        self.calls.append((strategy_name, interaction))
        answer = self.answers.get(strategy_name, ())
        return answer(interaction) if callable(answer) else list(answer)


def runner_interaction(info: InteractionInfo) -> Any:
    """The runner's own ``InteractionInfo`` for ours (``engine.routing.runner``)."""
    from engine.routing.runner import InteractionInfo as RunnerInteraction

    return RunnerInteraction(
        id=info.id,
        queue=info.queue,
        udata=dict(info.udata),
        endpoint=info.endpoint,
        tenant=info.tenant,
        media=info.media,
    )


class RunnerDecider:
    """Adapts a ``StrategyRunner`` (duck-typed: ``await run(name, interaction, params=None,
    event=...)`` returning an object with ``actions`` and ``error``) to
    :class:`StrategyDecider`. ``make_interaction`` turns our :class:`InteractionInfo` into the
    runner's own interaction type (default: passed as is)."""

    def __init__(
        self,
        runner: Any,
        make_interaction: Callable[[InteractionInfo], Any] | None = None,
        *,
        event: str = "interaction.added",
        params: Callable[[str, InteractionInfo], Mapping[str, Any] | None] | None = None,
    ) -> None:
        self.runner = runner
        self.make_interaction = make_interaction or runner_interaction
        self.event = event
        self.params = params

    async def decide(self, strategy_name: str, interaction: InteractionInfo) -> Sequence[Any]:
        params = self.params(strategy_name, interaction) if self.params else None
        outcome = await self.runner.run(
            strategy_name, self.make_interaction(interaction), params=params, event=self.event
        )
        error = getattr(outcome, "error", None)
        if error:
            log.warning("strategy %s on %s: %s", strategy_name, interaction.id, error)
        return list(getattr(outcome, "actions", ()) or ())
