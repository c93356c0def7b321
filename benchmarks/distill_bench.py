"""The distillation benchmark on cohort v2, through the product's own code path.

Every number comes from the functions a site and the aggregator run: the real samples are
written as a hospital's DICOM tree (``make_sample_patients``), read back by the site's
ingestion and preprocessing (``prepare_patients``, with its cache), distilled by
:func:`medidd.distill.run.distill_site` (the function ``medidd-node distill`` calls: site
checks, seeds, prior, checkpoints, package) into a real package, read back with
``read_package``, and scored by :func:`medidd.train.train_and_score` (the one measurement
path: downstream DnCNN with LQ re-drawn every epoch, held-out LQ from ``heldout_lq``).

Folds are patient-level. CT: the 10 body CTs (chest, abdomen, spine) in 5 folds of 2 held-out
patients (each fold's site has 8); the 2 head CTs are never at a site: every CT model is also
scored on them (``ood_*``: out of distribution). MR x2: the 7 MR subjects in 4 folds (2, 2, 2, 1
held out). A patient distilled with the same config and prior in several folds is distilled
once (``distill_site``'s checkpoint folder is shared, keyed by config and prior hash).

    python -m benchmarks.distill_bench prepare --samples data/samples --work out/bench
    python -m benchmarks.distill_bench run --work out/bench [--settings ct25] [--methods ...]
    python -m benchmarks.distill_bench report --work out/bench --out docs/benchmarks

(``all`` runs the three in a row; ``make bench`` calls it.) Rows are appended to
``rows-<setting>-<fold>.jsonl`` as they finish, so a run is restartable; without
``--methods``/``--ipc`` the run goes through :data:`PLAN` in order (the default's rows first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medidd.lookup import look_up_option

COHORT = "v2"
CODE_PATH = "product"
#: the benchmark's site salt (pseudonyms are stable across runs of the benchmark)
SALT = b"medidd-benchmark-salt-0000000000"
#: folds per modality (patient-level; held-out patients of fold f: every n-th from f)
N_FOLDS = {"CT": 5, "MR": 4}

SETTINGS: dict[str, dict[str, Any]] = {
    "ct25": {
        "modality": "CT",
        "task": "denoise",
        "degradation": {"kind": "ct_lowdose", "dose": 0.25},
        "label": "dose=0.25",
    },
    "ct10": {
        "modality": "CT",
        "task": "denoise",
        "degradation": {"kind": "ct_lowdose", "dose": 0.10},
        "label": "dose=0.10",
    },
    "mr_x2": {
        "modality": "MR",
        "task": "sr",
        "degradation": {"kind": "kspace_sr", "scale": 2},
        "label": "x2",
    },
}
#: benchmark label -> (registered method, prior kind or None for the configured default,
#: config overrides of the variant). Every label is a :class:`DistillConfig` run through
#: :func:`medidd.distill.run.distill_site`, nothing else.
#: Earlier defaults keep the settings they ran with, so a label means what was run: the
#: ``_nofit`` rows (and the variants listed after them) predate ``prior.fit_size``; the
#: ``_uncentred`` rows, ``spg_gm_long`` and those ``_nofit`` variants predate ``spg.centre`` /
#: ``spg.grad_clip`` (the residual died on 3 of 4 patients); the ``spg_gm_scale03`` family
#: predates ``spg.residual_scale: 0.1`` (at 0.3 the centred residual saturated into binary
#: blobs).
NOFIT: dict[str, Any] = {"prior": {"fit_size": False}}
SCALE03: dict[str, Any] = {"spg": {"residual_scale": 0.3}}
UNCENTRED: dict[str, Any] = {"spg": {"centre": False, "grad_clip": 0.0, "residual_scale": 0.3}}


def _merged(*variants: dict[str, Any]) -> dict[str, Any]:
    """Merge config overrides section by section (later ones win inside a section)."""
    out: dict[str, Any] = {}
    for v in variants:
        for section, values in v.items():
            out[section] = {**out.get(section, {}), **values}
    return out


OLD = _merged(NOFIT, UNCENTRED)
METHODS: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "full": ("full", None, {}),
    "random": ("random", None, {}),
    "herding": ("herding", None, {}),
    "kcenter": ("kcenter", None, {}),
    "dc_real": ("dc_real", None, {}),
    "dc_noise": ("dc_noise", None, {}),
    "dm": ("dm", None, {}),
    "idc": ("idc", None, {}),
    "tripled": ("tripled", None, {}),
    "prior_only": ("prior_only", None, {}),
    "spg_gm": ("spg_gm", None, {}),
    "pixel_gm": ("pixel_gm", None, {}),
    # the default with one setting changed
    "spg_gm_scale005": ("spg_gm", None, {"spg": {"residual_scale": 0.05}}),
    "spg_gm_scale01_lfd": ("spg_gm", None, {"matching": {"objective": "lfd"}}),
    "spg_gm_scale01_lr001": ("spg_gm", None, {"matching": {"lr_syn": 0.001}}),
    # the centred generator at residual_scale 0.3, then one setting changed each
    "spg_gm_scale03": ("spg_gm", None, SCALE03),
    "spg_gm_noclip": ("spg_gm", None, _merged(SCALE03, {"spg": {"grad_clip": 0.0}})),
    "spg_gm_lr001": ("spg_gm", None, _merged(SCALE03, {"matching": {"lr_syn": 0.001}})),
    "spg_gm_gm": ("spg_gm", None, _merged(SCALE03, {"matching": {"objective": "gm"}})),
    "spg_gm_lfd": ("spg_gm", None, _merged(SCALE03, {"matching": {"objective": "lfd"}})),
    "spg_gm_lfd10": ("spg_gm", None, _merged(SCALE03, {"matching": {"lfd_weight": 10.0}})),
    "spg_gm_gradient": ("spg_gm", None, _merged(SCALE03, {"spg": {"structure": "gradient"}})),
    # earlier defaults
    "spg_gm_uncentred": ("spg_gm", None, UNCENTRED),
    "spg_gm_long": ("spg_gm", None, _merged(UNCENTRED, {"matching": {"iterations": 60}})),
    "prior_only_nofit": ("prior_only", None, NOFIT),
    "spg_gm_nofit": ("spg_gm", None, OLD),
    "spg_gm_mean": ("spg_gm", "mean", OLD),
    "spg_gm_medoid": ("spg_gm", "medoid", OLD),
    "prior_only_mean": ("prior_only", "mean", NOFIT),
    "prior_only_medoid": ("prior_only", "medoid", NOFIT),
    "spg_gm_highpass": ("spg_gm", None, _merged(OLD, {"spg": {"residual": "highpass"}})),
    "spg_gm_fullres": ("spg_gm", None, _merged(OLD, {"spg": {"residual": "full"}})),
    "spg_gm_gm_only": ("spg_gm", None, _merged(OLD, {"matching": {"objective": "gm"}})),
    "spg_gm_lfd_only": ("spg_gm", None, _merged(OLD, {"matching": {"objective": "lfd"}})),
    # issue 12's levers, each the default with one switch
    "spg_gm_tm": ("spg_gm", None, {"matching": {"objective": "tm"}}),
    "spg_gm_tm_lfd": ("spg_gm", None, {"matching": {"objective": "tm+lfd"}}),
    # gm+lfd given trajectory matching's wall time (43 s against 29 s per patient: 1.5x the
    # iterations), so the two compare at equal time
    "spg_gm_equaltime": ("spg_gm", None, {"matching": {"iterations": 30}}),
    # four architectures per step at a quarter of the iterations: the default's wall time
    "spg_gm_nets4": ("spg_gm", None, {"matching": {"nets": ["plain", "dncnn", "redcnn", "unet"],
                                                   "iterations": 5}}),
    "spg_gm_shared": ("spg_gm", "shared", {}),
    "prior_only_shared": ("prior_only", "shared", {}),
    # the registered mean of the site's own patients (not DP; near the ideal line): is the
    # atlas's contrast what fails MR?
    "spg_gm_meanprior": ("spg_gm", "mean", {}),
    # MR: the atlas with each patient's intensity histogram (16 quantiles)
    "spg_gm_fitint": ("spg_gm", None, {"prior": {"fit_intensity": True}}),
    "prior_only_fitint": ("prior_only", None, {"prior": {"fit_intensity": True}}),
    "spg_gm_nowed": ("spg_gm", None, {"prior": {"fit_size": False}}),
    # 64 px patches at the bytes of whole slices (MR and other local degradations only)
    "spg_gm_patch64": ("spg_gm", None, {"patches": {"size": 64}}),
}
#: downstream training variants: ``label@variant`` trains the label's package with these
#: :class:`~medidd.train.TrainConfig` fields (per setting; a setting without one refuses it)
TRAIN_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    # the aggregator trains over doses from half to twice the package's 25 % (10 %: 5-40 %)
    "range": {"ct25": {"lq_range": {"field": "dose", "low": 0.125, "high": 0.5}},
              "ct10": {"lq_range": {"field": "dose", "low": 0.05, "high": 0.4}}},
}
#: the shared prior's privacy budget in the ``*_shared`` labels (the smallest epsilon whose
#: MR bins pass min_patients at this cohort size: docs/benchmarks/prior.md)
SHARED_EPSILON = 8.0


def split_label(label: str, setting: str) -> tuple[str, dict[str, Any]]:
    """``"spg_gm@range"`` -> ``("spg_gm", TrainConfig overrides for the setting)``.

    Example:
        >>> split_label("full@range", "ct25")[1]["lq_range"]["high"]
        0.5
        >>> split_label("spg_gm", "mr_x2")
        ('spg_gm', {})
    """
    base, _, variant = label.partition("@")
    base = look_up_option(base, list(METHODS), what="benchmark method")
    if not variant:
        return base, {}
    variant = look_up_option(variant, list(TRAIN_VARIANTS), what="training variant")
    if setting not in TRAIN_VARIANTS[variant]:
        raise ValueError(f"training variant '{variant}' is not defined for setting {setting}")
    return base, TRAIN_VARIANTS[variant][setting]
IPCS = (1, 2, 5)


def method_config(label: str, setting: str, ipc: int, device: str = "cpu") -> Any:
    """The :class:`DistillConfig` a benchmark label runs with in ``setting`` at ``ipc``.

    Example:
        >>> method_config("spg_gm_scale03", "ct25", 2).spg.residual_scale
        0.3
    """
    from medidd.distill.config import DistillConfig

    setting = look_up_option(setting, list(SETTINGS), what="benchmark setting")
    label, _ = split_label(label, setting)
    name, prior_kind, variant = METHODS[label]
    st = SETTINGS[setting]
    base = {
        **DistillConfig().model_dump(mode="json"),
        "method": name,
        "ipc": max(ipc, 1),
        "task": st["task"],
        "degradation": st["degradation"],
        "device": device,
    }
    if prior_kind is not None:
        base["prior"] = {**base["prior"], "kind": prior_kind}
    for section, values in variant.items():
        base[section] = {**base[section], **values}
    return DistillConfig.model_validate(base)


#: the default run, in order: (setting, labels, IPCs). The private default and its references
#: come first, so a run stopped early has the rows that matter most.
CORE = ["full", "random", "prior_only", "spg_gm"]
LEVERS_CT = ["spg_gm@range", "full@range", "spg_gm_tm", "spg_gm_equaltime", "spg_gm_nets4",
             "spg_gm_shared", "spg_gm_nowed"]
LEVERS_MR = ["spg_gm_tm", "spg_gm_shared", "spg_gm_patch64", "spg_gm_fitint",
             "prior_only_fitint", "spg_gm_meanprior"]
BASELINES = ["herding", "kcenter", "pixel_gm", "dc_real", "dc_noise", "dm", "idc", "tripled"]
PLAN: list[tuple[str, list[str], list[int]]] = [
    ("ct25", CORE, [2]),
    ("mr_x2", CORE, [2]),
    ("ct10", CORE, [2]),
    # issue 12's levers, each against the default on the same folds (docs/method.md)
    ("ct25", LEVERS_CT, [2]),
    ("mr_x2", LEVERS_MR, [2]),
    ("ct25", ["random", "prior_only", "spg_gm"], [1, 5]),
    ("ct25", BASELINES, [2]),
    ("mr_x2", BASELINES, [2]),
    ("ct10", BASELINES, [2]),
]


def _machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


# ----------------------------------------------------------------------------- cohort
@dataclass(frozen=True, eq=False)
class Patient:
    """One preprocessed patient of the benchmark cohort, with what the site operator knows."""

    slices: Any  # SliceSet
    name: str  # the sample's folder name (never shipped)
    region: str  # "head" | "body"
    raw_bytes: int  # int16 voxels of the volume the slices come from

    @property
    def key(self) -> str:
        return str(self.slices.patient_key)


def cohort(samples: Path, work: Path, modality: str) -> list[Patient]:
    """The real samples of ``modality`` as a site would read them, sorted by pseudonym.

    The DICOM tree and the preprocessing cache live under ``work`` (written once)."""
    from medidd.distill.config import DistillConfig
    from medidd.io.discover import folder_patient_key
    from medidd.io.options import IngestOptions
    from medidd.io.sample_data import make_sample_patients, sample_regions
    from medidd.preprocess.cohort import prepare_patients

    tree = work / f"dicom_{modality.lower()}"
    if not (tree / ".complete").is_file():
        make_sample_patients(samples, tree, modality=modality, overwrite=True)
        (tree / ".complete").write_text("ok\n")
    prep = prepare_patients(
        tree,
        salt=SALT,
        cfg=DistillConfig().preprocess,
        options=IngestOptions(modality=modality),
        cache_dir=work / "cache" / "prepare",
    )
    regions = sample_regions(tree, SALT)
    names = {folder_patient_key(d.name, SALT): d.name for d in tree.iterdir() if d.is_dir()}
    raw = {}
    for row in prep.summary:
        if row.get("shape") and row.get("patient"):
            z, h, w = row["shape"]
            raw[row["patient"]] = int(z) * int(h) * int(w) * 2
    out = [
        Patient(s, names[s.patient_key], regions[s.patient_key], raw.get(s.patient_key, 0))
        for s in prep.slices
    ]
    return sorted(out, key=lambda p: p.key)


@dataclass(frozen=True)
class Fold:
    """A fold: the site's patients, the held-out ones, the out-of-distribution ones."""

    index: int
    site: list[Patient]
    held: list[Patient]
    ood: list[Patient]


def folds(patients: list[Patient], modality: str) -> list[Fold]:
    """Patient-level folds (see the module doc): held-out patients of fold ``f`` are every
    ``n``-th in-distribution patient from ``f``; head CTs are out of distribution for body CT.

    Example:
        >>> from types import SimpleNamespace as N
        >>> ps = [Patient(N(patient_key=f"p-{i}"), f"CT-{i}", "body", 0) for i in range(10)]
        >>> [[p.key for p in f.held] for f in folds(ps, "CT")][:2]
        [['p-0', 'p-5'], ['p-1', 'p-6']]
    """
    n = N_FOLDS[modality]
    core = [p for p in patients if modality == "MR" or p.region == "body"]
    ood = [p for p in patients if p.key not in {c.key for c in core}]
    out = []
    for f in range(n):
        held = core[f::n]
        out.append(Fold(f, [p for p in core if p.key not in {h.key for h in held}], held, ood))
    return out


def reference_line(work: Path, setting: str, fold: Fold) -> float:
    """The fold's ideal line (99th percentile of nearest-other-patient NCC among the site's
    patients), cached in ``work/refs.json``."""
    from medidd.atomic import atomic_write_text
    from medidd.privacy.memorisation import cross_patient_reference

    path = work / "refs.json"
    refs = json.loads(path.read_text()) if path.is_file() else {}
    key = f"{SETTINGS[setting]['modality']}-{fold.index}"
    if key not in refs:
        refs[key] = cross_patient_reference({p.key: p.slices.images for p in fold.site})
        atomic_write_text(path, json.dumps(refs, indent=1))
    return float(refs[key])


def shared_prior_folder(work: Path, setting: str, fold: Fold) -> Path:
    """The shared prior the fold's site patients build over 3 simulated hospitals at
    :data:`SHARED_EPSILON` (:func:`benchmarks.prior_bench.shared_prior_folder`: the nodes'
    sums, clipped and noised, released as ``medidd-aggregate prior`` does), one per fold so no
    held-out patient contributes to it."""
    from benchmarks.prior_bench import shared_prior_folder as build

    return build(work / "priors" / f"fold{fold.index}", setting, fold, SHARED_EPSILON)


# ----------------------------------------------------------------------------- run
def _rows(work: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in sorted(work.glob("rows-*.jsonl"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]


def _seconds(work: Path) -> dict[str, float]:
    path = work / "seconds.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _record_seconds(work: Path, new: dict[str, float]) -> None:
    from medidd.atomic import atomic_write_text

    atomic_write_text(work / "seconds.json", json.dumps(_seconds(work) | new, indent=1))


def distilled_images(
    work: Path, setting: str, fold: Fold, label: str, ipc: int, device: str
) -> tuple[torch.Tensor, list[float], Path]:
    """Distil the fold's site with ``label`` at ``ipc`` through :func:`distill_site` and read
    the package back; returns its HQ images, the seconds per patient of this label (measured
    when each patient was distilled) and the package path."""
    import medidd.distill  # noqa: F401  (registers the methods)
    from medidd.distill.run import distill_site
    from medidd.package import read_package

    cfg = method_config(label, setting, ipc, device)
    if cfg.prior.kind == "shared":
        cfg = cfg.model_copy(update={"prior": cfg.prior.model_copy(update={
            "path": str(shared_prior_folder(work, setting, fold))})})
    out = work / "packages" / setting / f"{label}-ipc{ipc}-fold{fold.index}"
    tag = f"{setting}/{label}/ipc{ipc}"

    def on_patient(i: int, n: int, key: str) -> None:
        print(f"    distil {tag} fold {fold.index}: patient {i + 1}/{n}", flush=True)

    res = distill_site(
        [p.slices for p in fold.site],
        cfg,
        out,
        overwrite=True,
        on_patient=on_patient,
        checkpoints=work / "checkpoints" / setting,
    )
    _record_seconds(work, {f"{tag}/{k}": v for k, v in res.seconds_per_patient.items()})
    known = _seconds(work)
    secs = [known[f"{tag}/{p.key}"] for p in fold.site if f"{tag}/{p.key}" in known]
    return read_package(out).hq, secs, out


def run_fold(
    work: Path,
    setting: str,
    fold_index: int,
    labels: list[str],
    ipcs: list[int],
    *,
    steps: int = 800,
    device: str = "cpu",
    samples: Path | None = None,
) -> int:
    """Every (label, ipc) of one fold of one setting not yet in the rows; returns the number
    of rows written. ``full`` (all the site's real slices) is the fold's reference."""
    from medidd.degrade import DegradationSpec, build_degradation
    from medidd.privacy.memorisation import nearest_real
    from medidd.train import (
        TrainConfig,
        gain_retained,
        heldout_lq,
        score_model,
        stack_images,
        train_and_score,
    )

    st = SETTINGS[look_up_option(setting, list(SETTINGS), what="benchmark setting")]
    for x in labels:
        split_label(x, setting)  # did-you-mean before any work
    modality = st["modality"]
    patients = cohort(samples or Path("data/samples"), work, modality)
    fold = folds(patients, modality)[fold_index]
    window = fold.site[0].slices.window if modality == "CT" else (0.0, 1.0)
    degrade = build_degradation(DegradationSpec.model_validate(st["degradation"]), window)
    held = stack_images([p.slices for p in fold.held])
    held_lq = heldout_lq(held, degrade)
    ood = stack_images([p.slices for p in fold.ood]) if fold.ood else None
    ood_lq = heldout_lq(ood, degrade) if ood is not None else None
    site_real = stack_images([p.slices for p in fold.site])
    ref = reference_line(work, setting, fold)
    tcfg = TrainConfig.model_validate({"steps": steps, "device": device, "seed": fold_index})
    rows = _rows(work)
    done = {(r["setting_id"], r["fold"], r["method"], r["ipc"]) for r in rows
            if r.get("cohort") == COHORT}
    full = next((r for r in rows if r.get("cohort") == COHORT and r["setting_id"] == setting
                 and r["fold"] == fold_index and r["method"] == "full"), None)
    out = work / f"rows-{setting}-{fold_index}.jsonl"
    written = 0
    todo = [("full", 0)] + [(m, k) for m in labels if m != "full" for k in ipcs
                            if split_label(m, setting)[0] != "full"]
    todo += [(m, 0) for m in labels if m != "full" and split_label(m, setting)[0] == "full"]
    for label, ipc in todo:
        if (setting, fold_index, label, ipc) in done:
            continue
        t0 = time.perf_counter()
        base, train_variant = split_label(label, setting)
        if base == "full":
            hq, secs, pkg = site_real, [], None
        else:
            hq, secs, pkg = distilled_images(work, setting, fold, base, ipc, device)
        print(f"    train+score {setting}/{label}/ipc{ipc} fold {fold_index} "
              f"({hq.shape[0]} images)", flush=True)
        cfg_l = tcfg.model_copy(update=train_variant) if train_variant else tcfg
        cfg_l = TrainConfig.model_validate(cfg_l.model_dump())
        scored = train_and_score(hq, held, cfg_l, degrade, test_lq=held_lq)
        ev = scored.eval
        ood_ev = score_model(scored.model, ood, degrade, lq=ood_lq) if ood is not None else None
        if label == "full":
            full = {"psnr": ev.psnr, "ssim": ev.ssim,
                    "ood_psnr": ood_ev.psnr if ood_ev else None}
        assert full is not None
        nn = nearest_real(hq, site_real)[0]
        row = {
            "cohort": COHORT,
            "code_path": CODE_PATH,
            "task": st["task"],
            "setting": st["label"],
            "setting_id": setting,
            "method": label,
            "ipc": ipc,
            "fold": fold_index,
            "n_site_patients": len(fold.site),
            "held_out": [p.key for p in fold.held],
            "psnr": ev.psnr,
            "ssim": ev.ssim,
            "psnr_lq": ev.psnr_lq,
            "ssim_lq": ev.ssim_lq,
            "psnr_full": full["psnr"],
            "ssim_full": full["ssim"],
            "gain_retained": gain_retained(ev.psnr, ev.psnr_lq, full["psnr"]),
            "ood_held_out": [p.key for p in fold.ood],
            "ood_psnr": ood_ev.psnr if ood_ev else None,
            "ood_psnr_lq": ood_ev.psnr_lq if ood_ev else None,
            "ood_psnr_full": full.get("ood_psnr"),
            "max_nn_ncc": float(nn.max()),
            "n_below_ref": int((nn < ref).sum()),
            "nn_ncc_p99_ref": ref,
            "distill_s_per_patient": sum(secs) / len(secs) if secs else 0.0,
            "bytes_ratio": (2 * hq.numel() * 4) / max(sum(p.raw_bytes for p in fold.site), 1),
            "train_s": scored.train.seconds,
            "wall_s": time.perf_counter() - t0,
            "n_images": int(hq.shape[0]),
            "steps": steps,
            "prior": method_config(base, setting, max(ipc, 1)).prior.kind
            if base != "full" and pkg is not None else None,
            "train_variant": train_variant or None,
            "machine": _machine(),
        }
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        written += 1
        print(f"  {setting} fold {fold_index} {label} ipc {ipc}: {ev.psnr:.2f} dB "
              f"(LQ {ev.psnr_lq:.2f}, full {full['psnr']:.2f}), "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return written


def run(
    work: Path,
    plan: list[tuple[str, list[str], list[int]]],
    *,
    steps: int,
    device: str,
    samples: Path,
    threads: int | None = None,
    only_folds: list[int] | None = None,
) -> None:
    """Every fold (or ``only_folds``) of every step of ``plan``, in order (restartable: done
    rows are skipped)."""
    if threads:
        torch.set_num_threads(threads)
    for setting, labels, ipcs in plan:
        modality = SETTINGS[setting]["modality"]
        for f in range(N_FOLDS[modality]):
            if only_folds is not None and f not in only_folds:
                continue
            n = run_fold(work, setting, f, labels, ipcs, steps=steps, device=device,
                         samples=samples)
            print(f"{setting} fold {f}: {n} new rows", flush=True)


def plan_from_args(settings: str | None, methods: str | None, ipc: str | None
                   ) -> list[tuple[str, list[str], list[int]]]:
    """:data:`PLAN`, or the grid the flags name (did-you-mean on unknown names).

    Example:
        >>> plan_from_args("ct25", "spg_gm", "2")
        [('ct25', ['spg_gm'], [2])]
    """
    if settings is None and methods is None and ipc is None:
        return PLAN
    chosen = [look_up_option(s, list(SETTINGS), what="benchmark setting")
              for s in (settings or ",".join(SETTINGS)).split(",")]
    labels = (methods or ",".join(CORE)).split(",")
    for s in chosen:
        for m in labels:
            split_label(m, s)
    ipcs = [int(k) for k in (ipc or "2").split(",")]
    return [(s, labels, ipcs) for s in chosen]


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.distill_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("stage", choices=["prepare", "run", "report", "all"])
    ap.add_argument("--samples", type=Path, default=Path("data/samples"))
    ap.add_argument("--work", type=Path, default=Path("out/bench"))
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    ap.add_argument("--settings", default=None, help="comma list (default: the PLAN)")
    ap.add_argument("--methods", default=None, help="comma list of labels (default: the PLAN)")
    ap.add_argument("--ipc", default=None, help="comma list (default: the PLAN)")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--folds", default=None,
                    help="comma list of fold indices (default: every fold of the setting)")
    a = ap.parse_args(argv)
    try:
        plan = plan_from_args(a.settings, a.methods, a.ipc)
    except ValueError as exc:
        ap.error(str(exc))
    if a.stage in ("prepare", "all"):
        for modality in ("CT", "MR"):
            ps = cohort(a.samples, a.work, modality)
            print(f"{modality}: {len(ps)} patients ("
                  + ", ".join(f"{p.name} {p.region}" for p in ps) + ")", flush=True)
    if a.stage in ("run", "all"):
        folds_ = [int(f) for f in a.folds.split(",")] if a.folds else None
        run(a.work, plan, steps=a.steps, device=a.device, samples=a.samples, threads=a.threads,
            only_folds=folds_)
    if a.stage in ("report", "all"):
        from benchmarks.bench_report import write_report

        print(f"wrote {write_report(a.work, a.out, a.samples)}")


if __name__ == "__main__":
    main()
