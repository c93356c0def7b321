"""Patients in parallel: a process pool (and a Ray cluster) give the same package, byte for
byte, as one patient after another; a worker killed mid-patient is redone; bad worker counts
and unreachable clusters are clear errors."""

from __future__ import annotations

import doctest
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from medidd.config import load_config
from medidd.distill.config import DistillConfig
from medidd.distill.engines import EngineError, PatientEvent, ProcessPoolEngine, resolve_workers
from medidd.distill.run import DistillError, distill_site
from medidd.io.sample_data import COHORT_V1, make_sample_patients
from medidd.preprocess.cohort import prepare_patients
from medidd.preprocess.slices import SliceSet

#: the FAST settings of tests/cli/test_node_cli.py: seconds per patient on a CPU
FAST = ["matching.iterations=2", "matching.outer_loop=3", "matching.patch_size=24",
        "spg.width=8", "prior.kind=atlas", "preprocess.size=32", "matching.lfd_features=16",
        "ipc=2"]


@pytest.fixture(scope="module")
def cfg() -> DistillConfig:
    return load_config(DistillConfig, None, FAST)


@pytest.fixture(scope="module")
def mr_site(real_samples: Path, tmp_path_factory: pytest.TempPathFactory,
            cfg: DistillConfig) -> list[SliceSet]:
    tree = tmp_path_factory.mktemp("dicom") / "patients"
    make_sample_patients(real_samples, tree, modality="MR", names=COHORT_V1)  # 3 MR patients
    slices = prepare_patients(tree, salt=b"\x01" * 32, cfg=cfg.preprocess).slices
    assert len(slices) == 3
    return slices


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Both runs with one torch thread per patient (what --workers 2 gives on 2 cores):
    float reductions split by threads round differently, so equal bytes need equal threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _files(package: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(package.iterdir())}


@pytest.fixture(scope="module")
def sequential(mr_site: list[SliceSet], cfg: DistillConfig,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("seq") / "pkg"
        distill_site(mr_site, cfg, out)
    finally:
        torch.set_num_threads(before)
    return _files(out)


def test_two_workers_write_the_same_bytes_as_one_patient_after_another(
    mr_site: list[SliceSet], cfg: DistillConfig, sequential: dict[str, bytes], tmp_path: Path,
    one_thread: None,
) -> None:
    events: list[PatientEvent] = []
    res = distill_site(mr_site, cfg, tmp_path / "pkg", workers=2, on_event=events.append)
    assert _files(res.package) == sequential
    assert sorted(e.key for e in events if e.kind == "done") == sorted(
        s.patient_key for s in mr_site)
    assert {e.where for e in events if e.kind == "start"} <= {
        e.where for e in events if e.kind == "done"}
    assert len({e.where for e in events if e.kind == "done"}) >= 1
    assert [e.done for e in events if e.kind == "done"] == [1, 2, 3]
    assert not res.retried and not (tmp_path / ".pkg.ckpt").exists()


@pytest.mark.slow  # ~40 s: two pools of spawned workers
def test_a_worker_killed_mid_patient_is_redone_and_nothing_is_half_written(
    mr_site: list[SliceSet], cfg: DistillConfig, sequential: dict[str, bytes], tmp_path: Path,
    one_thread: None,
) -> None:
    killed: list[str] = []

    def kill_first(e: PatientEvent) -> None:
        if e.kind == "start" and not killed:
            killed.append(e.key)
            os.kill(int(e.where.removeprefix("pid ")), signal.SIGKILL)
            time.sleep(0.5)  # the pool notices; this patient was mid-way
            ckpts = list((tmp_path / ".pkg.ckpt").rglob("*"))
            assert not any(p.name.startswith(killed[0]) for p in ckpts)

    events: list[PatientEvent] = []

    def on_event(e: PatientEvent) -> None:
        events.append(e)
        kill_first(e)

    res = distill_site(mr_site, cfg, tmp_path / "pkg", workers=2, on_event=on_event)
    assert killed and killed[0] in res.retried
    assert any(e.kind == "retry" and e.key == killed[0] for e in events)
    assert _files(res.package) == sequential


def test_a_patient_that_fails_in_its_worker_is_named_and_the_run_does_not_hang(
    mr_site: list[SliceSet], cfg: DistillConfig, tmp_path: Path,
) -> None:
    # a method registered in this test process only: the spawned workers do not know it
    from medidd.distill.base import register_method
    from medidd.distill.baselines import _common  # noqa: F401  (a module the workers import)

    @register_method("only_here")
    class OnlyHere:
        name = "only_here"
        ships_real_slices = False
        needs_prior = False

        def __init__(self, cfg: DistillConfig) -> None:
            pass

    bad = cfg.model_copy(update={"method": "only_here"})
    t0 = time.monotonic()
    with pytest.raises(DistillError) as err:
        distill_site(mr_site[:2], bad, tmp_path / "pkg", workers=2)
    text = str(err.value)
    assert "2 of 2 patients could not be distilled" in text
    assert all(f"patient {s.patient_key}" in text for s in mr_site[:2])
    assert "only_here" in text  # the worker's own error, not a generic one
    assert time.monotonic() - t0 < 300
    assert not (tmp_path / "pkg").exists()


@pytest.mark.parametrize(
    ("workers", "cores", "expected", "warns"),
    [(1, 2, 1, False), (2, 2, 2, False), (3, 2, 2, True), (64, 4, 4, True)],
)
def test_more_workers_than_cores_are_clamped_with_a_warning(
    workers: int, cores: int, expected: int, warns: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="medidd.distill.engines"):
        assert resolve_workers(workers, cores) == expected
    assert ("more than the" in caplog.text) == warns


@pytest.mark.parametrize("workers", [0, -1])
def test_no_worker_is_a_clear_error(
    workers: int, mr_site: list[SliceSet], cfg: DistillConfig, tmp_path: Path,
) -> None:
    with pytest.raises(EngineError, match="at least 1 worker"):
        ProcessPoolEngine(workers)
    with pytest.raises(DistillError, match=f"workers={workers}: at least 1 worker"):
        distill_site(mr_site, cfg, tmp_path / "pkg", workers=workers)


# --- Ray ------------------------------------------------------------------------------------


def test_a_ray_address_that_does_not_answer_fails_within_seconds(
    mr_site: list[SliceSet], cfg: DistillConfig, tmp_path: Path,
) -> None:
    from medidd.distill.ray_engine import RayEngine

    t0 = time.monotonic()
    with pytest.raises(EngineError, match=r"127\.0\.0\.1:1 does not answer"):
        distill_site(mr_site, cfg, tmp_path / "pkg", engine=RayEngine("127.0.0.1:1"))
    assert time.monotonic() - t0 < 15
    with pytest.raises(EngineError, match="not HOST:PORT"):
        distill_site(mr_site, cfg, tmp_path / "pkg", engine=RayEngine("headnode"))


def test_ray_auto_without_a_cluster_says_how_to_start_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    from medidd.distill import ray_engine

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_engine, "CURRENT_CLUSTER", tmp_path / "none")
    with pytest.raises(EngineError, match="ray start --head"):
        ray_engine.resolve_address("auto")


@pytest.fixture()
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Ray head (2 CPUs) started for this test, ended by PID with its processes."""
    from aggregator.procs import Procs, free_port

    port = free_port()
    temp = Path(f"/tmp/medidd-ray-{os.getpid()}")  # Ray's socket paths must stay short
    procs = Procs(tmp_path_factory.mktemp("ray-logs"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
           "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
           "--disable-usage-stats", "--temp-dir", str(temp)]
    try:
        procs.start("ray", cmd, env)
        assert procs.wait_log("ray", "Ray runtime started", 120), procs.log("ray")
        yield f"127.0.0.1:{port}"
    finally:
        procs.stop_all()
        subprocess.run(["rm", "-rf", str(temp)], check=False)


@pytest.mark.slow
def test_ray_gives_the_same_package_and_resumes_from_the_same_checkpoints(
    mr_site: list[SliceSet], cfg: DistillConfig, sequential: dict[str, bytes], tmp_path: Path,
    ray_head: str,
) -> None:
    from medidd.distill.ray_engine import RayEngine

    out = tmp_path / "pkg"
    # a first run that stops after one patient (as a crash would): its checkpoint stays
    first = mr_site[0].patient_key

    class Stop(Exception):
        pass

    def stop_after_first(e: PatientEvent) -> None:
        if e.kind == "done":
            raise Stop

    with pytest.raises(Stop):
        distill_site(mr_site, cfg, out, engine=RayEngine(ray_head, max_in_flight=1),
                     on_event=stop_after_first)
    assert len(list((tmp_path / ".pkg.ckpt").rglob("*.pt"))) == 1
    events: list[PatientEvent] = []
    res = distill_site(mr_site, cfg, out, engine=RayEngine(ray_head), on_event=events.append)
    assert res.resumed == [first]
    assert sorted(e.key for e in events if e.kind == "done") == sorted(
        s.patient_key for s in mr_site[1:])
    assert all(e.where.startswith("ray node") for e in events if e.kind == "done")
    assert _files(res.package) == sequential


@pytest.mark.parametrize("name", ["engines", "patient", "ray_engine", "run"])
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"medidd.distill.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0
