"""Executable content: one function per element, dispatched on the model class.

Every function raises :class:`DataModelError` on failure; :meth:`Session.run_block` turns it
into ``error.execution`` and abandons the rest of the block.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .datamodel import DataModelError
from .events import EXTERNAL, SCXML_PROCESSOR, Event
from .model import Assign, Cancel, ExtensionAction, Foreach, If, Log, Raise, Script, Send

if TYPE_CHECKING:
    from .interpreter import Session

_DELAY = re.compile(r"^\s*(\d*\.?\d+)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_delay(text: str) -> float:
    """CSS2-style duration (``"2s"``, ``"500ms"``, ``".5s"``) to seconds."""
    m = _DELAY.match(text)
    if m is None:
        raise DataModelError(f"invalid delay {text!r}")
    unit = m.group(2)
    if unit is None and float(m.group(1)) != 0:
        raise DataModelError(f"delay {text!r} needs a unit (ms or s)")
    return float(m.group(1)) * _UNITS[unit or "s"]


def _raise(session: Session, node: Raise) -> None:
    session.internal.append(Event(node.event, "internal"))


def _log(session: Session, node: Log) -> None:
    value = session.datamodel.evaluate(node.expr) if node.expr is not None else None
    session.runtime.log(session, node.label, value)


def _assign(session: Session, node: Assign) -> None:
    dm = session.datamodel
    if node.expr is not None:
        dm.assign(node.location, node.expr)
    elif node.content is not None:
        dm.assign_value(node.location, node.content.value)
    else:
        dm.assign_value(node.location, None)


def _script(session: Session, node: Script) -> None:
    session.datamodel.execute_script(node.source)


def _if(session: Session, node: If) -> None:
    dm = session.datamodel
    for branch in node.branches:
        if branch.cond is None or dm.evaluate_cond(branch.cond):
            for action in branch.body:
                execute(session, action)
            return


def _foreach(session: Session, node: Foreach) -> None:
    for _ in session.datamodel.foreach(node.array, node.item, node.index):
        for action in node.body:
            execute(session, action)


class SendError(DataModelError):
    """A failed ``<send>``; the error event carries the send id."""

    def __init__(self, message: str, sendid: str) -> None:
        super().__init__(message)
        self.sendid = sendid


def _send(session: Session, node: Send) -> None:
    sendid = node.id if node.id is not None else session.new_id("send.")
    try:
        _send_with_id(session, node, sendid)
    except SendError:
        raise
    except DataModelError as exc:
        raise SendError(str(exc), sendid) from exc


def _send_with_id(session: Session, node: Send, sendid: str) -> None:
    dm = session.datamodel
    if node.idlocation is not None:
        dm.assign_value(node.idlocation, sendid)
    name = node.event
    if name is None and node.eventexpr is not None:
        name = str(dm.evaluate(node.eventexpr))
    target = node.target
    if target is None and node.targetexpr is not None:
        target = str(dm.evaluate(node.targetexpr))
    stype = node.type
    if stype is None:
        stype = str(dm.evaluate(node.typeexpr)) if node.typeexpr is not None else SCXML_PROCESSOR
    explicit_id = node.id is not None or node.idlocation is not None
    delay = 0.0
    if node.delay is not None:
        delay = parse_delay(node.delay)
    elif node.delayexpr is not None:
        delay = parse_delay(str(dm.evaluate(node.delayexpr)))
    if node.content is not None:
        data: Any = session.content_value(node.content)
    else:
        data = session.param_values(node.params, node.namelist)
    processor = session.runtime.processor_for(stype)
    if processor is None:
        raise DataModelError(f"<send> type {stype!r} is not supported")
    processor.check_target(session, target)
    event = Event(
        name or "", EXTERNAL, data, sendid if explicit_id else None, origin=None,
        origintype=None,
    )
    session.runtime.send(session, processor, target, event, delay, sendid, node)


def _cancel(session: Session, node: Cancel) -> None:
    sendid = node.sendid
    if sendid is None and node.sendidexpr is not None:
        sendid = str(session.datamodel.evaluate(node.sendidexpr))
    timer = session.delayed.pop(sendid or "", None)
    if timer is not None:
        timer.cancel()


def _extension(session: Session, node: ExtensionAction) -> None:
    session.runtime.execute_extension(session, node)


_DISPATCH: dict[type, Callable[[Session, Any], None]] = {
    Raise: _raise,
    Log: _log,
    Assign: _assign,
    Script: _script,
    If: _if,
    Foreach: _foreach,
    Send: _send,
    Cancel: _cancel,
    ExtensionAction: _extension,
}


def execute(session: Session, action: Any) -> None:
    _DISPATCH[action.__class__](session, action)
