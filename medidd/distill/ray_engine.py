"""Distil a site's patients on a Ray cluster (a site with its own compute).

:class:`RayEngine` is a :class:`~medidd.distill.engines.PatientEngine`: every patient is one
Ray task running :func:`~medidd.distill.patient.distill_patient` (the per-patient function
of every engine) with ``cpus_per_patient`` CPUs and as many torch threads; the result comes
back to this process, which writes the patient's checkpoint, so a rerun after a crash resumes
from the finished patients exactly as a local run does. A task whose worker dies is retried
by Ray (``max_retries``); a patient that still fails is reported with its reason after the
others are done. Ray is imported only here (it ships with ``medidd[fl]``, Flower's
simulation extra).

The cluster is checked before Ray is asked to join it: an address that does not accept a
TCP connection within ``connect_timeout_s`` is a clear error at once (Ray itself would
retry for minutes), and joining must finish within ``join_timeout_s``.

Example:
    >>> parse_address("ray://10.0.0.5:10001")
    ('10.0.0.5', 10001)
    >>> parse_address("head-node")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    medidd.distill.engines.EngineError: Ray address 'head-node' is not HOST:PORT, ...
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medidd.distill.engines import (
    EngineError,
    OnDone,
    OnEvent,
    PatientEvent,
    PatientFailure,
    error_line,
)
from medidd.distill.patient import PatientOutput, SiteSetup, distill_patient
from medidd.optional import optional_import
from medidd.preprocess.slices import SliceSet

logger = logging.getLogger(__name__)

#: Where ``ray start`` records the address of the cluster on this machine (``auto``).
CURRENT_CLUSTER = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"


def parse_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT``; :class:`EngineError` if it
    is neither (``auto`` is resolved by :func:`resolve_address`)."""
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"Ray address '{address}' is not HOST:PORT, ray://HOST:PORT or "
                          "'auto'")
    return host.strip("[]"), int(port)


def resolve_address(address: str) -> str:
    """``auto`` -> ``$RAY_ADDRESS`` or the cluster ``ray start`` recorded on this machine;
    any other address unchanged.

    Example:
        >>> resolve_address("10.0.0.5:6379")
        '10.0.0.5:6379'
    """
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    if CURRENT_CLUSTER.is_file():
        found = CURRENT_CLUSTER.read_text().strip()
        if found:
            return found
    raise EngineError("--ray auto: no Ray cluster runs on this machine (start one with "
                      "`ray start --head`) and RAY_ADDRESS is not set; or pass the head's "
                      "address, --ray HOST:PORT")


def check_reachable(address: str, timeout_s: float) -> None:
    """Raise :class:`EngineError` unless ``address`` accepts a TCP connection in time."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise EngineError(f"the Ray cluster at {address} does not answer ({why} after at "
                          f"most {timeout_s:g} s): start it with `ray start --head "
                          f"--port {port}` on {host}, or check the address and the "
                          "firewall") from None


def _ray_patient(setup: SiteSetup, real: SliceSet, threads: int) -> PatientOutput:
    ray = optional_import("ray", extra="fl")
    node = str(ray.get_runtime_context().get_node_id())[:8]
    return distill_patient(setup, real, threads=threads,
                           where=f"ray node {node} pid {os.getpid()}")


class RayEngine:
    """Patients as Ray tasks on the cluster at ``address`` (``HOST:PORT``, ``ray://HOST:PORT``
    or ``auto``).

    Args:
        address: the cluster's head (checked before joining, see the module docstring).
        max_in_flight: patients submitted at once (default: twice the cluster's CPUs).
        cpus_per_patient: CPUs each task reserves, and its torch threads.
        max_retries: Ray's retries of a task whose worker died.
        connect_timeout_s / join_timeout_s: the deadlines of the TCP check and of joining.
    """

    def __init__(self, address: str, *, max_in_flight: int | None = None,
                 cpus_per_patient: int = 1, max_retries: int = 2,
                 connect_timeout_s: float = 5.0, join_timeout_s: float = 60.0) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise EngineError(f"max_in_flight={max_in_flight}: at least 1 patient at a time")
        self.address = address
        self.max_in_flight = max_in_flight
        self.cpus_per_patient = cpus_per_patient
        self.max_retries = max_retries
        self.connect_timeout_s = connect_timeout_s
        self.join_timeout_s = join_timeout_s

    def _join(self, ray: Any) -> bool:
        """Join the cluster (unless this process already did); True if we joined it."""
        if ray.is_initialized():
            return False
        address = resolve_address(self.address)
        check_reachable(address, self.connect_timeout_s)
        failure: list[BaseException] = []

        def join() -> None:
            try:
                ray.init(address=address, log_to_driver=False)
            except BaseException as exc:  # handed to the caller's thread
                failure.append(exc)

        thread = threading.Thread(target=join, daemon=True)
        thread.start()
        thread.join(self.join_timeout_s)
        if thread.is_alive():
            raise EngineError(f"the Ray cluster at {address} accepted a connection but did "
                              f"not let this process join within {self.join_timeout_s:g} s; "
                              "is it a Ray head (GCS port, 6379 by default) of the same Ray "
                              "version?")
        if failure:
            raise EngineError(f"could not join the Ray cluster at {address}: "
                              f"{type(failure[0]).__name__}: {failure[0]}") from None
        logger.info("joined the Ray cluster at %s (%s CPUs)", address,
                    ray.cluster_resources().get("CPU", "?"))
        return True

    def run(self, setup: SiteSetup, patients: Sequence[SliceSet], on_done: OnDone,
            on_event: OnEvent) -> list[PatientFailure]:
        """Distil ``patients`` on the cluster; see the class and module docstrings."""
        ray = optional_import("ray", extra="fl")
        joined = self._join(ray)
        try:
            return self._run(ray, setup, patients, on_done, on_event)
        finally:
            if joined:
                ray.shutdown()

    def _run(self, ray: Any, setup: SiteSetup, patients: Sequence[SliceSet], on_done: OnDone,
             on_event: OnEvent) -> list[PatientFailure]:
        task = ray.remote(num_cpus=self.cpus_per_patient,
                          max_retries=self.max_retries)(_ray_patient)
        window = self.max_in_flight or max(1, 2 * int(ray.cluster_resources().get("CPU", 1)))
        setup_ref = ray.put(setup)
        todo = deque(patients)
        running: dict[Any, SliceSet] = {}
        failures: list[PatientFailure] = []
        try:
            while todo or running:
                while todo and len(running) < window:
                    real = todo.popleft()
                    running[task.remote(setup_ref, real, self.cpus_per_patient)] = real
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for ref in ready:
                    real = running.pop(ref)
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # the patient's own error
                        cause = exc.cause if exc.cause is not None else exc
                        reason = error_line(cause)
                        failures.append(PatientFailure(real.patient_key, reason))
                        on_event(PatientEvent("failed", real.patient_key, error=reason))
                    except ray.exceptions.RayError as exc:  # worker or node died
                        reason = (f"its Ray worker died {self.max_retries + 1} times "
                                  f"({type(exc).__name__})")
                        failures.append(PatientFailure(real.patient_key, reason))
                        on_event(PatientEvent("failed", real.patient_key, error=reason))
                    else:
                        on_done(out)
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
        return failures
