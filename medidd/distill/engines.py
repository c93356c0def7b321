"""Where a site's patients are distilled: in this process, in a pool of worker processes,
or on a Ray cluster (:mod:`medidd.distill.ray_engine`).

An engine runs :meth:`~medidd.distill.patient.PatientDistiller.distill` for every patient it
is given and hands each result back to the caller *in the caller's process* (``on_done``),
which writes the patient's checkpoint atomically: a worker never writes anything, so a
worker killed mid-patient leaves nothing half-written and the patient is simply redone. It
reports what happens per patient as :class:`PatientEvent` (start, retry, failed) and returns
the patients that could not be distilled, each with the reason, after trying all the others.

:class:`ProcessPoolEngine` uses a ``spawn`` process pool with ``threads`` torch threads per
worker (default: the run's threads divided by the workers, so ``--workers 2`` on 2 cores
gives one thread each). A worker that dies (``kill -9``, out of memory) breaks the pool; the
engine starts a new one and redoes the patients that were running, up to ``max_retries``
times each.

Example:
    >>> resolve_workers(1, cores=2)
    1
    >>> resolve_workers(0, cores=2)
    Traceback (most recent call last):
    ...
    medidd.distill.engines.EngineError: workers=0: at least 1 worker process is needed
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.queues import SimpleQueue
from typing import Any, Protocol

import torch

from medidd.distill.base import Progress
from medidd.distill.patient import PatientDistiller, PatientOutput, SiteSetup, distill_patient
from medidd.preprocess.slices import SliceSet

logger = logging.getLogger(__name__)

#: ``kind`` of a :class:`PatientEvent`.
EVENT_KINDS: tuple[str, ...] = ("start", "resumed", "done", "retry", "failed")


@dataclass(frozen=True)
class PatientEvent:
    """Something that happened to one patient: ``kind`` in :data:`EVENT_KINDS`, the
    patient's pseudonymous ``key``, ``where`` it ran (``"pid 1234"``, a Ray node), its
    ``seconds`` (done), the ``error`` (retry, failed), and the site's progress: ``done`` of
    ``total`` patients finished (resumed ones included)."""

    kind: str
    key: str
    where: str = ""
    seconds: float | None = None
    error: str | None = None
    done: int = 0
    total: int = 0


class EngineError(ValueError):
    """An engine that cannot run (a bad worker count, a cluster that does not answer); the
    message says what to change."""


@dataclass(frozen=True)
class PatientFailure:
    """A patient that could not be distilled, and why (one line)."""

    key: str
    reason: str


OnDone = Callable[[PatientOutput], None]
OnEvent = Callable[[PatientEvent], None]


class PatientEngine(Protocol):
    """Runs the patients of one site; see the module docstring for the contract."""

    def run(self, setup: SiteSetup, patients: Sequence[SliceSet], on_done: OnDone,
            on_event: OnEvent) -> list[PatientFailure]: ...


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without affinity masks
        return os.cpu_count() or 1


def resolve_workers(workers: int, cores: int | None = None) -> int:
    """``workers`` checked against the cores: below 1 is an error; more workers than cores
    are clamped to the cores, with a warning (they would only compete for them).

    Example:
        >>> resolve_workers(8, cores=2)
        2
    """
    if workers < 1:
        raise EngineError(f"workers={workers}: at least 1 worker process is needed")
    cores = cores if cores is not None else available_cores()
    if workers > cores:
        logger.warning("workers=%d is more than the %d CPU cores here; using %d workers",
                       workers, cores, cores)
        return cores
    return workers


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of ``exc``.

    Example:
        >>> error_line(ValueError("bad\\nmore"))
        'ValueError: bad'
    """
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class InProcessEngine:
    """Patients one after another in this process, with per-step progress (``on_step``)."""

    def __init__(self, on_step: Progress | None = None) -> None:
        self.on_step = on_step

    def run(self, setup: SiteSetup, patients: Sequence[SliceSet], on_done: OnDone,
            on_event: OnEvent) -> list[PatientFailure]:
        """Distil ``patients`` in order; an error stops the run (as it always did)."""
        distiller = PatientDistiller(setup) if patients else None
        for real in patients:
            assert distiller is not None
            on_event(PatientEvent("start", real.patient_key, where="in-process"))
            t0 = time.perf_counter()
            distilled = distiller.distill(real, self.on_step)
            on_done(PatientOutput(real.patient_key, distilled, time.perf_counter() - t0,
                                  "in-process"))
        return []


# --- the process pool -------------------------------------------------------------------

_EVENTS: SimpleQueue[tuple[str, str]] | None = None


def _init_worker(threads: int, events: SimpleQueue[tuple[str, str]]) -> None:
    global _EVENTS
    torch.set_num_threads(threads)
    _EVENTS = events


def _pool_task(setup: SiteSetup, real: SliceSet, threads: int) -> PatientOutput:
    where = f"pid {os.getpid()}"
    if _EVENTS is not None:
        _EVENTS.put((real.patient_key, where))  # synchronous: it has arrived once put returns
    return distill_patient(setup, real, threads=threads, where=where)


class ProcessPoolEngine:
    """Patients in parallel in ``workers`` spawned processes, ``threads`` torch threads each.

    Args:
        workers: worker processes (checked with :func:`resolve_workers`).
        threads: torch threads per worker; default ``max(1, torch threads // workers)``
            (the run's thread budget, which ``OMP_NUM_THREADS`` sets, split between them).
        max_retries: how often a patient whose worker died is redone before it is reported
            as failed.
    """

    def __init__(self, workers: int, *, threads: int | None = None,
                 max_retries: int = 2) -> None:
        self.workers = resolve_workers(workers)
        self.threads = threads if threads is not None else max(
            1, torch.get_num_threads() // self.workers)
        self.max_retries = max_retries

    def run(self, setup: SiteSetup, patients: Sequence[SliceSet], on_done: OnDone,
            on_event: OnEvent) -> list[PatientFailure]:
        """Distil ``patients`` (any order); see the class and module docstrings."""
        todo = deque(patients)
        attempts: dict[str, int] = {}
        failures: list[PatientFailure] = []
        idle_pools = 0
        while todo:
            n_before = len(todo)
            todo, progressed = self._generation(setup, todo, attempts, failures, on_done,
                                                on_event)
            idle_pools = 0 if progressed or len(todo) < n_before else idle_pools + 1
            if todo and idle_pools > self.max_retries:
                # workers die before they start any patient (cannot import, no memory):
                # no retry will help, so say so instead of starting pools forever
                reason = ("the worker processes exit before they start a patient (see the "
                          "errors above; --workers 1 runs in this process and shows the "
                          "error directly)")
                failures += [PatientFailure(real.patient_key, reason) for real in todo]
                for real in todo:
                    on_event(PatientEvent("failed", real.patient_key, error=reason))
                break
        return failures

    def _generation(self, setup: SiteSetup, todo: deque[SliceSet], attempts: dict[str, int],
                    failures: list[PatientFailure], on_done: OnDone,
                    on_event: OnEvent) -> tuple[deque[SliceSet], bool]:
        """One pool, until it finishes ``todo`` or breaks; returns the patients to redo and
        whether any patient started."""
        ctx = multiprocessing.get_context("spawn")
        events: SimpleQueue[tuple[str, str]] = ctx.SimpleQueue()
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(todo)), mp_context=ctx,
                                   initializer=_init_worker, initargs=(self.threads, events))
        running: dict[Future[PatientOutput], SliceSet] = {}
        started: set[str] = set()
        redo: deque[SliceSet] = deque()
        clean = progressed = False
        try:
            while todo or running:
                while todo and len(running) < 2 * self.workers:
                    real = todo.popleft()
                    running[pool.submit(_pool_task, setup, real, self.threads)] = real
                finished, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                progressed = _drain(events, started, on_event) or progressed
                broken = False
                for fut in finished:
                    real = running.pop(fut)
                    key = real.patient_key
                    try:
                        out = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        self._redo(real, started, attempts, failures, redo, on_event)
                    except Exception as exc:  # the patient's own error: report, go on
                        started.discard(key)
                        failures.append(PatientFailure(key, error_line(exc)))
                        on_event(PatientEvent("failed", key, error=error_line(exc)))
                    else:
                        started.discard(key)
                        on_done(out)
                if broken:  # every other running patient is lost with the pool
                    for fut, real in running.items():
                        fut.cancel()
                        self._redo(real, started, attempts, failures, redo, on_event)
                    running.clear()
                    redo.extend(todo)
                    return redo, progressed
            clean = True
        finally:
            if clean:
                pool.shutdown(wait=True)
            else:
                _terminate(pool)
            events.close()
        return redo, True

    def _redo(self, real: SliceSet, started: set[str], attempts: dict[str, int],
              failures: list[PatientFailure], redo: deque[SliceSet], on_event: OnEvent) -> None:
        key = real.patient_key
        if key not in started:  # queued, never began: not an attempt
            redo.append(real)
            return
        started.discard(key)
        attempts[key] = attempts.get(key, 0) + 1
        reason = "its worker process died (killed, or out of memory)"
        if attempts[key] > self.max_retries:
            failures.append(PatientFailure(key, f"{reason} {attempts[key]} times; lower "
                                           "--workers or give the workers more memory"))
            on_event(PatientEvent("failed", key, error=reason))
        else:
            logger.warning("a worker died while distilling a patient; redoing it")
            on_event(PatientEvent("retry", key, error=reason))
            redo.append(real)


def _drain(events: SimpleQueue[tuple[str, str]], started: set[str], on_event: OnEvent) -> bool:
    """Report the patients that started since the last call; True if there were any."""
    any_started = False
    while not events.empty():
        key, where = events.get()
        started.add(key)
        any_started = True
        on_event(PatientEvent("start", key, where=where))
    return any_started


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Shut ``pool`` down without waiting for running patients; end its workers by PID."""
    processes: dict[int, Any] = dict(getattr(pool, "_processes", None) or {})
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes.values():
        if proc.is_alive():
            proc.terminate()
    for proc in processes.values():
        proc.join(timeout=10)
