"""Genesys actions against the SimulatedHost."""

from __future__ import annotations

from engine.routing.statechart import Runtime, SimulatedClock, SimulatedHost

from .helpers import doc

REDIRECT = doc("""
  <datamodel><data id="ixnid"/><data id="req"/><data id="err"/></datamodel>
  <state id="wait">
    <transition event="interaction.added" target="route">
      <assign location="ixnid" expr="_event.data.interactionid"/>
    </transition>
  </state>
  <state id="route">
    <onentry>
      <ixn:redirect interactionidexpr="ixnid" queue="vq_sales" requestid="req">
        <param name="priority" expr="_genesys.ixn.interactions[ixnid].udata.prio"/>
      </ixn:redirect>
    </onentry>
    <transition event="ixn.redirect.done" cond="_event.data.requestid == req" target="done"/>
    <transition event="error.ixn.redirect" target="failed">
      <assign location="err" expr="_event.data.error"/>
    </transition>
  </state>
  <final id="done"/>
  <state id="failed"/>
""", initial="wait")


def _runtime(host: SimulatedHost) -> Runtime:
    return Runtime(SimulatedClock(), host=host)


def test_redirect_is_requested_with_evaluated_attributes() -> None:
    host = SimulatedHost()
    rt = _runtime(host)
    s = rt.start(REDIRECT)
    assert s.active_states() == ["wait"]
    rt.interaction_added(s, {"id": "i-1", "udata": {"prio": 7}})
    [req] = host.pending("ixn.redirect")
    assert req.action == "ixn.redirect"
    assert req.interactionid == "i-1"
    assert req.queue == "vq_sales"
    assert req.params == {"priority": 7}
    assert req.sessionid == s.sessionid
    assert s.active_states() == ["route"]


def test_redirect_done_event_finishes_the_session() -> None:
    host = SimulatedHost()
    rt = _runtime(host)
    s = rt.start(REDIRECT)
    rt.interaction_added(s, {"id": "i-1", "udata": {"prio": 1}})
    host.succeed(host.pending()[0], {"target": "agent42"})
    assert s.done
    assert s.final_state_ids == ["done"]
    assert host.pending() == []


def test_redirect_error_event_carries_the_error() -> None:
    host = SimulatedHost()
    rt = _runtime(host)
    s = rt.start(REDIRECT)
    rt.interaction_added(s, {"id": "i-1", "udata": {"prio": 1}})
    host.reject(host.pending()[0], "noqueue", "queue vq_sales does not exist")
    assert s.active_states() == ["failed"]
    assert s.datamodel.evaluate("err") == "noqueue"


def test_auto_host_answers_after_the_macrostep() -> None:
    host = SimulatedHost(auto="done")
    rt = _runtime(host)
    s = rt.start(REDIRECT)
    rt.interaction_added(s, {"id": "i-9", "udata": {"prio": 1}})
    assert s.final_state_ids == ["done"]
    assert [a.action for a in host.actions] == ["ixn.redirect"]


def test_no_host_means_error_event() -> None:
    rt = Runtime(SimulatedClock())
    s = rt.start(REDIRECT)
    rt.interaction_added(s, {"id": "i-1", "udata": {"prio": 1}})
    assert s.active_states() == ["failed"]
    assert s.datamodel.evaluate("err") == "nohost"


INTERACTIONS = doc("""
  <datamodel><data id="seen" expr="[]"/><data id="count" expr="0"/></datamodel>
  <state id="run">
    <transition event="interaction.added interaction.present">
      <assign location="count" expr="Object.keys(_genesys.ixn.interactions).length"/>
      <script>seen.push(_genesys.ixn.interactions[_event.data.interactionid].udata.name)</script>
    </transition>
    <transition event="interaction.deleted"
                cond="!(_event.data.interactionid in _genesys.ixn.interactions)" target="gone"/>
  </state>
  <state id="gone">
    <onentry>
      <ixn:terminate interactionid="i-2" reason="cleanup"/>
      <queue:submit queueexpr="'vq_' + 'fr'" interactionid="i-1"/>
      <session:fetch srcexpr="'http://crm/lookup?id=' + seen[0]" method="get"/>
    </onentry>
    <transition event="session.fetch.done" target="fetched"/>
  </state>
  <final id="fetched"/>
""")


def test_interactions_are_published_and_removed() -> None:
    host = SimulatedHost()
    rt = _runtime(host)
    s = rt.start(INTERACTIONS, interactions=[{"id": "i-0", "udata": {"name": "zero"}}])
    assert s.datamodel.evaluate("Object.keys(_genesys.ixn.interactions)") == ["i-0"]
    rt.interaction_added(s, {"id": "i-1", "udata": {"name": "ann"}})
    rt.interaction_present(s, {"id": "i-2", "udata": {"name": "bob"}})
    assert s.datamodel.evaluate("count") == 3
    assert s.datamodel.evaluate("seen") == ["ann", "bob"]
    rt.interaction_deleted(s, "i-1")
    assert s.active_states() == ["gone"]
    assert s.datamodel.evaluate("Object.keys(_genesys.ixn.interactions).sort()") == ["i-0", "i-2"]
    terminate, submit, fetch = host.actions
    assert (terminate.action, terminate.interactionid, terminate.attrs["reason"]) == (
        "ixn.terminate", "i-2", "cleanup")
    assert (submit.action, submit.queue, submit.interactionid) == ("queue.submit", "vq_fr", "i-1")
    assert fetch.action == "session.fetch"
    assert fetch.attrs == {"src": "http://crm/lookup?id=ann", "method": "get"}
    host.succeed(fetch, {"content": {"tier": "gold"}})
    assert s.final_state_ids == ["fetched"]


def test_missing_runtime_value_raises_error_execution() -> None:
    d = doc("""
      <state id="s">
        <onentry><ixn:redirect interactionidexpr="undefined" queue="q"/></onentry>
        <transition event="error.execution" target="ok"/>
      </state>
      <final id="ok"/>
    """)
    host = SimulatedHost()
    s = Runtime(SimulatedClock(), host=host).start(d)
    assert s.final_state_ids == ["ok"]
    assert host.actions == []


def test_host_exception_answers_with_error_event() -> None:
    class Broken:
        def request(self, session: object, request: object) -> None:
            raise RuntimeError("down")

    d = doc("""
      <state id="s">
        <onentry><queue:submit queue="q"/></onentry>
        <transition event="error.queue.submit" cond="_event.data.description == 'down'"
                    target="ok"/>
      </state>
      <final id="ok"/>
    """)
    s = Runtime(SimulatedClock(), host=Broken()).start(d)
    assert s.final_state_ids == ["ok"]
