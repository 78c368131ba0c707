"""Process and host statistics read from ``/proc`` (Linux), without psutil.

All functions are synchronous and cheap (a few small procfs reads); callers on the event loop
run them through ``asyncio.to_thread``. On a system without ``/proc`` they degrade to what
``os``/``resource`` offer and leave the rest at 0.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = resource.getpagesize()


@dataclass
class ProcStat:
    pid: int
    ppid: int
    utime: float  # seconds, this process plus its reaped children (cutime)
    stime: float
    start_time: float  # seconds since the epoch
    vsize: int
    rss: int


def _boot_time() -> float:
    try:
        for line in (PROC / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


_BOOT_TIME = _boot_time()


def read_stat(pid: int | str = "self") -> ProcStat | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    rest = text[text.rfind(")") + 2 :].split()
    try:
        return ProcStat(
            pid=int(text.split(" ", 1)[0]),
            ppid=int(rest[1]),
            utime=(int(rest[11]) + int(rest[13])) / CLK_TCK,
            stime=(int(rest[12]) + int(rest[14])) / CLK_TCK,
            start_time=_BOOT_TIME + int(rest[19]) / CLK_TCK,
            vsize=int(rest[20]),
            rss=int(rest[21]) * PAGE_SIZE,
        )
    except (IndexError, ValueError):
        return None


def read_status(pid: int | str = "self") -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` in bytes (VmRSS, VmData, RssAnon, ...)."""
    out: dict[str, int] = {}
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[name] = int(parts[0]) * 1024
    return out


def open_fds(pid: int | str = "self") -> int:
    try:
        return len(os.listdir(PROC / str(pid) / "fd"))
    except OSError:
        return 0


def max_fds(pid: int | str = "self") -> int:
    try:
        for line in (PROC / str(pid) / "limits").read_text().splitlines():
            if line.startswith("Max open files"):
                value = line.split()[3]
                return int(value) if value.isdigit() else 0
    except OSError:
        pass
    if pid == "self" or pid == os.getpid():
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 0


def descendants(root: int) -> list[ProcStat]:
    """``root`` and every live process below it (one pass over /proc)."""
    stats: dict[int, ProcStat] = {}
    try:
        names = os.listdir(PROC)
    except OSError:
        return []
    for name in names:
        if name.isdigit():
            stat = read_stat(name)
            if stat is not None:
                stats[stat.pid] = stat
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    out: list[ProcStat] = []
    todo = [root]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        out.append(stats[pid])
        todo.extend(children.get(pid, ()))
    return out


@dataclass
class TreeStats:
    """Process metrics summed over a process tree (start time: the oldest)."""

    cpu_user: float = 0.0
    cpu_system: float = 0.0
    start_time: float = 0.0
    resident: int = 0
    virtual: int = 0
    heap: int = 0
    open_fds: int = 0
    max_fds: int = 0
    pids: list[int] = field(default_factory=list)


def tree_stats(root: int | None = None) -> TreeStats:
    root = os.getpid() if root is None else root
    procs = descendants(root) if PROC.is_dir() else []
    out = TreeStats()
    if not procs:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.cpu_user = usage.ru_utime + kids.ru_utime
        out.cpu_system = usage.ru_stime + kids.ru_stime
        out.resident = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        out.max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        out.pids = [root]
        return out
    out.start_time = min(p.start_time for p in procs)
    for p in procs:
        out.pids.append(p.pid)
        out.cpu_user += p.utime
        out.cpu_system += p.stime
        out.resident += p.rss
        out.virtual += p.vsize
        out.heap += read_status(p.pid).get("VmData", 0)
        out.open_fds += open_fds(p.pid)
        out.max_fds += max_fds(p.pid)
    return out


# ---------------------------------------------------------------------- this process's memory
@dataclass
class MemoryUsage:
    """Node's ``process.memoryUsage()`` mapped onto Linux process memory (see docs/metrics.md).

    rss = VmRSS; heap_total = VmData (private writable memory reserved: the malloc heap, the
    interpreter's object arenas, thread stacks); heap_used = RssAnon (the resident part of
    anonymous memory, where Python objects live); external = RssFile (resident file-backed
    memory: the interpreter, C extensions, mmap'd files); array_buffers = RssShmem (shared memory).
    """

    rss: int = 0
    heap_total: int = 0
    heap_used: int = 0
    external: int = 0
    array_buffers: int = 0

    def as_node(self) -> dict[str, int]:
        return {
            "rss": self.rss,
            "heapTotal": self.heap_total,
            "heapUsed": self.heap_used,
            "external": self.external,
            "arrayBuffers": self.array_buffers,
        }


def memory_usage() -> MemoryUsage:
    status = read_status()
    if not status:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return MemoryUsage(rss=rss, heap_total=rss, heap_used=rss)
    return MemoryUsage(
        rss=status.get("VmRSS", 0),
        heap_total=status.get("VmData", 0),
        heap_used=status.get("RssAnon", 0),
        external=status.get("RssFile", 0),
        array_buffers=status.get("RssShmem", 0),
    )


#: smaps mapping class -> the ``space`` label of nexus_nodejs_heap_space_size_*_bytes.
SPACES = ("brk_heap", "anonymous", "stack")


def heap_spaces() -> dict[str, tuple[int, int]]:
    """``space -> (size, resident)`` bytes of the private writable mappings of this process.

    brk_heap = the ``[heap]`` mapping (small malloc allocations); anonymous = anonymous mmaps
    (the interpreter's object arenas, large allocations, thread stacks); stack = ``[stack]``.
    """
    spaces = {name: [0, 0] for name in SPACES}
    try:
        text = (PROC / "self" / "smaps").read_text()
    except OSError:
        return {name: (0, 0) for name in SPACES}
    current: list[int] | None = None
    for line in text.splitlines():
        first = line.split(" ", 1)[0]
        if "-" in first and not first.endswith(":"):
            fields = line.split()
            perms = fields[1] if len(fields) > 1 else ""
            path = fields[5] if len(fields) > 5 else ""
            current = None
            if "w" in perms and "p" in perms:
                if path == "[heap]":
                    current = spaces["brk_heap"]
                elif path == "[stack]":
                    current = spaces["stack"]
                elif path == "":
                    current = spaces["anonymous"]
        elif current is not None and first in ("Size:", "Rss:"):
            parts = line.split()
            current[0 if first == "Size:" else 1] += int(parts[1]) * 1024
    return {name: (v[0], v[1]) for name, v in spaces.items()}


def host_stats() -> dict[str, object]:
    """Node's ``os.uptime()``, ``os.freemem()``, ``os.loadavg()``, ``os.totalmem()``."""
    up = 0
    try:
        up = int(float((PROC / "uptime").read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        pass
    mem: dict[str, int] = {}
    try:
        for line in (PROC / "meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            parts = value.split()
            if parts:
                mem[name] = int(parts[0]) * 1024
    except (OSError, ValueError):
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = [0.0, 0.0, 0.0]
    return {
        "upTime": up,
        "freemem": mem.get("MemAvailable", mem.get("MemFree", 0)),
        "loadavg": load,
        "totalmem": mem.get("MemTotal", 0),
    }
