"""Both strategies executed by the interpreter against simulated interactions: every branch."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config.model import Model
from engine.routing.statechart import Runtime, Session, SimulatedHost, parse_document
from engine.routing.strategies import StrategyCatalog

from .support import variant


class Harness:
    def __init__(self, catalog: StrategyCatalog, name: str, model: Model,
                 params: dict[str, str] | None = None) -> None:
        self.doc = parse_document(catalog.render_checked(name, model, params).text)
        self.host = SimulatedHost()
        self.logs: list[Any] = []
        self.rt = Runtime(host=self.host, on_log=lambda _s, _l, v: self.logs.append(v))

    def start(self, udata: dict[str, Any] | None = None, *, iid: str = "ixn-1",
              present: bool = False) -> Session:
        s = self.rt.start(self.doc)
        interaction = {"id": iid, "udata": dict(udata or {})}
        if present:
            self.rt.interaction_present(s, interaction)
        else:
            self.rt.interaction_added(s, interaction)
        return s

    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        return [(r.action, dict(r.attrs)) for r in self.host.pending()]

    def only(self, action: str) -> Any:
        pending = self.host.pending()
        assert [r.action for r in pending] == [action], self.pending()
        return pending[0]


@pytest.fixture
def routing_model() -> Model:
    return variant(
        fallback_queue="q-fallback", user_data_key="queue",
        endpoints={"Main": "q-main", "Support": "q-support"},
        tenant_endpoints={("t1001", "Main"): "q-t1001-main"},
    )


# ---- redirect_queue ----------------------------------------------------------------------


def test_wake_up_with_udata_queue_redirects_there(catalog, routing_model):
    h = Harness(catalog, "redirect_queue", routing_model)
    s = h.start({"queue": "q-sales", "endpoint": "Main"})
    request = h.only("ixn.redirect")
    assert request.queue == "q-sales" and request.interactionid == "ixn-1"
    h.host.succeed(request)
    assert s.final_state_ids == ["redirected"]
    assert s.done_data == {"queue": "q-sales", "source": "udata"}


@pytest.mark.parametrize("endpoint", ["Support", "chat.Support"])
def test_wake_up_with_endpoint_redirects_to_its_queue(catalog, routing_model, endpoint):
    h = Harness(catalog, "redirect_queue", routing_model)
    s = h.start({"endpoint": endpoint}, present=True)
    h.host.succeed(h.only("ixn.redirect"))
    assert s.done_data == {"queue": "q-support", "source": "endpoint"}


def test_tenant_endpoint_wins_over_environment_endpoint(catalog, routing_model):
    h = Harness(catalog, "redirect_queue", routing_model)
    h.start({"endpoint": "Main", "tenant": "t1001"})
    assert h.only("ixn.redirect").queue == "q-t1001-main"
    h2 = Harness(catalog, "redirect_queue", routing_model)
    h2.start({"endpoint": "Main", "tenant": "other"})
    assert h2.only("ixn.redirect").queue == "q-main"


@pytest.mark.parametrize("udata", [{}, {"endpoint": "Unknown"}, {"queue": ""}])
def test_wake_up_with_neither_goes_to_fallback(catalog, routing_model, udata):
    h = Harness(catalog, "redirect_queue", routing_model)
    s = h.start(udata)
    h.host.succeed(h.only("ixn.redirect"))
    assert s.done_data == {"queue": "q-fallback", "source": "fallback"}


def test_custom_user_data_key(catalog, routing_model):
    h = Harness(catalog, "redirect_queue", variant(routing_model, user_data_key="RouteTo"))
    h.start({"queue": "ignored", "RouteTo": "q-custom"})
    assert h.only("ixn.redirect").queue == "q-custom"


def test_user_data_key_and_fallback_params_override_config(catalog, routing_model):
    params = {"userDataKey": "target", "fallback": "q-param"}
    h = Harness(catalog, "redirect_queue", routing_model, params)
    h.start({"target": "q-target"})
    h.host.reject(h.only("ixn.redirect"))
    assert h.only("ixn.redirect").queue == "q-param"


def test_udata_placeholder_fallback_is_read_at_run_time(catalog, routing_model):
    h = Harness(catalog, "redirect_queue", routing_model, {"fallback": "[UDATA.homeQueue]"})
    s = h.start({"homeQueue": "q-home"})
    h.host.succeed(h.only("ixn.redirect"))
    assert s.done_data == {"queue": "q-home", "source": "fallback"}


def test_redirect_error_falls_back(catalog, routing_model):
    h = Harness(catalog, "redirect_queue", routing_model)
    s = h.start({"queue": "q-gone"})
    h.host.reject(h.only("ixn.redirect"), "unknown-queue")
    assert s.active_states() == ["main", "redirectingFallback"]
    request = h.only("ixn.redirect")
    assert request.queue == "q-fallback"
    h.host.succeed(request)
    assert s.final_state_ids == ["redirected"]
    assert s.done_data == {"queue": "q-fallback", "source": "fallback"}
    assert any("q-gone failed (unknown-queue)" in str(line) for line in h.logs)


def test_fallback_error_ends_in_error_with_a_log(catalog, routing_model):
    h = Harness(catalog, "redirect_queue", routing_model)
    s = h.start({"queue": "q-gone"})
    h.host.reject(h.only("ixn.redirect"), "unknown-queue")
    h.host.reject(h.only("ixn.redirect"), "down", "queue service down")
    assert s.final_state_ids == ["error"]
    assert "fallback q-fallback failed: down queue service down" in s.done_data["reason"]
    assert any("fallback q-fallback failed" in str(line) for line in h.logs)


def test_failing_fallback_target_is_not_retried(catalog, routing_model):
    h = Harness(catalog, "redirect_queue", routing_model)
    s = h.start({})
    h.host.reject(h.only("ixn.redirect"))
    assert s.final_state_ids == ["error"]
    assert len(h.host.requests) == 1


def test_no_fallback_and_no_queue_is_an_error_without_actions(catalog, routing_model):
    h = Harness(catalog, "redirect_queue", variant(routing_model, fallback_queue=None))
    s = h.start({"endpoint": "Unknown"})
    assert s.final_state_ids == ["error"] and h.host.requests == []
    assert "no queue" in s.done_data["reason"]


def test_no_fallback_and_redirect_error_is_an_error(catalog, routing_model):
    h = Harness(catalog, "redirect_queue", variant(routing_model, fallback_queue=None))
    s = h.start({"queue": "q-x"})
    h.host.reject(h.only("ixn.redirect"))
    assert s.final_state_ids == ["error"]


@pytest.mark.parametrize("when", ["waiting", "redirecting"])
def test_interaction_deleted_ends_the_session(catalog, routing_model, when):
    h = Harness(catalog, "redirect_queue", routing_model)
    if when == "waiting":
        s = h.rt.start(h.doc)
    else:
        s = h.start({"queue": "q"})
    h.rt.interaction_deleted(s, "ixn-1")
    assert s.final_state_ids == ["deleted"]


def test_deletion_of_another_interaction_is_ignored(catalog, routing_model):
    h = Harness(catalog, "redirect_queue", routing_model)
    s = h.start({"queue": "q"})
    h.rt.interaction_deleted(s, "someone-else")
    assert s.running and s.active_states() == ["main", "redirecting"]


def test_answers_to_other_requests_are_ignored(catalog, routing_model):
    h = Harness(catalog, "redirect_queue", routing_model)
    s = h.start({"queue": "q"})
    h.rt.send_event(s, "ixn.redirect.done", {"requestid": "not-mine"})
    assert s.running


# ---- undelivered -------------------------------------------------------------------------


def _undelivered(catalog: StrategyCatalog, **routing: Any) -> Harness:
    options = {"max_attempts": 4, "initial_delay_seconds": 30, "backoff_multiplier": 2,
               "max_delay_seconds": 100, "on_give_up": "park", "park_queue": "q-park",
               "terminate_reason": "undelivered"}
    options.update(routing)
    return Harness(catalog, "undelivered", variant(**options))


def _retry_params(request: Any) -> dict[str, Any]:
    return dict(request.params)


def test_retries_with_backoff_delays_then_parks(catalog):
    h = _undelivered(catalog)
    s = h.start({})
    clock = h.rt.clock
    for attempt, delay in enumerate([30, 60, 100, 100], start=1):
        assert h.host.pending() == []
        h.rt.advance(delay - 0.01)
        assert h.host.pending() == [], f"attempt {attempt} came early"
        h.rt.advance(0.01)
        request = h.only("session.fetch")
        assert request.attrs["src"] == "http://localhost:8080/nexus/v3/routing/undelivered/retry"
        assert request.attrs["method"] == "post"
        assert _retry_params(request) == {"action": "retry", "interactionid": "ixn-1",
                                          "attempt": attempt, "maxAttempts": 4}
        h.host.reject(request, "provider-down")
    assert clock.now() == pytest.approx(290)
    request = h.only("ixn.redirect")
    assert request.queue == "q-park"
    h.host.succeed(request)
    assert s.final_state_ids == ["parked"]
    assert s.done_data == {"queue": "q-park", "attempts": 4}


def test_delay_follows_the_config_formula(catalog, model):
    policy = variant(model, max_attempts=6, initial_delay_seconds=1.5, backoff_multiplier=3,
                     max_delay_seconds=50).environment.routing.undelivered
    h = Harness(catalog, "undelivered", variant(model, max_attempts=6, initial_delay_seconds=1.5,
                                                backoff_multiplier=3, max_delay_seconds=50))
    h.start({})
    for attempt in range(1, 7):
        before = h.rt.clock.now()
        h.rt.run_until_idle()
        request = h.only("session.fetch")
        assert h.rt.clock.now() - before == pytest.approx(policy.delay(attempt))
        h.host.reject(request)


def test_attempt_counter_comes_from_user_data(catalog):
    h = _undelivered(catalog)
    h.start({"undeliveredAttempts": "2"})
    h.rt.advance(99.99)
    assert h.host.pending() == []
    h.rt.advance(0.01)
    assert _retry_params(h.only("session.fetch"))["attempt"] == 3


def test_successful_retry_ends_delivered(catalog):
    h = _undelivered(catalog)
    s = h.start({})
    h.rt.advance(30)
    h.host.succeed(h.only("session.fetch"))
    assert s.final_state_ids == ["delivered"] and s.done_data == {"attempt": 1}


def test_exhausted_attempts_give_up_at_once(catalog):
    h = _undelivered(catalog)
    s = h.start({"undeliveredAttempts": 4})
    assert h.only("ixn.redirect").queue == "q-park"
    assert s.active_states() == ["main", "parking"]


def test_give_up_terminate(catalog):
    h = _undelivered(catalog, max_attempts=1, on_give_up="terminate",
                     terminate_reason="no-delivery")
    s = h.start({})
    h.rt.advance(30)
    h.host.reject(h.only("session.fetch"))
    request = h.only("ixn.terminate")
    assert request.attrs == {"interactionid": "ixn-1", "reason": "no-delivery"}
    h.host.succeed(request)
    assert s.final_state_ids == ["terminated"]
    assert s.done_data == {"reason": "no-delivery", "attempts": 1}


def test_park_error_falls_back_to_terminate(catalog):
    h = _undelivered(catalog, max_attempts=0)
    s = h.start({})
    h.host.reject(h.only("ixn.redirect"), "queue-full")
    h.host.succeed(h.only("ixn.terminate"))
    assert s.final_state_ids == ["terminated"]
    assert any("park in q-park failed (queue-full)" in str(line) for line in h.logs)


def test_terminate_error_ends_in_error(catalog):
    h = _undelivered(catalog, max_attempts=0, on_give_up="terminate")
    s = h.start({})
    h.host.reject(h.only("ixn.terminate"), "gone", "no such interaction")
    assert s.final_state_ids == ["error"]
    assert s.done_data == {"reason": "terminate failed: gone no such interaction"}


def test_park_without_park_queue_terminates(catalog):
    h = _undelivered(catalog, max_attempts=0, park_queue=None)
    h.start({})
    h.only("ixn.terminate")


def test_params_override_the_policy(catalog):
    h = _undelivered(catalog)
    doc_params = {"maxAttempts": "0", "onGiveUp": "park", "parkQueue": "[UDATA.home]",
                  "reason": "r"}
    h = Harness(catalog, "undelivered", variant(max_attempts=5), doc_params)
    h.start({"home": "q-home"})
    assert h.only("ixn.redirect").queue == "q-home"


def test_deleted_during_backoff_cancels_the_retry(catalog):
    h = _undelivered(catalog)
    s = h.start({})
    h.rt.advance(10)
    h.rt.interaction_deleted(s, "ixn-1")
    assert s.final_state_ids == ["deleted"]
    h.rt.advance(1000)
    assert h.host.requests == []
