"""`make demo`: the whole federated pipeline on real sample data, with the real commands.

1. the real CT samples become DICOM series, split over two hospitals (each: one patient to
   distil, one held out for evaluation);
2. each hospital: ``medidd-node distill`` then ``medidd-node audit`` (if the audit does not pass
   with this tiny cohort, the demo records an explicit, visible override instead of hiding it);
3. the consortium: ``medidd-aggregate train`` in Flower's in-process simulation, distillation
   and the FedAvg raw-data baseline; the results table is printed and reports are written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOSPITALS = {"hospital-a": ("CT-03-lung1", "CT-01-abdomen_3mm"),
             "hospital-b": ("CT-02-chest_cta_1p5mm", "CT-04-lung2")}


def sh(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(args), flush=True)
    r = subprocess.run(args, env=env, text=True, stdout=subprocess.PIPE, stderr=sys.stderr)
    print(r.stdout.rstrip(), flush=True)
    if check and r.returncode != 0:
        raise SystemExit(f"demo step failed ({r.returncode}): {' '.join(args)}")
    return r


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=Path, default=ROOT / "data/samples")
    ap.add_argument("--out", type=Path, default=ROOT / "out/demo")
    a = ap.parse_args(argv)
    from medidd.io.sample_data import make_sample_patients
    from medidd.package import read_package

    t0 = time.time()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "MEDIDD_HOME": str(a.out / "home")}
    out = a.out.resolve()
    tree = out / "all-patients"
    if not tree.exists():
        make_sample_patients(a.samples, tree, modality="CT")
    verdicts = {}
    for name, (distilled, held_out) in HOSPITALS.items():
        h = out / name
        for sub, patients in (("dicom", (distilled, held_out)), ("train", (distilled,))):
            for p in patients:
                if not (h / sub / p).exists():
                    shutil.copytree(tree / p, h / sub / p)
        salt = ["--salt-file", str(h / "salt")]
        print(f"\n=== {name}: distil 1 patient, hold out 1 ===", flush=True)
        sh("medidd-node", "distill", "-p", str(h / "train"), "-o", str(h / "distilled"),
           "-c", str(ROOT / "configs/demo_distill.yaml"), "--overwrite", *salt, env=env)
        r = sh("medidd-node", "audit", "--package", str(h / "distilled"), "-p", str(h / "train"),
               "--holdout", str(h / "dicom" / held_out), "-c",
               str(ROOT / "configs/demo_audit.yaml"), "-o", str(h / "audit"), "-q", *salt,
               env=env, check=False)
        verdicts[name] = read_package(h / "distilled").manifest.audit
        if r.returncode != 0:
            from medidd.federation.node import record_audit_override

            print(f"{name}: audit did not pass (see {h / 'audit' / 'report.html'}); the demo "
                  "records an explicit override (1 member patient cannot power an attack)")
            record_audit_override(h / "distilled", "make-demo",
                                  "demo cohort of 1 member patient: attack underpowered")
    import yaml

    fed = yaml.safe_load((ROOT / "configs/federation.yaml").read_text())
    # demo-sized compute (configs/federation.yaml keeps the production budget): a smaller net
    # and fewer steps, FedAvg with the same total steps per node
    fed["train"].update({"net": {"name": "dncnn", "width": 16, "depth": 5}, "steps": 300})
    fed["fedavg"] = {"rounds": 3, "local_steps": 100}
    fed["eval"]["max_slices"] = 32
    fed["nodes"] = [{"name": n, "package": str(out / n / "distilled"),
                     "patients": str(out / n / "dicom"), "salt_file": str(out / n / "salt"),
                     "override_audit": True} for n in HOSPITALS]
    cfg = out / "federation.yaml"
    cfg.write_text(yaml.safe_dump(fed, sort_keys=False))
    results = {}
    for strategy in ("distill", "fedavg"):
        print(f"\n=== consortium: medidd-aggregate train --strategy {strategy} ===", flush=True)
        rep = out / f"report-{strategy}"
        sh("medidd-aggregate", "train", "--config", str(cfg), "--strategy", strategy,
           "--out", str(rep), "--quiet", env=env)
        results[strategy] = json.loads((rep / "report.json").read_text())
    print("\n" + table(results, verdicts))
    print(f"\ndemo finished in {time.time() - t0:.0f} s; reports: {out}/report-*/report.html, "
          f"audits: {out}/hospital-*/audit/report.html")


def table(results: dict[str, dict], verdicts: dict[str, object]) -> str:
    """The results table: held-out PSNR/SSIM, rounds, bytes on the wire, wall time."""
    nan = float("nan")
    lines = ["| strategy | PSNR (held-out) | SSIM | LQ PSNR | rounds | bytes up | bytes down "
             "| wall s |", "|---|---|---|---|---|---|---|---|"]
    for name, rep in results.items():
        m = rep.get("metrics", {})
        lines.append(f"| {name} | {m.get('psnr', nan):.2f} | {m.get('ssim', nan):.3f} | "
                     f"{m.get('psnr_lq', nan):.2f} | {rep.get('rounds')} | "
                     f"{rep.get('bytes_up', 0):,} | {rep.get('bytes_down', 0):,} | "
                     f"{rep.get('wall_s', nan):.0f} |")
    lines.append("")
    for name, audit in verdicts.items():
        status = getattr(audit, "status", "not run")
        lines.append(f"{name}: audit {status}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
