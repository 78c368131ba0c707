"""Clocks and delayed sends in virtual and real time."""

from __future__ import annotations

import asyncio

from engine.routing.statechart import RealTimeClock, Runtime, SimulatedClock

from .helpers import doc


def test_simulated_clock_fires_in_time_order() -> None:
    clock = SimulatedClock()
    fired: list[tuple[float, str]] = []
    clock.call_later(2, lambda: fired.append((clock.now(), "b")))
    clock.call_later(1, lambda: fired.append((clock.now(), "a")))
    late = clock.call_later(5, lambda: fired.append((clock.now(), "late")))
    clock.call_later(2, lambda: fired.append((clock.now(), "c")))
    assert clock.advance(2) == 3
    assert fired == [(1, "a"), (2, "b"), (2, "c")]
    assert clock.now() == 2
    late.cancel()
    assert clock.next_due() is None
    assert not clock.run_next()


def test_timers_scheduled_by_callbacks_fire_in_the_same_advance() -> None:
    clock = SimulatedClock()
    fired: list[float] = []
    clock.call_later(1, lambda: clock.call_later(1, lambda: fired.append(clock.now())))
    clock.advance(3)
    assert fired == [2]
    assert clock.now() == 3


DELAYED = doc("""
  <datamodel><data id="n" expr="0"/></datamodel>
  <state id="s">
    <onentry>
      <send event="tick" delay="10s" id="t1"/>
      <send event="never" delayexpr="'20s'" id="t2"/>
      <send event="tick" delay="500ms"/>
      <cancel sendid="t2"/>
    </onentry>
    <transition event="tick"><assign location="n" expr="n + 1"/></transition>
    <transition event="never" target="bad"/>
  </state>
  <final id="bad"/>
""")


def test_delayed_send_runs_in_virtual_time() -> None:
    rt = Runtime(SimulatedClock())
    s = rt.start(DELAYED)
    assert s.datamodel.evaluate("n") == 0
    rt.advance(0.5)
    assert s.datamodel.evaluate("n") == 1
    rt.advance(9.4)
    assert s.datamodel.evaluate("n") == 1
    rt.advance(0.1)
    assert s.datamodel.evaluate("n") == 2
    assert rt.run_until_idle()
    assert s.active_states() == ["s"]  # the cancelled send never arrived


def test_delayed_sends_are_dropped_when_the_session_ends() -> None:
    clock = SimulatedClock()
    rt = Runtime(clock)
    s = rt.start(DELAYED)
    rt.cancel(s)
    assert s.done and s.final_state_ids == []
    assert clock.next_due() is None


async def test_real_time_clock_delivers_delayed_send() -> None:
    d = doc("""
      <state id="s">
        <onentry><send event="go" delay="20ms"/></onentry>
        <transition event="go" target="end"/>
      </state>
      <final id="end"/>
    """)
    rt = Runtime(RealTimeClock())
    s = rt.start(d)
    assert not s.done
    for _ in range(100):
        if s.done:
            break
        await asyncio.sleep(0.01)
    assert s.final_state_ids == ["end"]
