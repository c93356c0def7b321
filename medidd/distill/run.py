"""Distil a whole site: prior, every patient (resumable), and the package that may leave.

Per patient the seed is derived from the run seed and the patient's pseudonymous key, so the
result does not depend on the order of patients or on interruptions: each finished patient is
check-pointed (atomically) under ``<out>.ckpt/<config hash>/``; a rerun after a crash or a
``kill -9`` reuses the finished ones and produces the same package as an uninterrupted run.
The package itself is written atomically by :func:`medidd.package.write_package`.

Example:
    >>> plan_seed(0, "p-00ab") == plan_seed(0, "p-00ab") != plan_seed(1, "p-00ab")
    True
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import medidd
from medidd._atomic import atomic_write_bytes
from medidd.degrade.spec import DegradationSpec, build_degradation, default_spec
from medidd.distill.base import DistillContext, Distilled, Progress, method_factory
from medidd.distill.config import DistillConfig
from medidd.package import config_hash, write_package
from medidd.preprocess.slices import SliceSet
from medidd.prior import build_prior

logger = logging.getLogger(__name__)

PatientProgress = Callable[[int, int, str], None]


class DistillError(ValueError):
    """A distillation that cannot start; the message lists every problem and the fix."""


@dataclass
class SiteResult:
    """What :func:`distill_site` produced: the package path and per-patient timings."""

    package: Path
    n_patients: int
    seconds_per_patient: dict[str, float] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    info: dict[str, dict[str, float]] = field(default_factory=dict)


def plan_seed(seed: int, patient_key: str) -> int:
    """A 31-bit seed for one patient, stable across runs, machines and patient order."""
    digest = hashlib.sha256(f"{seed}:{patient_key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_degradation(cfg: DistillConfig, modality: str) -> DegradationSpec:
    """The configured degradation, or the task's default for ``modality``."""
    return cfg.degradation or default_spec(cfg.task, modality)


def method_config(cfg: DistillConfig, spec: DegradationSpec) -> dict[str, Any]:
    """Everything that determines the output, as recorded in the manifest (degradation
    resolved to the spec actually used)."""
    data: dict[str, Any] = cfg.model_dump(mode="json")
    data["degradation"] = spec.model_dump(mode="json")
    return data


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
        problems.append("dp.enabled needs matching.objective=gm (lfd reads real images directly)")
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
        + (["patient_body_size"] if any("wed_target_px" in i for i in infos) else []),
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
) -> SiteResult:
    """Distil every patient of ``cohort`` with ``cfg`` and write the package to ``out``.

    Raises :class:`DistillError` before any work when the site cannot be distilled, and
    ``FileExistsError`` when ``out`` already holds a different package (``overwrite=True``
    replaces it). Nothing is written under ``out`` until the whole package is ready.
    """
    check_site(cohort, cfg)
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
    device = resolve_device(cfg.device)
    window = cohort[0].window if modality == "CT" else (0.0, 1.0)
    degrade = build_degradation(spec, window=window).to(device)
    match_degrade = None
    if cfg.matching.fast_degradation and spec.kind == "ct_lowdose" and not spec.image_domain:
        fast = spec.model_copy(update={"image_domain": True})
        match_degrade = build_degradation(fast, window=window).to(device)
    method = method_factory(cfg.method)(cfg)
    prior = None
    if method.needs_prior:
        prior = build_prior(
            cfg.prior.kind,
            cohort,
            cfg.ipc,
            modality=modality,
            size=cohort[0].size,
            window=window,
            registered=cfg.prior.registered,
            registration_iterations=cfg.prior.registration_iterations,
        )
    ckpt_dir = out.parent / f".{out.name}.ckpt" / chash[:16]
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    result = SiteResult(package=out, n_patients=len(cohort))
    outputs: list[Distilled] = []
    for i, real in enumerate(cohort):
        if on_patient is not None:
            on_patient(i, len(cohort), real.patient_key)
        ckpt = ckpt_dir / f"{real.patient_key}.pt"
        done = _load_ckpt(ckpt) if ckpt.is_file() else None
        if done is not None:
            result.resumed.append(real.patient_key)
        else:
            t0 = time.perf_counter()
            ctx = DistillContext(
                ipc=cfg.ipc,
                degrade=degrade,
                seed=plan_seed(cfg.seed, real.patient_key),
                device=device,
                prior=prior,
                progress=on_step,
                match_degrade=match_degrade,
            )
            done = method.distill(real, ctx)
            result.seconds_per_patient[real.patient_key] = time.perf_counter() - t0
            _save_ckpt(ckpt, done)
        result.info[real.patient_key] = done.info
        outputs.append(done)
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
        ipc=cfg.ipc,
        method=cfg.method,
        seed=cfg.seed,
        method_config=mconfig,
        method_config_hash=chash,
        dp=dp,
        software_version=medidd.__version__,
        overwrite=overwrite,
    )
    if not keep_checkpoints:
        shutil.rmtree(ckpt_dir.parent, ignore_errors=True)
    return result
