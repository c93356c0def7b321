"""Distil a whole site: prior, every patient (resumable), and the package that may leave.

Per patient the seed is ``derive(run seed, patient key)`` (:func:`medidd.seeds.derive`), so
the result does not depend on the order of patients or on interruptions: each finished patient
is check-pointed (atomically) under ``.<out>.ckpt/<config hash>-<prior hash>/`` (or a
``checkpoints`` folder the caller keeps, e.g. a benchmark sharing patients across folds); a
rerun after a crash or a ``kill -9`` reuses the finished ones and produces the same package as
an uninterrupted run. The package itself is written atomically by
:func:`medidd.package.write_package`.

Patients run in this process (``workers=1``), in a pool of worker processes (``workers=N``)
or on any other :class:`~medidd.distill.engines.PatientEngine` (a Ray cluster:
:class:`~medidd.distill.ray_engine.RayEngine`); every engine runs the same per-patient
function (:class:`~medidd.distill.patient.PatientDistiller`) and hands each result back
here, where its checkpoint is written, so the package is the same whichever engine ran
it (bit for bit with the same torch thread count per patient).

Example:
    >>> from medidd.seeds import derive
    >>> derive(0, "p-00ab") == derive(0, "p-00ab") != derive(1, "p-00ab")
    True
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

import medidd
from medidd.atomic import atomic_write_bytes
from medidd.degrade.spec import DegradationSpec, default_spec
from medidd.distill.base import Distilled, Progress, method_factory
from medidd.distill.config import LOCAL_DEGRADATIONS, DistillConfig, images_per_patient
from medidd.distill.engines import (
    InProcessEngine,
    OnEvent,
    PatientEngine,
    PatientEvent,
    ProcessPoolEngine,
    resolve_workers,
)
from medidd.distill.matching import check_matching_nets
from medidd.distill.patient import PatientOutput, SiteSetup, prior_digest
from medidd.package import config_hash, write_package
from medidd.package.io import SHARD_BYTES
from medidd.preprocess.slices import SliceSet
from medidd.prior import Prior, build_prior
from medidd.privacy.canaries import prepare_site

logger = logging.getLogger(__name__)

PatientProgress = Callable[[int, int, str], None]


class DistillError(ValueError):
    """A distillation that cannot start; the message lists every problem and the fix."""


@dataclass
class SiteResult:
    """What :func:`distill_site` produced: the package path, per-patient timings (seconds
    of the patients computed in this run), the patients taken from checkpoints, those redone
    after their worker died, and ``wall_s``, the seconds from the first patient to the
    package."""

    package: Path
    n_patients: int
    seconds_per_patient: dict[str, float] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    info: dict[str, dict[str, float]] = field(default_factory=dict)
    retried: list[str] = field(default_factory=list)
    wall_s: float = 0.0


def resolve_degradation(cfg: DistillConfig, modality: str) -> DegradationSpec:
    """The configured degradation, or the task's default for ``modality``."""
    return cfg.degradation or default_spec(cfg.task, modality)


def method_config(cfg: DistillConfig, spec: DegradationSpec) -> dict[str, Any]:
    """Everything that determines the output, as recorded in the manifest (degradation
    resolved to the spec actually used)."""
    data: dict[str, Any] = cfg.model_dump(mode="json")
    data["degradation"] = spec.model_dump(mode="json")
    prior = data["prior"]
    prior.pop("path", None)  # site-local; the manifest's prior.sha256 says which
    for key in ("sha256", "region"):  # unset: as before they existed (same config hash)
        if prior.get(key) is None:
            prior.pop(key, None)
    return data


def audit_split(cohort: list[SliceSet], cfg: DistillConfig) -> list[SliceSet]:
    """The slices the distiller sees: each patient's member slabs, with the included
    canaries planted (:func:`medidd.privacy.canaries.prepare_site`; the audit re-derives the
    held-out slabs and the canaries from ``cfg.audit`` and ``cfg.seed``)."""
    try:
        prep = prepare_site(cohort, cfg.audit, cfg.seed)
    except ValueError as exc:
        raise DistillError(f"cannot distil this site:\n  {exc}") from None
    n = len(prep.holdout)
    logger.info("audit: %d held-out slices of %d patient%s never distilled; %d canaries "
                "(%d included)", sum(len(h) for h in prep.holdout), n, "" if n == 1 else "s",
                len(prep.canaries), sum(c.included for c in prep.canaries))
    return prep.distill


def check_site(cohort: list[SliceSet], cfg: DistillConfig) -> None:
    """Raise :class:`DistillError` listing every patient that cannot be distilled."""
    problems = []
    if not cohort:
        problems.append("no usable patient: run `medidd-node inspect` to see what was skipped")
    modalities = sorted({s.modality for s in cohort})
    if len(modalities) > 1:
        problems.append(f"patients of several modalities {modalities}: distil one at a time")
    method = method_factory(cfg.method)(cfg)
    if cfg.dp.enabled and cfg.method != "spg_gm":
        problems.append(f"dp.enabled is implemented for method spg_gm, not '{cfg.method}'")
    if cfg.dp.enabled and cfg.matching.objective != "gm":
        problems.append("dp.enabled needs matching.objective=gm (lfd reads real images directly; "
                        "tm's expert trajectories are trained on them without noise)")
    m = cfg.matching
    if cfg.method != "spg_gm" and ("tm" in m.terms or m.nets != ["plain"]):
        problems.append(f"matching.objective {m.objective} and matching.nets {m.nets} are "
                        f"implemented for method spg_gm, not '{cfg.method}'; use objective gm "
                        "and nets [plain]")
    if method.needs_prior or cfg.method in ("pixel_gm", "dc_real", "dc_noise"):
        size = min((min(s.images.shape[-2:]) for s in cohort), default=m.patch_size)
        try:
            check_matching_nets(m.nets, m.net_width, m.net_depth, min(m.patch_size, size))
        except ValueError as exc:
            problems.append(str(exc))
    if cfg.prior.fit_intensity and modalities and modalities != ["MR"]:
        problems.append(f"prior.fit_intensity matches MR intensities, which have no unit; this "
                        f"site is {', '.join(modalities)} (CT is in HU, its prior is fitted by "
                        "prior.fit_size): set prior.fit_intensity to false")
    problems += _patch_problems(cfg, cohort, resolve_degradation(cfg, modalities[0])
                                if len(modalities) == 1 else None)
    for s in cohort:
        if len(s) < cfg.min_slices:
            problems.append(
                f"patient {s.patient_key}: {len(s)} usable slices, fewer than min_slices="
                f"{cfg.min_slices}; exclude the patient or lower min_slices"
            )
        elif method.ships_real_slices and cfg.ipc > len(s) and cfg.method != "full":
            problems.append(
                f"patient {s.patient_key}: ipc={cfg.ipc} is more than its {len(s)} slices; "
                "lower --ipc"
            )
    if problems:
        raise DistillError("cannot distil this site:\n  " + "\n  ".join(problems))


def _patch_problems(cfg: DistillConfig, cohort: list[SliceSet],
                    spec: DegradationSpec | None) -> list[str]:
    """Why ``patches.size`` cannot be used here (empty when unset or fine)."""
    size = cfg.patches.size
    if size is None:
        return []
    out = []
    if cfg.method not in ("spg_gm", "prior_only"):
        out.append(f"patches.size is implemented for the prior-based methods spg_gm and "
                   f"prior_only, not '{cfg.method}'; unset patches.size")
    side = min((min(s.images.shape[-2:]) for s in cohort), default=size + 1)
    if size >= side:
        out.append(f"patches.size={size} is not smaller than the {side} px slices; choose a "
                   f"size below {side} (e.g. {side // 2}) or unset patches.size")
    if cfg.method == "spg_gm" and cfg.matching.patch_size > size:
        out.append(f"matching.patch_size={cfg.matching.patch_size} is larger than "
                   f"patches.size={size}; lower matching.patch_size to at most {size}")
    if spec is not None and spec.kind not in LOCAL_DEGRADATIONS:
        out.append(f"patches.size with a '{spec.kind}' degradation: a patch's low-dose noise "
                   "depends on the attenuation of the whole body, which a patch does not "
                   "carry, and the aggregator re-draws LQ from the patches; ship whole slices "
                   "(unset patches.size)")
    return out


def dp_manifest(
    cfg: DistillConfig, infos: list[dict[str, float]], *, prior_local: bool
) -> dict[str, Any] | None:
    """The manifest's ``dp`` record: the worst (largest) per-patient epsilon actually spent,
    the noise and sampling used, and what the guarantee does not cover (a prior computed from
    local patients; each patient's body size when the prior was fitted to it)."""
    if not cfg.dp.enabled:
        return None
    if cfg.method != "spg_gm":
        raise DistillError(f"dp.enabled is implemented for method spg_gm, not '{cfg.method}'")
    return {
        "enabled": True,
        "epsilon": max(i["dp_epsilon"] for i in infos),
        "delta": cfg.dp.delta,
        "noise_multiplier": min(i["dp_noise_multiplier"] for i in infos),
        "max_grad_norm": cfg.dp.max_grad_norm,
        "steps": int(max(i["dp_steps"] for i in infos)),
        "sample_rate": max(i["dp_sample_rate"] for i in infos),
        "accountant": "rdp",
        "covers": ["synthetic_hq", "synthetic_lq", "per_patient_slice_level"],
        "not_covered": (["prior_from_local_patients"] if prior_local else [])
        + (["patient_body_size"] if any("wed_target_px" in i for i in infos) else [])
        + (["patient_intensity_histogram"] if any("intensity_quantiles" in i for i in infos)
           else []),
    }


def _save_ckpt(path: Path, d: Distilled) -> None:
    buf = io.BytesIO()
    torch.save({"hq": d.hq, "lq": d.lq, "lq_seed": d.lq_seed, "info": d.info}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_ckpt(path: Path) -> Distilled | None:
    try:
        data = torch.load(path, weights_only=True)
        return Distilled(data["hq"], data["lq"], int(data["lq_seed"]), dict(data["info"]))
    except Exception as exc:  # a damaged checkpoint is recomputed
        logger.warning("checkpoint unreadable (%s); recomputing that patient", type(exc).__name__)
        return None


def distill_site(
    cohort: list[SliceSet],
    cfg: DistillConfig,
    out: Path,
    *,
    overwrite: bool = False,
    on_patient: PatientProgress | None = None,
    on_step: Progress | None = None,
    keep_checkpoints: bool = False,
    prior: Prior | None = None,
    checkpoints: Path | None = None,
    workers: int = 1,
    engine: PatientEngine | None = None,
    on_event: OnEvent | None = None,
    dtype_on_disk: str = "float32",
    shard_bytes: int | None = SHARD_BYTES,
) -> SiteResult:
    """Distil every patient of ``cohort`` with ``cfg`` and write the package to ``out``.

    Args:
        cohort: the site's patients (one modality).
        cfg: the distillation config.
        out: the package folder.
        overwrite: replace a different package at ``out``.
        on_patient: called when a patient starts with (index in ``cohort``, total, key).
        on_step: the method's per-step progress (patients run in this process only).
        keep_checkpoints: keep the per-patient checkpoints after the package is written.
        prior: a prior built beforehand (a shared prior, or one reused across runs); default:
            built here from ``cfg.prior`` for methods that need one.
        checkpoints: a folder for per-patient checkpoints that the caller owns (kept; keyed by
            config and prior hash, so one folder serves many runs); default: beside ``out``,
            removed after the package is written unless ``keep_checkpoints``.
        workers: patients distilled in parallel by a pool of this many worker processes
            (:class:`~medidd.distill.engines.ProcessPoolEngine`; more than the CPU cores
            are clamped, with a warning); 1 runs them here, one after another.
        engine: run the patients elsewhere (e.g. :class:`~medidd.distill.ray_engine.RayEngine`);
            overrides ``workers``.
        on_event: called with every :class:`~medidd.distill.engines.PatientEvent` (start,
            resumed, done, retry, failed), in this process.
        dtype_on_disk: ``"float32"`` or ``"float16"`` (half the bytes on disk and on the
            wire; at most 2.4e-4 of rounding in [0, 1]).
        shard_bytes: a package whose arrays are larger is split into shards of whole
            patients of at most this many bytes per file (format version 2), which the
            aggregator streams one by one; None writes one file per array.

    Raises :class:`DistillError` before any work when the site cannot be distilled, and
    after the others are done (and check-pointed) when some patients failed, naming each;
    ``FileExistsError`` when ``out`` already holds a different package (``overwrite=True``
    replaces it). Nothing is written under ``out`` until the whole package is ready.

    Example:
        >>> distill_site([], DistillConfig(), Path("pkg"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        medidd.distill.run.DistillError: cannot distil this site:
          no usable patient: ...
    """
    check_site(cohort, cfg)
    if engine is None:
        try:
            workers = resolve_workers(workers)
        except ValueError as exc:
            raise DistillError(str(exc)) from None
    cohort = audit_split(cohort, cfg)
    out = Path(out)
    modality = cohort[0].modality
    spec = resolve_degradation(cfg, modality)
    mconfig = method_config(cfg, spec)
    chash = config_hash(mconfig)
    manifest = out / "manifest.json"
    if manifest.is_file() and not overwrite:
        existing = json.loads(manifest.read_text()).get("method_config_hash")
        if existing != chash:
            raise FileExistsError(
                f"{out} already holds a different package (another config or data); choose "
                "another --out or pass --overwrite"
            )
    window = cohort[0].window if modality == "CT" else (0.0, 1.0)
    method = method_factory(cfg.method)(cfg)
    if not method.needs_prior:
        prior = None
    elif prior is None:
        prior = build_prior(
            cfg.prior.kind,
            cohort,
            images_per_patient(cfg, cohort[0].size),
            modality=modality,
            size=cohort[0].size,
            window=window,
            registered=cfg.prior.registered,
            registration_iterations=cfg.prior.registration_iterations,
            path=cfg.prior.path,
            sha256=cfg.prior.sha256,
            region=cfg.prior.region,
        )
    setup = SiteSetup(cfg, spec, window, prior)
    own_ckpt = checkpoints is None
    root = out.parent / f".{out.name}.ckpt" if checkpoints is None else Path(checkpoints)
    ckpt_dir = root / f"{chash[:16]}-{prior_digest(prior)[:8]}"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    result = SiteResult(package=out, n_patients=len(cohort))
    t0 = time.perf_counter()
    outputs = _run_patients(cohort, setup, ckpt_dir, result, on_patient, on_event,
                            engine or _default_engine(workers, on_step))
    dp = dp_manifest(cfg, [d.info for d in outputs], prior_local=bool(prior and prior.local_data))
    hq = torch.cat([d.hq for d in outputs])
    lq = torch.cat([d.lq for d in outputs])
    result.package = write_package(
        out,
        hq,
        lq,
        task=cfg.task,
        modality=modality,
        degradation=spec.model_dump(mode="json"),
        window=window,
        patients=[
            (s.patient_key, int(d.hq.shape[0])) for s, d in zip(cohort, outputs, strict=True)
        ],
        ipc=images_per_patient(cfg, cohort[0].size),
        method=cfg.method,
        seed=cfg.seed,
        method_config=mconfig,
        method_config_hash=chash,
        dp=dp,
        software_version=medidd.__version__,
        prior=prior.info if prior is not None else None,
        overwrite=overwrite,
        dtype_on_disk=dtype_on_disk,
        shard_bytes=shard_bytes,
    )
    result.wall_s = time.perf_counter() - t0
    if own_ckpt and not keep_checkpoints:
        shutil.rmtree(root, ignore_errors=True)
    return result


def _default_engine(workers: int, on_step: Progress | None) -> PatientEngine:
    return InProcessEngine(on_step) if workers == 1 else ProcessPoolEngine(workers)


def _run_patients(
    cohort: list[SliceSet],
    setup: SiteSetup,
    ckpt_dir: Path,
    result: SiteResult,
    on_patient: PatientProgress | None,
    on_event: OnEvent | None,
    engine: PatientEngine,
) -> list[Distilled]:
    """Every patient's output in cohort order: from its checkpoint, or computed by
    ``engine`` (each result check-pointed here, atomically, as it arrives)."""
    total = len(cohort)
    index = {s.patient_key: i for i, s in enumerate(cohort)}
    found: dict[str, Distilled] = {}

    def emit(event: PatientEvent) -> None:
        event = replace(event, done=len(found), total=total)
        if event.kind == "start" and on_patient is not None:
            on_patient(index[event.key], total, event.key)
        if event.kind == "retry":
            result.retried.append(event.key)
        if on_event is not None:
            on_event(event)

    def on_done(out: PatientOutput) -> None:
        _save_ckpt(ckpt_dir / f"{out.key}.pt", out.distilled)
        found[out.key] = out.distilled
        result.seconds_per_patient[out.key] = out.seconds
        emit(PatientEvent("done", out.key, where=out.where, seconds=out.seconds))

    todo = []
    for real in cohort:
        ckpt = ckpt_dir / f"{real.patient_key}.pt"
        done = _load_ckpt(ckpt) if ckpt.is_file() else None
        if done is None:
            todo.append(real)
            continue
        found[real.patient_key] = done
        result.resumed.append(real.patient_key)
        emit(PatientEvent("resumed", real.patient_key))
    failures = engine.run(setup, todo, on_done, emit) if todo else []
    if failures:
        lines = [f"patient {f.key}: {f.reason}" for f in failures]
        raise DistillError(
            f"{len(failures)} of {total} patients could not be distilled (the other "
            f"{len(found)} are check-pointed; run the same command again to retry):\n  "
            + "\n  ".join(lines))
    for s in cohort:
        result.info[s.patient_key] = found[s.patient_key].info
    return [found[s.patient_key] for s in cohort]
