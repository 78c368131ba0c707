"""Interpreter behaviour beyond what the IRP subset covers."""

from __future__ import annotations

import pytest

from engine.routing.statechart import (
    DataModelError,
    DocumentError,
    Runtime,
    SimulatedClock,
    parse_document,
)

from .helpers import doc


def start(d, **kw):  # noqa: ANN001, ANN201 - test shorthand
    return Runtime(SimulatedClock(), **kw).start(d)


def test_null_datamodel_in_predicate_and_parallel() -> None:
    d = doc("""
      <parallel id="p">
        <state id="a"><transition cond="In('b')" target="done"/></state>
        <state id="b"/>
      </parallel>
      <final id="done"/>
    """, datamodel="null")
    s = start(d)
    assert s.final_state_ids == ["done"]


def test_null_datamodel_rejects_expressions_with_error_execution() -> None:
    d = doc("""
      <state id="s">
        <onentry><log expr="1 + 1"/></onentry>
        <transition event="error.execution" target="ok"/>
      </state>
      <final id="ok"/>
    """, datamodel="null")
    assert start(d).final_state_ids == ["ok"]


def test_deep_history_restores_atomic_descendants() -> None:
    d = doc("""
      <state id="outer" initial="a">
        <history id="h" type="deep"><transition target="a"/></history>
        <state id="a" initial="a1">
          <state id="a1"><transition event="next" target="a2"/></state>
          <state id="a2"/>
        </state>
        <transition event="leave" target="away"/>
      </state>
      <state id="away"><transition event="back" target="h"/></state>
    """)
    rt = Runtime(SimulatedClock())
    s = rt.start(d)
    rt.send_event(s, "next")
    rt.send_event(s, "leave")
    assert s.active_states() == ["away"]
    rt.send_event(s, "back")
    assert s.active_states() == ["outer", "a", "a2"]


def test_late_binding_assigns_on_first_entry() -> None:
    d = doc("""
      <state id="s0">
        <transition cond="typeof late === 'undefined' || late === undefined" target="s1"/>
      </state>
      <state id="s1">
        <datamodel><data id="late" expr="42"/></datamodel>
        <transition cond="late === 42" target="ok"/>
      </state>
      <final id="ok"/>
    """, extra='binding="late"')
    assert start(d).final_state_ids == ["ok"]


def test_system_variables_are_read_only() -> None:
    d = doc("""
      <datamodel><data id="sid" expr="_sessionid"/></datamodel>
      <state id="s">
        <onentry><assign location="_sessionid" expr="'x'"/></onentry>
        <transition event="error.execution" cond="_sessionid === sid" target="s2"/>
      </state>
      <state id="s2">
        <onentry><assign location="_event" expr="1"/></onentry>
        <transition event="error.execution" target="ok"/>
      </state>
      <final id="ok"/>
    """)
    assert start(d).final_state_ids == ["ok"]


def test_contexts_are_reused_without_leaking_globals() -> None:
    d = doc("""
      <datamodel><data id="n" expr="0"/></datamodel>
      <state id="s">
        <onentry>
          <assign location="n" expr="n + 1"/>
          <assign location="leak" expr="typeof leak === 'undefined' ? 'fresh' : 'leaked'"/>
        </onentry>
        <transition event="stop" target="end"/>
      </state>
      <final id="end"/>
    """)
    rt = Runtime(SimulatedClock())
    first = rt.start(d)
    # `leak` is undeclared: a strict-mode assignment fails and raises error.execution
    assert first.datamodel.evaluate("n") == 1
    rt.send_event(first, "stop")
    second = rt.start(d)
    assert second.datamodel.evaluate("n") == 1
    assert second.datamodel.evaluate("typeof leak") == "undefined"
    assert second.datamodel.evaluate("_sessionid") == second.sessionid


def test_script_globals_do_not_survive_into_the_next_session() -> None:
    d = doc("""
      <script>var counter = (typeof counter === 'number' ? counter : 0) + 1;</script>
      <state id="s"><transition event="stop" target="end"/></state>
      <final id="end"/>
    """)
    rt = Runtime(SimulatedClock())
    for _ in range(3):
        s = rt.start(d)
        assert s.datamodel.evaluate("counter") == 1
        rt.send_event(s, "stop")


def test_unreachable_session_target_is_error_communication() -> None:
    d = doc("""
      <state id="s">
        <onentry><send event="x" target="#_scxml_nobody" id="snd"/></onentry>
        <transition event="error.communication" cond="_event.sendid == 'snd'" target="ok"/>
      </state>
      <final id="ok"/>
    """)
    assert start(d).final_state_ids == ["ok"]


def test_invoke_params_finalize_autoforward_and_done_data() -> None:
    d = doc("""
      <datamodel><data id="got" expr="null"/><data id="fin" expr="0"/></datamodel>
      <state id="s">
        <invoke id="kid" autoforward="true">
          <param name="greeting" expr="'hi'"/>
          <content>
            <scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
              <datamodel><data id="greeting" expr="'none'"/></datamodel>
              <state id="c">
                <transition event="ping" target="cf">
                  <send target="#_parent" event="pong" namelist="greeting"/>
                </transition>
              </state>
              <final id="cf"><donedata><param name="answer" expr="42"/></donedata></final>
            </scxml>
          </content>
          <finalize><assign location="fin" expr="fin + 1"/></finalize>
        </invoke>
        <transition event="pong"><assign location="got" expr="_event.data.greeting"/></transition>
        <transition event="done.invoke.kid" cond="_event.data.answer === 42" target="ok"/>
      </state>
      <final id="ok"/>
    """)
    rt = Runtime(SimulatedClock())
    s = rt.start(d)
    rt.send_event(s, "ping")
    assert s.final_state_ids == ["ok"]
    assert len(rt.sessions) == 0


def test_runaway_eventless_loop_is_aborted() -> None:
    d = doc("""
      <datamodel><data id="n" expr="0"/></datamodel>
      <state id="a"><transition target="b"><assign location="n" expr="n+1"/></transition></state>
      <state id="b"><transition target="a"/></state>
    """)
    s = start(d, max_microsteps=100)
    assert s.done and s.abort_reason is not None


def test_basichttp_loopback_delivers_form_fields() -> None:
    d = doc("""
      <datamodel><data id="v" expr="5"/></datamodel>
      <state id="s">
        <onentry>
          <send event="hello" namelist="v" targetexpr="_ioprocessors.basichttp.location"
                type="http://www.w3.org/TR/scxml/#BasicHTTPEventProcessor"/>
        </onentry>
        <transition event="hello" cond="_event.data.v == 5 &amp;&amp; _event.raw.indexOf('v=5') > 0"
                    target="ok"/>
      </state>
      <final id="ok"/>
    """)
    assert start(d).final_state_ids == ["ok"]


def test_parse_errors_are_reported_with_positions() -> None:
    with pytest.raises(DocumentError) as err:
        parse_document('<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0">'
                       '<state id="a"><transition target="b"/></state></scxml>')
    [diag] = err.value.diagnostics
    assert (diag.line, diag.code) == (1, "unknown-target")


def test_conflicting_transitions_in_parallel_prefer_document_order() -> None:
    d = doc("""
      <datamodel><data id="order" expr="[]"/></datamodel>
      <parallel id="p">
        <state id="a"><transition event="e" target="x">
          <script>order.push('a')</script></transition></state>
        <state id="b"><transition event="e" target="y">
          <script>order.push('b')</script></transition></state>
      </parallel>
      <state id="x"/>
      <state id="y"/>
    """)
    rt = Runtime(SimulatedClock())
    s = rt.start(d)
    rt.send_event(s, "e")
    assert s.active_states() == ["x"]
    assert s.datamodel.evaluate("order") == ["a"]


def test_datamodel_of_a_finished_session_is_not_shared() -> None:
    d = doc('<state id="s"><transition event="stop" target="end"/></state><final id="end"/>')
    rt = Runtime(SimulatedClock())
    first = rt.start(d)
    rt.send_event(first, "stop")
    rt.start(d)  # may reuse the first session's context
    with pytest.raises(DataModelError):
        first.datamodel.evaluate("_sessionid")
