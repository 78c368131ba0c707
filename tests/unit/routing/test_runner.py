"""StrategyRunner: decisions, executors, virtual and real time, caching."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engine.routing.runner import (
    ACCEPTED,
    ActionResult,
    Fetch,
    InteractionInfo,
    Redirect,
    Retry,
    StrategyRunner,
    Terminate,
)
from engine.routing.statechart import RealTimeClock, SimulatedClock
from engine.routing.strategies import UnknownStrategy

from .support import variant


class Scripted:
    """An executor answering from a script of results per action type (default: done)."""

    def __init__(self, **results: list[ActionResult]) -> None:
        self.results = results
        self.seen: list[Any] = []

    async def execute(self, action: Any, interaction: InteractionInfo) -> ActionResult:
        self.seen.append(action)
        queue = self.results.get(type(action).__name__)
        return queue.pop(0) if queue else ACCEPTED


@pytest.fixture
def routing_model():
    return variant(fallback_queue="q-fallback", endpoints={"Main": "q-main"},
                   max_attempts=3, initial_delay_seconds=30, backoff_multiplier=2,
                   max_delay_seconds=3600, on_give_up="park", park_queue="q-park")


async def test_redirect_queue_decision(catalog, routing_model):
    runner = StrategyRunner(catalog, routing_model)
    outcome = await runner.run("redirect_queue", InteractionInfo("i1", endpoint="Main"))
    assert outcome.actions == (Redirect("q-main", "i1"),)
    assert outcome.final_state == "redirected" and outcome.finished and outcome.error is None
    assert outcome.done_data == {"queue": "q-main", "source": "endpoint"}
    assert outcome.performed == outcome.actions and outcome.deferred is None


async def test_failed_redirect_goes_to_fallback_then_error(catalog, routing_model):
    failed = ActionResult.failed("unknown-queue", "no such queue")
    runner = StrategyRunner(catalog, routing_model, executor=Scripted(Redirect=[failed]))
    outcome = await runner.run("redirect_queue", InteractionInfo("i1", udata={"queue": "q-x"}),
                               event="interaction.present")
    assert outcome.actions == (Redirect("q-x", "i1"), Redirect("q-fallback", "i1"))
    assert [r.status for r in outcome.results] == ["error", "done"]
    assert outcome.performed == (Redirect("q-fallback", "i1"),)
    assert outcome.final_state == "redirected"

    both = Scripted(Redirect=[failed, ActionResult.failed("down")])
    outcome = await StrategyRunner(catalog, routing_model, executor=both).run(
        "redirect_queue", InteractionInfo("i2", udata={"queue": "q-x"}))
    assert outcome.final_state == "error"
    assert "fallback q-fallback failed: down" in outcome.error


async def test_executor_exception_fails_the_action(catalog, routing_model):
    class Broken:
        async def execute(self, action, interaction):
            raise RuntimeError("boom")

    outcome = await StrategyRunner(catalog, routing_model, executor=Broken()).run(
        "redirect_queue", InteractionInfo("i1", udata={"queue": "q"}))
    assert [r.error for r in outcome.results] == ["executor", "executor"]
    assert outcome.final_state == "error"


async def test_undelivered_defers_the_retry_without_waiting(catalog, routing_model):
    runner = StrategyRunner(catalog, routing_model)
    before = time.time()
    outcome = await runner.run("undelivered",
                               InteractionInfo("i1", udata={"undeliveredAttempts": 1}))
    assert time.time() - before < 30  # the 60 s backoff was virtual
    retry = outcome.deferred
    assert isinstance(retry, Retry) and retry.attempt == 2 and retry.delay == 60
    assert retry.interaction_id == "i1" and retry.max_attempts == 3
    assert before + 60 <= retry.at <= time.time() + 60
    assert outcome.final_state is None and not outcome.finished
    assert runner.sessions_running == 0  # the session was dropped


async def test_undelivered_retries_then_parks_on_a_simulated_clock(catalog, routing_model):
    clock = SimulatedClock(1000.0)
    executor = Scripted(Retry=[ActionResult.failed("provider")] * 3)
    runner = StrategyRunner(catalog, routing_model, clock=clock, executor=executor)
    outcome = await runner.run("undelivered", InteractionInfo("i1"))
    retries = [a for a in outcome.actions if isinstance(a, Retry)]
    assert [(r.attempt, r.delay, r.at) for r in retries] == [
        (1, 30, 1030.0), (2, 90, 1090.0), (3, 210, 1210.0)]
    assert outcome.actions[-1] == Redirect("q-park", "i1")
    assert outcome.final_state == "parked"


async def test_undelivered_terminate_and_park_failure(catalog, routing_model):
    model = variant(routing_model, max_attempts=0)
    executor = Scripted(Redirect=[ActionResult.failed("full")])
    outcome = await StrategyRunner(catalog, model, executor=executor).run(
        "undelivered", InteractionInfo("i1"))
    assert outcome.actions == (Redirect("q-park", "i1"), Terminate("undelivered", "i1"))
    assert outcome.final_state == "terminated"


async def test_successful_retry_is_delivered(catalog, routing_model):
    outcome = await StrategyRunner(catalog, routing_model, executor=Scripted()).run(
        "undelivered", InteractionInfo("i1"))
    assert outcome.final_state == "delivered" and len(outcome.actions) == 1


async def test_real_time_clock_waits_for_timers(catalog, routing_model):
    model = variant(routing_model, initial_delay_seconds=0.05, max_delay_seconds=0.05)
    runner = StrategyRunner(catalog, model, clock=RealTimeClock())
    started = time.monotonic()
    outcome = await runner.run("undelivered", InteractionInfo("i1"))
    assert time.monotonic() - started >= 0.04
    assert isinstance(outcome.deferred, Retry) and outcome.deferred.attempt == 1


async def test_concurrent_runs_keep_their_own_actions(catalog, routing_model):
    class Slow:
        async def execute(self, action, interaction):
            await asyncio.sleep(0.001 * (hash(interaction.id) % 3))
            return ActionResult.failed("x") if isinstance(action, Retry) else ACCEPTED

    runner = StrategyRunner(catalog, routing_model, executor=Slow())
    runs = [runner.run("redirect_queue", InteractionInfo(f"r{i}", udata={"queue": f"q{i}"}))
            for i in range(20)]
    runs += [runner.run("undelivered", InteractionInfo(f"u{i}")) for i in range(5)]
    outcomes = await asyncio.gather(*runs)
    for i, outcome in enumerate(outcomes[:20]):
        assert outcome.actions == (Redirect(f"q{i}", f"r{i}"),)
    for outcome in outcomes[20:]:
        assert [a.delay for a in outcome.actions if isinstance(a, Retry)] == [30, 90, 210]
        assert outcome.final_state == "parked"
    assert runner.sessions_running == 0


async def test_documents_are_parsed_once(catalog, routing_model):
    runner = StrategyRunner(catalog, routing_model)
    assert runner.document("redirect_queue") is runner.document("redirect_queue")
    assert runner.document("redirect_queue", {"fallback": "x"}) is not runner.document(
        "redirect_queue")
    runner.set_model(variant(routing_model))  # same text, new model: same parsed document
    assert runner.document("redirect_queue") is runner.document("redirect_queue")


async def test_other_fetches_and_bad_input(catalog, routing_model, tmp_path, xsd_dir):
    from .support import TEMPLATES, strict_catalog

    for template in TEMPLATES.glob("*.scxml.j2"):
        (tmp_path / template.name).write_text(template.read_text())
    (tmp_path / "probe.scxml.j2").write_text(
        '<scxml xmlns="http://www.w3.org/2005/07/scxml" '
        'xmlns:session="http://www.genesyslab.com/modules/session" '
        'xmlns:queue="http://www.genesyslab.com/modules/queue" version="1.0" '
        'datamodel="ecmascript" initial="a"><state id="a">'
        '<transition event="interaction.added" target="b"/></state><state id="b"><onentry>'
        '<session:fetch src="http://x/y" method="GET"><param name="k" expr="1"/>'
        '</session:fetch>'
        '<queue:submit queue="q-sub" interactionidexpr="_event.data.interactionid"/>'
        '</onentry><transition event="queue.submit.done" target="c"/></state>'
        '<final id="c"/></scxml>')
    runner = StrategyRunner(strict_catalog(tmp_path, xsd_dir), routing_model)
    outcome = await runner.run("probe", InteractionInfo("i1"))
    assert outcome.actions[0] == Fetch("http://x/y", "get", {"k": 1})
    assert outcome.actions[1].queue == "q-sub" and outcome.final_state == "c"
    with pytest.raises(UnknownStrategy):
        await runner.run("nope", InteractionInfo("i1"))
    with pytest.raises(ValueError):
        await runner.run("probe", InteractionInfo("i1"), event="interaction.deleted")


def test_published_interaction():
    info = InteractionInfo("i1", queue="q", udata={"endpoint": "keep"}, endpoint="E",
                           tenant="t", media="sms")
    assert info.published() == {"id": "i1", "queue": "q", "media": "sms",
                                 "udata": {"endpoint": "keep", "tenant": "t"}}
