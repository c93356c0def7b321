"""The distillation benchmark of issue 3: every method, leave-one-patient-out, real patients.

Three stages, so the heavy middle one can run wherever a GPU is (it needs only torch, pydantic
and MONAI) while reading DICOM stays at the site:

    python -m benchmarks.distill_bench prepare --samples data/samples --work out/bench
    python -m benchmarks.distill_bench run --work out/bench [--device auto] [--workers 4]
    python -m benchmarks.distill_bench report --work out/bench --out docs/benchmarks

(``all`` runs the three in a row; ``make bench`` calls it.)

*prepare* writes the real sample volumes as DICOM series, reads them back through the product's
ingestion and preprocessing (``prepare_patients``), and stores, per setting, the patients'
slices, the population priors of every fold (they depend on which patients form the site) and
the cross-patient NCC reference line. *run* distils every training patient of every fold with
every method and IPC, trains the downstream denoiser/SR net on the union (LQ re-drawn every
epoch from the degradation spec, as the aggregator does) and scores it on every slice of the
held-out patient. Rows are appended to ``rows.jsonl`` as they finish, so a run is restartable.
*report* turns the rows into ``distill.md``, ``distill.json`` and plots.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_report import gain_retained

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
#: config overrides of the variant)
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
}
PRIOR_KINDS = ("mean", "medoid", "atlas")
IPCS = (1, 2, 5)


def method_config(label: str, setting: str, ipc: int, device: str = "cpu") -> Any:
    """The :class:`DistillConfig` a benchmark label runs with in ``setting`` at ``ipc``.

    Example:
        >>> method_config("spg_gm_scale03", "ct25", 2).spg.residual_scale
        0.3
    """
    from medidd.distill.config import DistillConfig

    name, _, variant = METHODS[label]
    st = SETTINGS[setting]
    base = {
        **DistillConfig().model_dump(mode="json"),
        "method": name,
        "ipc": max(ipc, 1),
        "task": st["task"],
        "degradation": st["degradation"],
        "device": device,
    }
    for section, values in variant.items():
        base[section] = {**base[section], **values}
    return DistillConfig.model_validate(base)


def cache_file(work: Path, setting: str, label: str, ipc: int, patient: str, fold: int) -> Path:
    """Where the run stage caches ``label``'s distilled images of ``patient``.

    Prior-based labels carry a hash of their config (the device left out, so GPU and CPU runs
    share it) so a label whose settings change never reuses stale images; a prior computed
    from the site's patients (mean, medoid) depends on the fold too.

    Example:
        >>> cache_file(Path("w"), "ct25", "random", 2, "p-1", 0).as_posix()
        'w/cache/ct25/random-ipc2-p-1.pt'
    """
    import medidd.distill  # noqa: F401  (registers the methods)
    from medidd.distill.base import method_factory
    from medidd.package import config_hash

    tag = f"{label}-ipc{ipc}-{patient}"
    name, prior_kind, _ = METHODS[label]
    cfg = method_config(label, setting, ipc)
    if getattr(method_factory(name), "needs_prior", False):
        if (prior_kind or cfg.prior.kind) != "atlas":
            tag += f"-f{fold}"
        tag += "-" + config_hash({**cfg.model_dump(mode="json"), "device": None})[:8]
    return work / "cache" / setting / f"{tag}.pt"


@dataclass(frozen=True)
class Job:
    setting: str
    fold: int
    method: str
    ipc: int


def _machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


# ----------------------------------------------------------------------------- prepare
def prepare(samples: Path, work: Path, ipcs: tuple[int, ...] = IPCS) -> Path:
    """Real samples -> DICOM trees -> slices + priors + reference lines in ``work/bundle.pt``
    (one cohort per modality; settings of one modality share it)."""
    from medidd.distill.config import DistillConfig
    from medidd.io.options import IngestOptions
    from medidd.io.sample_data import make_sample_patients
    from medidd.preprocess.cohort import prepare_patients
    from medidd.prior import build_prior
    from medidd.privacy.memorisation import cross_patient_reference

    work.mkdir(parents=True, exist_ok=True)
    cfg = DistillConfig()
    bundle: dict[str, Any] = {"cohorts": {}, "config": cfg.model_dump(mode="json")}
    cohorts: dict[str, Any] = {}
    for modality in ("CT", "MR"):
        tree = work / f"dicom_{modality.lower()}"
        if not tree.exists():
            make_sample_patients(samples, tree, modality=modality)
        prep = prepare_patients(
            tree,
            salt=b"medidd-benchmark-salt-0000000000",
            cfg=cfg.preprocess,
            options=IngestOptions(modality=modality),
        )
        raw = {}
        for row in prep.summary:
            if "source" not in row and row.get("shape"):
                z, h, w = row["shape"]
                raw[row["patient"]] = int(z) * int(h) * int(w) * 2  # int16 voxels
        cohorts[modality] = (prep.slices, raw)
    for modality, (slices, raw) in cohorts.items():
        st = {"modality": modality}
        patients = [
            {
                "key": s.patient_key,
                "images": s.images.half(),
                "z": s.z,
                "window": list(s.window),
                "raw_bytes": raw.get(s.patient_key, 0),
            }
            for s in slices
        ]
        folds = []
        for held in range(len(slices)):
            site = [s for i, s in enumerate(slices) if i != held]
            priors = {}
            for kind in PRIOR_KINDS:
                for k in ipcs:
                    p = build_prior(
                        kind,
                        site,
                        k,
                        modality=st["modality"],
                        size=site[0].size,
                        window=site[0].window if st["modality"] == "CT" else (0, 1),
                    )
                    priors[f"{kind}:{k}"] = {
                        "images": p.images,
                        "z": p.z,
                        "local_data": p.local_data,
                    }
            ref = cross_patient_reference({s.patient_key: s.images for s in site}, metric="ncc")
            folds.append({"held_out": held, "priors": priors, "nn_ncc_p99_ref": ref})
        bundle["cohorts"][modality] = {"patients": patients, "folds": folds}
    path = work / "bundle.pt"
    torch.save(bundle, path)
    return path


# ----------------------------------------------------------------------------- run
def _slices(entry: dict[str, Any], modality: str) -> Any:
    from medidd.preprocess.slices import SliceSet

    return [
        SliceSet(
            p["images"].float(),
            p["z"],
            p["key"],
            modality,
            (float(p["window"][0]), float(p["window"][1])),
        )
        for p in entry["patients"]
    ]


def _rows(work: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in sorted(work.glob("rows-*.jsonl"))
        for line in f.read_text().splitlines()
    ]


def _done(work: Path) -> set[tuple[str, int, str, int]]:
    return {(r["setting_id"], r["fold"], r["method"], r["ipc"]) for r in _rows(work)}


@dataclass(frozen=True)
class _Scores:
    psnr: float
    ssim: float


def _stored_full(work: Path, setting: str, fold: int) -> _Scores | None:
    """The full-data reference of a fold when an earlier run stored it (it depends only on the
    fold: same real slices, seed and held-out LQ), so a restart does not retrain it."""
    for r in _rows(work):
        if (r["setting_id"], r["fold"], r["method"]) == (setting, fold, "full"):
            return _Scores(float(r["psnr"]), float(r["ssim"]))
    return None


def run_fold(
    work: Path,
    setting: str,
    fold: int,
    methods: list[str],
    ipcs: list[int],
    steps: int,
    device: str,
    threads: int,
) -> int:
    """Every (method, ipc) of one fold of one setting; returns the number of rows written."""
    import medidd.distill  # noqa: F401  (registers the methods)
    from medidd._atomic import atomic_write_bytes
    from medidd.degrade.spec import DegradationSpec, build_degradation
    from medidd.distill.base import DistillContext, method_factory
    from medidd.distill.run import plan_seed, resolve_device
    from medidd.prior.base import Prior
    from medidd.privacy.memorisation import nearest_real
    from medidd.train.evaluate import evaluate_enhancer
    from medidd.train.trainer import TrainConfig, train_enhancer

    torch.set_num_threads(threads)
    st = SETTINGS[setting]
    bundle = torch.load(work / "bundle.pt", weights_only=False)
    entry = bundle["cohorts"][st["modality"]]
    fold_info = entry["folds"][fold]
    patients = _slices(entry, st["modality"])
    held = patients[fold]
    site = [p for i, p in enumerate(patients) if i != fold]
    dev = resolve_device(device)
    window = held.window if st["modality"] == "CT" else (0.0, 1.0)
    spec = DegradationSpec.model_validate(st["degradation"])
    degrade = build_degradation(spec, window=window).to(dev)
    match = degrade
    if spec.kind == "ct_lowdose":
        fast = spec.model_copy(update={"image_domain": True})
        match = build_degradation(fast, window=window).to(dev)
    with torch.no_grad():
        test_hq = held.images.to(dev)
        test_lq = torch.cat(
            [degrade(test_hq[i : i + 32], 424242 + i) for i in range(0, len(test_hq), 32)]
        )
    site_real = torch.cat([p.images for p in site])
    raw_bytes = sum(
        int(entry["patients"][i]["raw_bytes"]) for i in range(len(patients)) if i != fold
    )
    done = _done(work)
    out = work / f"rows-{setting}-{fold}.jsonl"
    tcfg = TrainConfig.model_validate({"steps": steps, "device": str(dev), "seed": fold})

    def train_eval(hq: torch.Tensor) -> tuple[Any, float]:
        res = train_enhancer(hq, None, tcfg, degrade=degrade)
        ev = evaluate_enhancer(res.model, test_hq, test_lq, batch_size=32)
        return ev, res.seconds

    full_ev: Any = _stored_full(work, setting, fold)
    rows = 0
    for label in ["full", *[m for m in methods if m != "full"]]:
        if label == "full" and full_ev is not None:
            continue
        name = METHODS[label][0]
        for ipc in [0] if label == "full" else ipcs:
            if (setting, fold, label, ipc) in done and label != "full":
                continue
            cfg = method_config(label, setting, ipc, str(dev))
            kind = METHODS[label][1] or cfg.prior.kind
            method = method_factory(name)(cfg)
            prior = None
            if method.needs_prior:
                pr = fold_info["priors"][f"{kind}:{ipc}"]
                prior = Prior(pr["images"], pr["z"], kind, pr["local_data"])
            hqs, secs = [], []
            for p in site:
                cache = cache_file(work, setting, label, ipc, p.patient_key, fold)
                if label == "full":
                    hqs.append(p.images)
                    continue
                if cache.is_file():
                    c = torch.load(cache, weights_only=True)
                    hqs.append(c["hq"])
                    secs.append(float(c["seconds"]))
                    continue
                t0 = time.perf_counter()
                ctx = DistillContext(
                    ipc=ipc,
                    degrade=degrade,
                    seed=plan_seed(0, p.patient_key),
                    device=dev,
                    prior=prior,
                    match_degrade=match,
                )
                d = method.distill(p, ctx)
                s = time.perf_counter() - t0
                # folds run as parallel workers and share atlas-prior caches: a reader must
                # never see a half-written file
                buf = io.BytesIO()
                torch.save({"hq": d.hq, "seconds": s}, buf)
                atomic_write_bytes(cache, buf.getvalue())
                hqs.append(d.hq)
                secs.append(s)
            hq = torch.cat(hqs)
            ev, train_s = train_eval(hq)
            if label == "full":
                full_ev = ev
            assert full_ev is not None
            nn_max = float(nearest_real(hq, site_real)[0].max())
            gain = gain_retained(ev.psnr, ev.psnr_lq, full_ev.psnr)
            row = {
                "task": st["task"],
                "setting": st["label"],
                "setting_id": setting,
                "method": label,
                "ipc": ipc,
                "fold": fold,
                "held_out": held.patient_key,
                "psnr": ev.psnr,
                "ssim": ev.ssim,
                "psnr_lq": ev.psnr_lq,
                "ssim_lq": ev.ssim_lq,
                "psnr_full": full_ev.psnr,
                "ssim_full": full_ev.ssim,
                "gain_retained": gain,
                "max_nn_ncc": nn_max,
                "nn_ncc_p99_ref": fold_info["nn_ncc_p99_ref"],
                "distill_s_per_patient": sum(secs) / len(secs) if secs else 0.0,
                "bytes_ratio": (2 * hq.numel() * 4) / max(raw_bytes, 1),
                "train_s": train_s,
                "n_images": int(hq.shape[0]),
                "steps": steps,
                "prior": kind if method.needs_prior else None,
                "machine": _machine(),
            }
            if (setting, fold, label, ipc) not in done:
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                rows += 1
    return rows


def run(
    work: Path,
    settings: list[str],
    methods: list[str],
    ipcs: list[int],
    steps: int,
    device: str,
    workers: int,
    threads: int | None = None,
) -> None:
    """All folds of all settings, ``workers`` folds at a time (processes) of ``threads`` torch
    threads each (default: the cores shared out)."""
    bundle = torch.load(work / "bundle.pt", weights_only=False)
    jobs = [
        (s, f)
        for s in settings
        for f in range(len(bundle["cohorts"][SETTINGS[s]["modality"]]["folds"]))
    ]
    threads = threads or max(1, (os.cpu_count() or 2) // max(workers, 1))
    if workers <= 1:
        for s, f in jobs:
            n = run_fold(work, s, f, methods, ipcs, steps, device, threads)
            print(f"{s} fold {f}: {n} rows", flush=True)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        results = [
            pool.apply_async(run_fold, (work, s, f, methods, ipcs, steps, device, threads))
            for s, f in jobs
        ]
        for (s, f), r in zip(jobs, results, strict=True):
            print(f"{s} fold {f}: {r.get()} rows", flush=True)


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
    ap.add_argument("--settings", default="ct25,ct10,mr_x2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--ipc", default="1,2,5")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    a = ap.parse_args(argv)
    ipcs = [int(x) for x in a.ipc.split(",")]
    if a.stage in ("prepare", "all"):
        print(f"prepared {prepare(a.samples, a.work, tuple(sorted(set(ipcs) | set(IPCS))))}")
    if a.stage in ("run", "all"):
        run(
            a.work,
            a.settings.split(","),
            a.methods.split(","),
            ipcs,
            a.steps,
            a.device,
            a.workers,
            a.threads,
        )
    if a.stage in ("report", "all"):
        from benchmarks.bench_report import write_report

        print(f"wrote {write_report(a.work, a.out)}")


if __name__ == "__main__":
    main()
