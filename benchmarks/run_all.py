"""`make bench`: every benchmark, results written under docs/benchmarks/ (md + json + plots).

    python -m benchmarks.run_all [--only degrade,ingest,distill,task_driven,privacy]
        [--samples data/samples] [--device auto]

The distillation benchmark is the long one (all methods x IPC 1/2/5 x leave-one-patient-out
folds x 3 settings: hours on 2 CPU cores, minutes on a GPU; its stages can run apart, see
benchmarks/distill_bench.py). Every number in docs/benchmarks comes from these scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from medidd.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks"


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {gpu}, {platform.platform(terse=True)}"


def degrade() -> None:
    from benchmarks import noise_table

    rows = noise_table.run()
    atomic_write_text(DOCS / "degrade.json", json.dumps(rows, indent=1))
    atomic_write_text(DOCS / "degrade.md", "# Degradations: CT low-dose noise levels\n\n"
                      f"Machine: {machine()}. Reproduce: `python -m benchmarks.run_all --only "
                      "degrade`.\n\n" + noise_table.to_markdown(rows) + "\n")


def ingest(samples: Path, work: Path) -> None:
    from benchmarks import ingest_throughput
    from medidd.preprocess.cohort import prepare_patients

    result: dict[str, Any] = ingest_throughput.run(samples, work)
    tree = work / "tree"
    from medidd.io.sample_data import make_sample_patients

    if not tree.exists():
        make_sample_patients(samples, tree, modality="both")
    t0 = time.perf_counter()
    prep = prepare_patients(tree, salt=b"b" * 32)
    seconds = time.perf_counter() - t0
    n_files = sum(1 for p in tree.rglob("*.dcm"))
    result["to_tensors"] = {"dicom_slices": n_files, "seconds": round(seconds, 2),
                            "slices_per_s": round(n_files / seconds, 1),
                            "patients": len(prep.slices), "output_slices": prep.n_slices}
    atomic_write_text(DOCS / "ingest.json", json.dumps(result, indent=1))
    t = result["to_tensors"]
    atomic_write_text(DOCS / "ingest.md", "# Ingestion throughput\n\n"
                      f"Machine: {machine()}. Reproduce: `python -m benchmarks.run_all --only "
                      "ingest`.\n\nDICOM files to normalised 128 px tensors (ingest + MONAI "
                      f"preprocessing, no cache): {t['dicom_slices']} DICOM slices of the 7 real "
                      f"sample patients read and decoded, the {t['patients']} patients of the "
                      f"site's modality (CT) preprocessed, in {t['seconds']} s: "
                      f"**{t['slices_per_s']} DICOM slices/s**.\n\n"
                      + ingest_throughput._markdown(result) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="degrade,ingest,distill,task_driven,privacy")
    ap.add_argument("--samples", type=Path, default=ROOT / "data/samples")
    ap.add_argument("--work", type=Path, default=ROOT / "out/bench")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    DOCS.mkdir(parents=True, exist_ok=True)
    todo = a.only.split(",")
    if "degrade" in todo:
        degrade()
    if "ingest" in todo:
        ingest(a.samples, a.work / "ingest")
    if "distill" in todo:
        from benchmarks import distill_bench

        distill_bench.main(["all", "--samples", str(a.samples), "--work", str(a.work / "distill"),
                            "--out", str(DOCS), "--device", a.device])
    if "task_driven" in todo:
        from benchmarks import task_driven

        task_driven.main(["--samples", str(a.samples), "--work", str(a.work / "task_driven")])
    if "privacy" in todo:
        from benchmarks import privacy_v2

        # cohort v2 shares the distillation benchmark's DICOM tree and preprocessing cache
        privacy_v2.main(["--samples", str(a.samples), "--work", str(a.work / "distill"),
                         "--out-dir", str(DOCS)])


if __name__ == "__main__":
    main()
