"""Start local processes (Flower's SuperLink and SuperNodes, a Ray head) and end them by PID.

Used by the deployment tests, the loopback load test (``benchmarks/load_test.py``) and
anything else that runs a federation on one machine. Every process is started in its own
session; :meth:`Procs.stop` ends it *and its descendants* (the SuperLink's SuperExec and
ServerApp, the SuperNodes' ClientApp processes), found through ``/proc``, by PID: SIGTERM,
then SIGKILL after a grace period. Nothing is ever ended by name.

:func:`peak_rss_mb` reads the peak resident memory (``VmHWM``) of a process and of each of
its descendants from ``/proc``; :class:`PeakMemory` samples it in a thread while a run goes
on, so processes that exit before the end (the ServerApp) are still counted.

Example:
    >>> 1024 <= free_port() < 65536
    True
    >>> peak_rss_mb(os.getpid()) > 0
    True
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

#: The folder of this Python's console scripts (flower-superlink, flwr, ray, ...).
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(home: Path) -> dict[str, str]:
    """This environment for a Flower process: ``FLWR_HOME=home`` (created), telemetry off,
    one OpenMP thread, this Python's scripts first on ``PATH``."""
    env = dict(os.environ)
    env.update(FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", OMP_NUM_THREADS="1",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    home.mkdir(parents=True, exist_ok=True)
    return env


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), through ``/proc``."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None when it is gone: with the PID,
    it names one process even after the PID is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return not stat.read_text().split(") ")[-1].startswith("Z")
    except OSError:
        return False


def vm_hwm_mb(pid: int) -> float:
    """Peak resident memory (``VmHWM``) of one process in MiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """``VmHWM`` of ``pid`` plus that of each of its live descendants, in MiB."""
    return vm_hwm_mb(pid) + sum(vm_hwm_mb(p) for p in descendants(pid))


def cmdline(pid: int) -> str:
    """The command line of ``pid`` ('' once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


class PeakMemory:
    """Samples, every ``interval_s``, the ``VmHWM`` of the processes :meth:`groups` finds and
    keeps each one's largest value (per PID), so processes that exit mid-run still count.

    ``groups`` maps a name to a callable returning the PIDs of that group now; :meth:`peaks`
    sums the per-PID peaks of each group, in MiB.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]],
                 interval_s: float = 0.2) -> None:
        self.groups = groups
        self.interval_s = interval_s
        self._peak: dict[str, dict[int, float]] = {name: {} for name in groups}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        """One sample of every group."""
        for name, find in self.groups.items():
            for pid in find():
                mb = vm_hwm_mb(pid)
                if mb > self._peak[name].get(pid, 0.0):
                    self._peak[name][pid] = mb

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def peaks(self) -> dict[str, float]:
        """Per group: the sum over its processes of each one's peak resident MiB."""
        return {name: sum(by_pid.values()) for name, by_pid in self._peak.items()}

    def pids(self, name: str) -> list[int]:
        """Every PID of group ``name`` seen so far."""
        return sorted(self._peak[name])

    def per_process(self, name: str) -> dict[int, float]:
        """The peak resident MiB of each process of group ``name``."""
        return dict(self._peak[name])


class Procs:
    """The processes a caller started: ``start`` one, ``stop`` one, ``stop_all`` at the end.

    Logs go to ``logs/<name>.log``."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.popen: dict[str, subprocess.Popen[bytes]] = {}
        #: (pid, start time) of every process seen below each started one
        self.known: dict[str, set[tuple[int, int | None]]] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in a session of its own, output to its log."""
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        log.close()
        self.popen[name] = proc
        self.known[name] = {(proc.pid, start_time(proc.pid))}
        return proc

    def log(self, name: str) -> str:
        """What process ``name`` wrote so far."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(self, name: str, needle: str, timeout: float) -> bool:
        """Wait until ``needle`` appears in the log of ``name`` (False on timeout or exit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log(name):
                return True
            if self.popen[name].poll() is not None:
                return needle in self.log(name)
            time.sleep(0.5)
        return False

    def track(self) -> None:
        """Remember the current descendants (so they are ended even after a parent exits)."""
        for name, proc in self.popen.items():
            self.known[name] |= {(p, start_time(p)) for p in descendants(proc.pid)}

    def _ours(self, name: str) -> set[int]:
        """PIDs of ``name`` and its descendants that are still the processes we saw (a PID
        reused by another process since is left alone)."""
        proc = self.popen[name]
        seen = self.known[name] | {(p, start_time(p)) for p in descendants(proc.pid)}
        return {pid for pid, t in seen if pid == proc.pid or start_time(pid) == t}

    def stop(self, name: str, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """End process ``name`` and its descendants by PID (``sig``, then SIGKILL)."""
        proc = self.popen[name]
        pids = self._ours(name)
        for pid in sorted(pids, reverse=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids if p != proc.pid):
            time.sleep(0.2)
        for pid in pids & self._ours(name):
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        """End every process started here, with its descendants."""
        self.track()
        for name in list(self.popen):
            self.stop(name)
