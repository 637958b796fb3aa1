"""folk_ros.core.torch_threads: per-thread torch thread counts, and no second OpenMP team in the node's layout."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from folk_ros.core import torch_threads


def test_use_threads_sets_this_threads_count():
    def on_thread(n, out):
        torch_threads.use_threads(n)
        out.append(torch.get_num_threads())

    out = []
    t = threading.Thread(target=on_thread, args=(1, out))
    t.start()
    t.join()
    assert out == [1]
    with pytest.raises(ValueError, match="threads"):
        torch_threads.use_threads(0)


def test_serial_runs_one_thread_and_restores_the_count():
    before = torch.get_num_threads()
    with torch_threads.serial():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError), torch_threads.serial():
        raise KeyError("restored on errors too")
    assert torch.get_num_threads() == before


def test_on_own_thread_returns_or_raises_from_a_thread_that_has_ended():
    def report(scale):
        return threading.get_ident(), torch.get_num_threads() * scale

    ident, count = torch_threads.on_own_thread(report, 10, threads=1)
    assert ident != threading.get_ident() and count == 10
    assert ident not in {t.ident for t in threading.enumerate()}
    with pytest.raises(ZeroDivisionError):
        torch_threads.on_own_thread(lambda: 1 / 0, threads=1)


def test_concurrently_runs_the_calls_on_helper_threads_serially():
    """The first call here, the others on helper threads that have ended on return, all with serial torch;
    results in order; one call runs alone with this thread's count; an error is raised once every call has
    finished."""
    def report(tag):
        return tag, threading.get_ident(), torch.get_num_threads()

    before = torch.get_num_threads()
    got = torch_threads.concurrently([lambda t=t: report(t) for t in "abc"])
    assert [g[0] for g in got] == list("abc") and [g[2] for g in got] == [1, 1, 1]
    helpers = {g[1] for g in got[1:]}
    assert got[0][1] == threading.get_ident() not in helpers
    assert not helpers & {t.ident for t in threading.enumerate()}
    assert torch.get_num_threads() == before
    assert torch_threads.concurrently([lambda: report("x")])[0][1:] == (threading.get_ident(), before)
    finished = threading.Event()

    def slow():
        finished.wait(0.2)
        finished.set()

    with pytest.raises(ZeroDivisionError):
        torch_threads.concurrently([lambda: 1 / 0, slow])
    assert finished.is_set()


# Thread A keeps a 2-thread OpenMP team (as the node's worker); thread B then runs torch work and stays
# alive (as the executor serving a query). The script prints how many OS threads the process has.
TEAMS_SCRIPT = """
import os, sys, threading, torch
from folk_ros.core import torch_threads
torch.set_num_threads(2)
x = torch.randn(512, 512)
done, hold = threading.Barrier(3), threading.Event()
def worker():
    torch_threads.use_threads(2)
    (x @ x).sum()
    done.wait(); hold.wait()
def executor():
    if sys.argv[1] == "serial":
        with torch_threads.serial():
            (x @ x).relu_().sum()
    else:
        (x @ x).relu_().sum()
    done.wait(); hold.wait()
a = threading.Thread(target=worker); a.start()
b = threading.Thread(target=executor); b.start()
done.wait()
print(len(os.listdir("/proc/self/task")))
hold.set(); a.join(); b.join()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
                    reason="counts OpenMP helper threads in /proc (Linux, 2+ CPUs)")
def test_serial_work_beside_a_parallel_thread_starts_no_second_team():
    def threads(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", TEAMS_SCRIPT, mode], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "OMP_NUM_THREADS": "2"})
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    assert threads("serial") == threads("parallel") - 1   # the executor's own team of 2 adds one helper
