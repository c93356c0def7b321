"""How much must a positive control memorise before the membership attacks can see it?

The audit's verdict is only as good as its positive control (issue 5): a model trained on the
members' raw slices that the attacks must be able to catch. On the real CT cohort the default
control (a width-16 DnCNN, 400 steps on fixed pairs) scores a loss-attack AUC of about 0.5 at
slice level, so every verdict is "inconclusive". This probe trains candidate control recipes on
the same members (the slice protocol of ``privacy_bench --unit slice``: 8-slice slabs of all 4
patients, ``control_slices_per_patient`` of them per patient, fixed LQ pairs, whole slices)
and scores the loss attack against the held-out slabs, with the audit's patient-level bootstrap
interval. Rows are cached per recipe under ``--work`` (a rerun only trains what is missing) and
written to ``docs/benchmarks/control_probe.{md,json}`` with the machine they ran on.

``--package DIR`` trains the same recipe on a package's synthetic HQ images instead (LQ drawn
once by the audit's degradation: fixed pairs, as for the control) and runs the same attack:
the worst-case downstream model for that package. With a control that is detected, an AUC
near 0.5 here says the package carries no membership signal even for a model that memorises
everything it is given.

Run: ``python -m benchmarks.control_probe --nets unet:32:4 --steps 3000,8000 [--device cuda]``
(``--report-only`` rewrites the page from the cached rows).

Example:
    >>> parse_net("unet:32:4")
    {'name': 'unet', 'width': 32, 'depth': 4}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.privacy_bench import machine, prepare, spec, split_cohort
from medidd.atomic import atomic_write_text
from medidd.degrade import build_degradation, draw_lq
from medidd.nets.registry import NetConfig
from medidd.privacy.membership import attack_model, eval_set, even_indices
from medidd.privacy.policy import AuditPolicy
from medidd.train import train_enhancer

ROOT = Path(__file__).resolve().parents[1]


def parse_net(text: str) -> dict[str, Any]:
    """``name:width:depth`` -> a :class:`NetConfig` mapping (unknown names: did-you-mean)."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise SystemExit(f"--nets: '{text}' is not name:width:depth (e.g. unet:32:4)")
    net = {"name": parts[0], "width": int(parts[1]), "depth": int(parts[2])}
    try:
        NetConfig.model_validate(net)
    except ValueError as exc:  # pydantic's ValidationError: keep only its message
        raise SystemExit(f"--nets: '{text}': {exc.errors()[0]['msg']}") from None  # type: ignore[attr-defined]
    return net


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.control_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=Path, default=ROOT / "data" / "samples")
    p.add_argument("--work", type=Path, default=ROOT / "out" / "control_probe")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--nets", default="dncnn:16:5,unet:32:4",
                   help="comma-separated name:width:depth")
    p.add_argument("--steps", default="400,3000,8000")
    p.add_argument("--slices-per-patient", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--package", type=Path, default=None,
                   help="train on this package's synthetic images instead of raw member slices "
                        "(a package of the slice protocol: privacy_bench --unit slice)")
    p.add_argument("--report-only", action="store_true")
    return p


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train every (net, steps) control that has no cached row; return all cached rows."""
    policy = AuditPolicy()
    nets = [parse_net(n) for n in args.nets.split(",")]
    try:
        steps = [int(s) for s in args.steps.split(",")]
    except ValueError:
        raise SystemExit(f"--steps: '{args.steps}' is not comma-separated integers") from None
    if args.package is not None and not (args.package / "manifest.json").is_file():
        raise SystemExit(f"--package: {args.package} holds no manifest.json; pass a package "
                         "folder written by medidd-node distill or privacy_bench")
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "rows.jsonl"
    rows = [json.loads(line) for line in cache.read_text().splitlines()] if cache.is_file() else []
    source = "raw member slices" if args.package is None else f"package {args.package.name}"
    done = {(json.dumps(r["net"], sort_keys=True), r["steps"], r["slices_per_patient"],
             r.get("trained_on", "raw member slices")) for r in rows}
    todo = [(n, s) for n in nets for s in steps
            if (json.dumps(n, sort_keys=True), s, args.slices_per_patient, source) not in done]
    if args.report_only or not todo:
        return rows
    if args.threads:
        torch.set_num_threads(args.threads)
    cohort = prepare(args.samples, args.work)
    members, holdout = split_cohort(cohort, "slice")
    degrade = build_degradation(spec(), members[0].window, fast=True)
    mem = eval_set(members, seed=policy.seed, limit=policy.max_eval_slices_per_patient,
                   degrade=degrade)
    non = eval_set(holdout, seed=policy.seed, limit=policy.max_eval_slices_per_patient,
                   degrade=degrade)
    idx = torch.cat([mem.of({k})[even_indices(len(mem.of({k})), args.slices_per_patient)]
                     for k in mem.patients])
    ctl = mem.subset(idx)
    train_hq, train_lq = ctl.hq, ctl.lq
    if args.package is not None:
        from medidd.package import read_package
        pkg = read_package(args.package)
        train_hq = pkg.hq
        train_lq = draw_lq(pkg.hq, degrade, policy.seed, "control-lq")
    for net, n_steps in todo:
        cfg = policy.control.model_copy(update={
            "net": NetConfig.model_validate(net), "steps": n_steps, "device": args.device,
            "deterministic": args.device == "cpu"})
        t0 = time.perf_counter()
        every = max(1, n_steps // 20)

        def progress(step: int, loss: float, n: int = n_steps, every: int = every,
                     name: str = net["name"], start: float = t0) -> None:
            if step % every == 0 or step == n:
                print(f"  {name} {step}/{n} steps, loss {loss:.2e}, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)

        model = train_enhancer(train_hq, train_lq, cfg, progress=progress).model.cpu()
        seconds = time.perf_counter() - t0
        res = attack_model(model, ctl, non, [], n_boot=policy.n_boot, alpha=policy.alpha,
                           seed=policy.seed)
        loss = res.attacks["loss"].result
        row = {"net": net, "trained_on": source,
               "params": sum(p.numel() for p in model.parameters()),
               "steps": n_steps, "batch_size": cfg.batch_size,
               "slices_per_patient": args.slices_per_patient, "control_slices": len(ctl.keys),
               "nonmember_slices": len(non.keys),
               "train_images": len(train_hq),
               "epochs": round(n_steps * cfg.batch_size / len(train_hq), 1),
               "loss_auc": loss.auc, "loss_auc_ci": list(loss.auc_ci),
               "tpr_at_1fpr": loss.tpr_at_1,
               "member_mse": res.member_mse, "nonmember_mse": res.nonmember_mse,
               "train_s": round(seconds, 1), "machine": machine()}
        rows.append(row)
        with cache.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in ("net", "steps", "loss_auc", "train_s")}),
              flush=True)
    return rows


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a table, one line per recipe, in the order they ran.

    Example:
        >>> r = {"net": {"name": "unet", "width": 32, "depth": 4}, "params": 818443,
        ...      "steps": 8000, "epochs": 2000.0, "control_slices": 32, "loss_auc": 0.95,
        ...      "loss_auc_ci": [0.9, 0.99], "member_mse": 3e-4, "nonmember_mse": 1e-3,
        ...      "train_s": 51.0, "machine": "H100"}
        >>> to_markdown([r]).splitlines()[-1].split(" | ")[:7]
        ['| unet 32/4', 'raw member slices', '818,443', '8000', '2000', '32', '0.950 [0.90, 0.99]']
    """
    head = ("| net | trained on | parameters | steps | epochs | member slices "
            "| loss AUC [95% CI] | member MSE | non-member MSE | train s | machine |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        n = r["net"]
        lines.append(
            f"| {n['name']} {n['width']}/{n['depth']} | {r.get('trained_on', 'raw member slices')} "
            f"| {r['params']:,} | {r['steps']} "
            f"| {r['epochs']:g} | {r['control_slices']} | {r['loss_auc']:.3f} "
            f"{_ci(r.get('loss_auc_ci'))} | {r['member_mse']:.1e} | {r['nonmember_mse']:.1e} "
            f"| {r['train_s']:.0f} | {r['machine']} |")
    return "\n".join(lines)


def command(row: dict[str, Any]) -> str:
    """The command line that trains ``row``'s recipe (on the machine kind it ran on).

    Example:
        >>> command({"net": {"name": "unet", "width": 32, "depth": 4}, "steps": 8000,
        ...          "slices_per_patient": 8, "machine": "16 CPU cores, NVIDIA H100"}).split()[3:]
        ['--nets', 'unet:32:4', '--steps', '8000', '--slices-per-patient', '8', '--device', 'cuda']
    """
    n = row["net"]
    device = "cpu" if "no GPU" in row["machine"] else "cuda"
    trained_on = row.get("trained_on", "raw member slices")
    package = "" if not trained_on.startswith("package ") else (
        f" --package WORK/packages/{trained_on.removeprefix('package ')}")
    return (f"python -m benchmarks.control_probe --nets {n['name']}:{n['width']}:{n['depth']} "
            f"--steps {row['steps']} --slices-per-patient {row['slices_per_patient']} "
            f"--device {device}{package}")


def write_docs(rows: list[dict[str, Any]], out: Path) -> Path:
    """``control_probe.md`` + ``control_probe.json`` under ``out``; returns the page."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "control_probe.json", json.dumps(rows, indent=1))
    best = max(rows, key=lambda r: r["loss_auc"]) if rows else None
    reading = ("" if best is None else
               f"Highest loss AUC: {best['loss_auc']:.3f} ({best['net']['name']} "
               f"{best['net']['width']}/{best['net']['depth']}, {best['steps']} steps, "
               f"{best['epochs']:g} epochs over {best['control_slices']} slices). "
               f"The audit calls a verdict conclusive when its control reaches "
               f"`min_control_auc` ({AuditPolicy().min_control_auc}).")
    def recipe(r: dict[str, Any]) -> tuple[str, int, int]:
        return json.dumps(r["net"], sort_keys=True), r["steps"], r["slices_per_patient"]

    raw = {recipe(r): r for r in rows if r.get("trained_on", "raw member slices").startswith("raw")}
    pairs = [(r, raw[recipe(r)]) for r in rows
             if r.get("trained_on", "").startswith("package ") and recipe(r) in raw]
    reading += "".join(
        f"\n\nThe same recipe trained on {p['trained_on']}: loss AUC {p['loss_auc']:.3f} "
        f"{_ci(p.get('loss_auc_ci'))} on the same member and non-member slices, against "
        f"{c['loss_auc']:.3f} {_ci(c.get('loss_auc_ci'))} when trained on the raw slices."
        for p, c in pairs)
    commands = sorted({command(r) for r in rows})
    page = f"""# Positive-control probe (issue 5)

Generated by `python -m benchmarks.control_probe`; do not edit by hand. Rows accumulate over
runs (cached under `--work`); each one is reproduced by one of:

{chr(10).join(f"    {c}" for c in commands)}

Candidate positive-control recipes trained on the members' raw slices (slice protocol of
`privacy_bench --unit slice`: alternating 8-slice slabs of the 4 real CT patients; whole
slices, the fixed LQ pairs the attack scores, the audit's control optimiser), loss-threshold
attack on those member slices against the held-out slabs, patient-level bootstrap interval.
Rows trained on a package get the same recipe on the package's synthetic images (LQ drawn
once): the worst-case downstream model for that package, attacked on the same slices.

{to_markdown(rows)}

{reading}
"""
    path = out / "control_probe.md"
    atomic_write_text(path, page)
    return path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    rows = run(args)
    print(write_docs(rows, args.out))
    return rows


if __name__ == "__main__":
    main()
