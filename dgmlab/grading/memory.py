"""How much memory a submission's process tree uses, as the grader's memory limit counts it.

The limit counts the **proportional set size** (PSS) summed over the tree: a page shared by ``n`` processes counts
``1/n`` in each, so a kernel and six ``DataLoader`` workers forked from it (which share PyTorch's libraries and the
dataset) count about once, not seven times as the resident set size (RSS) would. Linux reports PSS in
``/proc/<pid>/smaps_rollup`` (``psutil.Process.memory_full_info().pss``); where it is not available (another OS,
no permission) the process's RSS counts instead, which can only over-count.

Reading PSS walks the process's page tables, so it takes milliseconds per process against microseconds for RSS.
Since PSS never exceeds RSS, :class:`MemoryWatch` reads RSS on every poll and PSS only when the RSS sum is over the
limit. While it stays over (workers running), a process's count is estimated from its last PSS plus any RSS growth
since (an allocation counts in full), and PSS is read again when that estimate crosses the limit or every
``refresh_s`` seconds. A memory bomb therefore shows up as soon as its RSS crosses the limit, and is confirmed by one
PSS reading.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import psutil

MB = 2**20


def tree_pids(root: int) -> list[int] | None:
    """``root`` and its descendants, read from ``/proc/<pid>/task/<tid>/children`` (Linux): a walk of the tree
    alone, where ``psutil.Process.children`` reads every process on the machine (about 25 ms per poll on a busy
    machine, a third of a core at the watchdog's 50 ms). None where the kernel does not provide those files."""
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        return None
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except (OSError, ValueError):
                continue
    return out


def pss_bytes(proc: psutil.Process) -> tuple[int, bool]:
    """``(bytes, exact)``: the process's PSS, or its RSS with ``exact=False`` where PSS cannot be read."""
    try:
        info = proc.memory_full_info()
        pss = getattr(info, "pss", None)
        if pss is not None:
            return int(pss), True
        return int(info.rss), False
    except (psutil.AccessDenied, NotImplementedError, OSError):
        return int(proc.memory_info().rss), False


@dataclass
class Reading:
    """One poll: ``counted_mb`` is what the limit is compared with (RSS sum while under the limit, else PSS)."""

    rss_mb: float
    counted_mb: float
    pss_read: bool  # PSS was read from the kernel on this poll
    processes: int


@dataclass
class MemoryWatch:
    """Polls the memory of ``root`` and its descendants (see the module docstring).

    Args:
        root: the process whose tree is watched.
        limit_mb: the limit.
        refresh_s: while the RSS sum stays over the limit, read PSS again at least this often.
    """

    root: psutil.Process
    limit_mb: float
    refresh_s: float = 1.0
    peak_rss_mb: float = 0.0
    peak_mb: float = 0.0  # peak of the counted memory
    peak_pss_mb: float = 0.0  # peak of the PSS sums actually read (0 if never read)
    pss_reads: int = 0
    inexact: bool = False  # some process's PSS could not be read: its RSS counted instead
    _cache: dict = field(default_factory=dict)  # (pid, create_time) -> (pss bytes, rss bytes at that reading)
    _procs: dict = field(default_factory=dict)  # pid -> psutil.Process, kept between polls
    _last_read: float = -1e9

    def _tree(self) -> list[psutil.Process]:
        pids = tree_pids(self.root.pid)
        if pids is None:  # no /proc/<pid>/task/<tid>/children here: psutil scans every process
            try:
                return [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return []
        procs = {}
        for pid in pids:
            p = self._procs.get(pid)
            if p is None:
                try:
                    p = psutil.Process(pid)
                except psutil.Error:
                    continue
            procs[pid] = p
        self._procs = procs
        return list(procs.values())

    def poll(self) -> Reading:
        """Measure once; ``reading.counted_mb > limit_mb`` means the tree is over the limit."""
        rss: dict[tuple, tuple[psutil.Process, int]] = {}
        for p in self._tree():
            try:
                rss[(p.pid, p.create_time())] = (p, p.memory_info().rss)
            except psutil.Error:
                pass
        rss_total = sum(r for _, r in rss.values())
        counted, pss_read = rss_total, False
        if rss_total > self.limit_mb * MB:
            estimate = 0
            for key, (_, r) in rss.items():
                if key in self._cache:
                    pss, rss_then = self._cache[key]
                    estimate += pss + max(0, r - rss_then)
                else:
                    estimate += r  # a new process: at most its RSS
            now = time.monotonic()
            if estimate > self.limit_mb * MB or now - self._last_read > self.refresh_s:
                estimate = self._read_pss(rss)
                self._last_read, pss_read = time.monotonic(), True
                self.peak_pss_mb = max(self.peak_pss_mb, estimate / MB)
            counted = min(estimate, rss_total)
        else:
            self._cache.clear()  # under the limit on RSS alone: nothing to estimate
        reading = Reading(rss_total / MB, counted / MB, pss_read, len(rss))
        self.peak_rss_mb = max(self.peak_rss_mb, reading.rss_mb)
        self.peak_mb = max(self.peak_mb, reading.counted_mb)
        return reading

    def _read_pss(self, rss: dict[tuple, tuple[psutil.Process, int]]) -> int:
        self.pss_reads += 1
        total, cache = 0, {}
        for key, (p, r) in rss.items():
            try:
                pss, exact = pss_bytes(p)
            except psutil.Error:  # it exited meanwhile
                continue
            self.inexact |= not exact
            cache[key] = (pss, r)
            total += pss
        self._cache = cache
        return total

    def over(self) -> bool:
        """Poll and say whether the tree is over the limit."""
        return self.poll().counted_mb > self.limit_mb
