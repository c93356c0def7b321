"""The process helpers of the deployment tests and the load test: a started process tree is
ended by PID, a PID reused by another process is left alone, peak memory is read from /proc."""

from __future__ import annotations

import doctest
import importlib
import os
import sys
import time
from pathlib import Path

import pytest

from aggregator.procs import PeakMemory, Procs, descendants, vm_hwm_mb

TREE = ("import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
        "print('up', flush=True); time.sleep(300)")


def test_a_process_and_its_children_are_ended_by_pid(tmp_path: Path) -> None:
    procs = Procs(tmp_path / "logs")
    proc = procs.start("tree", [sys.executable, "-c", TREE], dict(os.environ))
    assert procs.wait_log("tree", "up", 60)
    deadline = time.monotonic() + 30
    while not descendants(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = descendants(proc.pid)[0]
    with PeakMemory({"tree": lambda: [proc.pid, *descendants(proc.pid)]}, 0.05) as peak:
        time.sleep(0.3)
    assert set(peak.pids("tree")) == {proc.pid, child}
    assert peak.peaks()["tree"] > 5 and vm_hwm_mb(child) > 0
    procs.stop_all()
    assert proc.poll() is not None and _gone(child)


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.split(") ")[-1].startswith("Z")  # ended, not yet reaped


def test_a_reused_pid_is_not_ended(tmp_path: Path) -> None:
    procs = Procs(tmp_path / "logs")
    proc = procs.start("p", [sys.executable, "-c", "import time; time.sleep(300)"],
                       dict(os.environ))
    me = os.getpid()
    procs.known["p"].add((me, -1))  # "seen" once, with another start time: not this process
    procs.stop("p", grace=2.0)
    assert proc.poll() is not None  # the process itself ended; this test process still runs


@pytest.mark.parametrize("name", ["procs", "loopback"])
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"aggregator.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0
