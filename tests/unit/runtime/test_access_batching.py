"""Access lines written in batches: whole lines, at most PIPE_BUF bytes a write, none lost."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.observability import logging as nexus_log

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def writes() -> list[str]:
    """What each write of a batch put out, in order."""
    return []


@pytest.fixture
def access_buffer(monkeypatch, writes) -> nexus_log.AccessLineBuffer:
    """The process's access-line buffer, writing into ``writes``."""
    buffer = nexus_log.AccessLineBuffer(write=writes.append)
    monkeypatch.setattr(nexus_log, "_ACCESS_BUFFER", buffer)
    return buffer


def _only_nexus_handler(monkeypatch) -> None:
    """Only the Nexus JSON handler on the root logger, as in a served worker (the fast path).

    Called in the test itself: pytest adds its capture handlers after the fixtures ran.
    """
    handler = nexus_log.configure_logging("json")
    monkeypatch.setattr(logging.root, "handlers", [handler])
    assert nexus_log._direct_handler() is handler


def _line(i: int, width: int = 0) -> str:
    return json.dumps({"n": i, "pad": "é" * width}, ensure_ascii=False) + "\n"


def _write_sizes(writes: list[str]) -> list[int]:
    return [len(text.encode()) for text in writes]


async def _until_written(writes: list[str]) -> None:
    for _ in range(5000):  # the timer fires on a coming loop iteration
        if writes:
            return
        await asyncio.sleep(0.001)


async def test_lines_of_a_window_go_out_in_one_write(writes: list[str]) -> None:
    buffer = nexus_log.AccessLineBuffer(delay=0.0, write=writes.append)
    lines = [_line(i) for i in range(5)]
    for line in lines:
        buffer.add(line)
    assert writes == []  # nothing written while the window is open
    await _until_written(writes)
    assert writes == ["".join(lines)]


async def test_writes_are_whole_lines_of_at_most_pipe_buf_bytes(writes: list[str]) -> None:
    buffer = nexus_log.AccessLineBuffer(delay=3600, write=writes.append)
    lines = [_line(i, width=i % 700) for i in range(300)]  # 2-byte characters, up to ~1.4 KB
    lines.insert(150, _line(-1, width=5000))  # one line larger than PIPE_BUF goes out alone
    for line in lines:
        buffer.add(line)
    buffer.flush()
    assert "".join(writes) == "".join(lines)  # every line, in order
    for text in writes:
        assert text.endswith("\n")
        assert len(text.encode()) <= nexus_log.PIPE_BUF or text.count("\n") == 1
    assert _write_sizes(writes).count(max(_write_sizes(writes))) == 1
    assert _line(-1, width=5000) in writes
    # Batches are full: each one went out because the next line would not fit.
    for text, following in zip(writes, writes[1:], strict=False):
        next_line = following.splitlines(keepends=True)[0]
        assert len(text.encode()) + len(next_line.encode()) > nexus_log.PIPE_BUF


def test_without_an_event_loop_a_line_is_written_at_once(writes: list[str]) -> None:
    buffer = nexus_log.AccessLineBuffer(delay=3600, write=writes.append)
    buffer.add(_line(1))
    buffer.add(_line(2))
    assert writes == [_line(1), _line(2)]


async def test_a_timer_of_a_closed_loop_does_not_hold_lines_back(writes: list[str]) -> None:
    buffer = nexus_log.AccessLineBuffer(delay=3600, write=writes.append)

    def in_another_loop() -> None:
        async def add() -> None:
            buffer.add(_line(1))

        loop = asyncio.new_event_loop()
        loop.run_until_complete(add())  # the loop closes with the line's timer still armed
        loop.close()

    await asyncio.to_thread(in_another_loop)
    assert writes == []
    buffer.delay = 0.0
    buffer.add(_line(2))  # this loop arms its own timer
    await _until_written(writes)
    assert writes == [_line(1) + _line(2)]


async def test_other_records_flush_the_access_lines_first(capsys, monkeypatch) -> None:
    _only_nexus_handler(monkeypatch)
    # Both kinds of lines to the captured stdout, the access line held back by a long window.
    monkeypatch.setattr(nexus_log, "_ACCESS_BUFFER", nexus_log.AccessLineBuffer(delay=3600))
    capsys.readouterr()
    nexus_log.access_line(trace_id="ab" * 16, method="GET", route="health", path="/health",
                          query="", status=200, started=time.perf_counter(), remote="10.0.0.1")
    assert capsys.readouterr().out == ""  # buffered
    logging.getLogger("nexus.test").warning("after the request")
    nexus_log.flush_access_lines()
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["logger"] for r in records] == ["nexus.access", "nexus.test"]


async def test_flush_access_lines_writes_what_is_buffered(writes, access_buffer,
                                                          monkeypatch) -> None:
    _only_nexus_handler(monkeypatch)
    for status in (200, 404, 500):
        nexus_log.access_line(trace_id="cd" * 16, method="POST", route="r", path="/p",
                              query="", status=status, started=time.perf_counter(), remote="")
    assert writes == []
    nexus_log.flush_access_lines()
    (batch,) = writes
    assert [json.loads(line)["status"] for line in batch.splitlines()] == [200, 404, 500]


def test_text_access_line_is_what_the_text_formatter_gives(capsys, monkeypatch) -> None:
    handler = nexus_log.configure_logging("text")
    try:
        fields = {"trace_id": "ef" * 16, "method": "GET", "route": "health", "path": "/health",
                  "query": "a=1", "status": 200, "started": time.perf_counter(),
                  "remote": "10.0.0.2"}
        monkeypatch.setattr(logging.root, "handlers", [handler])
        nexus_log.access_line(**fields)  # the direct path
        monkeypatch.setattr(logging.root, "handlers", [handler, logging.NullHandler()])
        nexus_log.access_line(**fields)  # through logging and the formatter
    finally:
        nexus_log.configure_logging("json")
    direct, via_logging = capsys.readouterr().out.splitlines()

    def without_timing(line: str) -> str:  # the timestamp and duration differ between the two
        head, _, tail = line.partition(" ")
        return tail.split("duration_ms=")[0] + tail.split(" remote=")[1]

    assert direct.split(" ", 1)[1].startswith("INFO    nexus.access [efefefefefefefefefef")
    assert without_timing(direct) == without_timing(via_logging)


CHILD_WRITER = textwrap.dedent(
    """
    import asyncio, logging, sys, time
    from engine.observability import logging as nexus_log

    nexus_log.configure_logging("json")
    nexus_log._ACCESS_BUFFER.delay = float(sys.argv[2])

    async def main() -> None:
        for i in range(int(sys.argv[1])):
            nexus_log.access_line(
                trace_id=f"{i:032x}", method="GET", route="route", path="/p/" + "x" * (i % 300),
                query="", status=200, started=time.perf_counter(), remote="127.0.0.1")
            if i % 7 == 0:
                await asyncio.sleep(0)

    asyncio.run(main())  # returns with lines still buffered: the exit writes them
    """
)


def _children(count: int, lines: int, delay: float) -> str:
    """Output of ``count`` processes writing access lines to one shared stdout pipe."""
    read_end, write_end = os.pipe()
    try:
        children = [
            subprocess.Popen([sys.executable, "-c", CHILD_WRITER, str(lines), str(delay)],
                             cwd=ROOT, stdout=write_end)
            for _ in range(count)
        ]
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read().decode()  # until every child has exited
    for child in children:
        assert child.wait(timeout=120) == 0
    return out


def test_lines_still_buffered_at_exit_are_written() -> None:
    out = _children(count=1, lines=500, delay=3600.0)  # the timer never fires
    assert [json.loads(line)["trace_id"] for line in out.splitlines()] == [
        f"{i:032x}" for i in range(500)]


def test_workers_sharing_a_pipe_never_interleave_lines() -> None:
    out = _children(count=3, lines=3000, delay=0.001)
    records = [json.loads(line) for line in out.splitlines()]  # each line whole JSON
    assert len(records) == 9000
    assert len({r["worker"] for r in records}) == 3
    for worker in {r["worker"] for r in records}:  # each worker's lines, all and in order
        ids = [int(r["trace_id"], 16) for r in records if r["worker"] == worker]
        assert ids == list(range(3000))


def _in_forked_child(check) -> str:
    """What ``check()`` returns in a forked child of this process."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running the parent's exit handlers
        try:
            os.write(write_end, check().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


def test_a_forked_child_neither_repeats_lines_nor_trace_ids(writes, access_buffer) -> None:
    access_buffer._lines.extend([_line(1), _line(2)])  # pending in the parent when it forks
    nexus_log.trace_id_from(None)  # the pool now holds the parent's next ids

    def check() -> str:
        return f"{len(nexus_log._ACCESS_BUFFER._lines)} " + " ".join(
            nexus_log.trace_id_from(None) for _ in range(3))

    pending, *childs_ids = _in_forked_child(check).split()
    parents_next = [nexus_log.trace_id_from(None) for _ in range(3)]
    assert pending == "0"
    assert set(childs_ids).isdisjoint(parents_next) and len(childs_ids) == 3
    access_buffer.flush()
    assert writes == [_line(1) + _line(2)]  # the parent's lines, once


def _fields(i: int) -> nexus_log.AccessFields:
    """A line kept as fields, formatted by the JSON access formatter."""
    return (nexus_log._json_access_tuple, 1_700_000_000.0 + i, f"{i:032x}", "POST", "route",
            f"/p/{i}", 200, 0.001, "127.0.0.1")


async def test_fields_are_formatted_in_order_with_the_lines_added_between(writes) -> None:
    buffer = nexus_log.AccessLineBuffer(delay=3600, write=writes.append, fields_limit=4)
    buffer.add_fields(_fields(0))
    buffer.add_fields(_fields(1))
    assert buffer._lines == [] and len(buffer._fields) == 2  # kept as fields for now
    buffer.add(_line(99))  # a formatted line: the fields before it are formatted first
    for i in range(2, 9):
        buffer.add_fields(_fields(i))
    assert len(buffer._fields) == 3  # formatted four at a time: 2-5, then 6-8 wait
    buffer.flush()
    lines = "".join(writes).splitlines()
    assert json.loads(lines[2]) == json.loads(_line(99))
    ids = [int(json.loads(line)["trace_id"], 16) for k, line in enumerate(lines) if k != 2]
    assert ids == list(range(9))
    first = json.loads(lines[0])
    assert first["ts"] == "2023-11-14T22:13:20.000Z" and first["duration_ms"] == 1.0
    assert first["path"] == "/p/0" and first["msg"] == "POST /p/0 200"


async def test_fields_wait_for_the_timer(writes) -> None:
    buffer = nexus_log.AccessLineBuffer(delay=0.0, write=writes.append)
    buffer.add_fields(_fields(1))
    buffer.add_fields(_fields(2))
    assert writes == []
    await _until_written(writes)
    (batch,) = writes
    assert [json.loads(line)["trace_id"] for line in batch.splitlines()] == [
        f"{1:032x}", f"{2:032x}"]


def test_fields_without_an_event_loop_are_written_at_once(writes) -> None:
    buffer = nexus_log.AccessLineBuffer(delay=3600, write=writes.append)
    buffer.add_fields(_fields(1))
    assert [json.loads(text)["trace_id"] for text in writes] == [f"{1:032x}"]


def test_a_forked_child_drops_the_parents_fields(writes, access_buffer) -> None:
    access_buffer._fields.append(_fields(1))

    def check() -> str:
        return str(len(nexus_log._ACCESS_BUFFER._fields))

    assert _in_forked_child(check) == "0"
    access_buffer.flush()
    assert [json.loads(text)["trace_id"] for text in writes] == [f"{1:032x}"]
