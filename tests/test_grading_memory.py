"""The grader's memory watchdog (dgmlab.grading.memory) on real process trees: shared pages count once (PSS), a
memory bomb is still stopped near the limit, and RSS counts where PSS cannot be read."""

import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from dgmlab.grading import memory
from dgmlab.grading.grade import kill_tree

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PSS and the process tree are Linux's")

# a parent touches a 300 MB buffer, then forks 4 children that keep it (copy-on-write: shared, never copied)
SHARED = textwrap.dedent(
    """
    import os, sys, time
    buf = bytearray(300 * 2**20)
    for i in range(0, len(buf), 4096):
        buf[i] = 1
    for _ in range(4):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    print("ready", flush=True)
    time.sleep(60)
    """
)

# allocates 50 MB every few milliseconds, forever
BOMB = textwrap.dedent(
    """
    hoard = []
    while True:
        b = bytearray(50 * 2**20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        hoard.append(b)
    """
)


def _start(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)


def _tree_size(proc: psutil.Process) -> int:
    return len([proc, *proc.children(recursive=True)])


def test_pages_shared_by_forked_workers_count_once():
    proc = _start(SHARED)
    try:
        assert proc.stdout.readline().strip() == "ready"
        root = psutil.Process(proc.pid)
        deadline = time.monotonic() + 10
        while _tree_size(root) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        watch = memory.MemoryWatch(root, limit_mb=800)
        reading = watch.poll()
        assert reading.processes == 5
        assert reading.rss_mb > 1500  # five times the buffer: what the old RSS sum counted, over the limit
        assert reading.pss_read and 300 < reading.counted_mb < 600  # the buffer once, plus five interpreters
        assert not watch.over()
        # while RSS stays over the limit, PSS is estimated from the last reading, not read on every poll
        reads = watch.pss_reads
        for _ in range(5):
            watch.poll()
        assert watch.pss_reads == reads
        assert watch.peak_rss_mb > 1500 and 300 < watch.peak_pss_mb < 600
    finally:
        kill_tree(proc.pid)
        proc.wait()


def test_a_memory_bomb_is_stopped_near_the_limit():
    limit = 600
    proc = _start(BOMB)
    try:
        watch = memory.MemoryWatch(psutil.Process(proc.pid), limit_mb=limit)
        start = time.monotonic()
        while not watch.over():
            assert proc.poll() is None and time.monotonic() - start < 30
            time.sleep(0.05)
        stopped = watch.peak_mb
    finally:
        kill_tree(proc.pid)
        proc.wait()
    assert limit < stopped < limit + 250, stopped


def test_rss_counts_where_pss_cannot_be_read(monkeypatch):
    def denied(self):
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "memory_full_info", denied)
    proc = _start(SHARED)
    try:
        assert proc.stdout.readline().strip() == "ready"
        root = psutil.Process(proc.pid)
        while _tree_size(root) < 5:
            time.sleep(0.05)
        watch = memory.MemoryWatch(root, limit_mb=800)
        assert watch.over() and watch.inexact  # RSS: every child counts the whole buffer
        assert memory.pss_bytes(root)[1] is False
    finally:
        kill_tree(proc.pid)
        proc.wait()


def test_rss_under_the_limit_never_reads_pss(monkeypatch):
    def forbidden(self):
        raise AssertionError("PSS read although RSS was under the limit")

    monkeypatch.setattr(psutil.Process, "memory_full_info", forbidden)
    watch = memory.MemoryWatch(psutil.Process(), limit_mb=100_000)
    assert not watch.over() and watch.pss_reads == 0 and watch.peak_rss_mb > 0
