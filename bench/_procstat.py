"""CPU and memory of a process and its children, from /proc (Linux), for the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path


def tree(pid: int) -> list[int]:
    """``pid`` and its direct children (the engine's main process and its workers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime of each process, in clock ticks."""
    out = {}
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[p] = int(fields[11]) + int(fields[12])
    return out


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its children."""
    return sum(cpu_ticks(tree(pid)).values()) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_named(prefix: str) -> float:
    """CPU seconds used so far by every process whose name starts with ``prefix`` (e.g. the
    PostgreSQL server's processes: ``postgres``)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        name, _, rest = text.partition("(")[2].rpartition(")")
        if name.startswith(prefix):
            fields = rest.split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """Summed VmRSS of ``pid`` and its children."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total
