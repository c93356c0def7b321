"""Scale on one machine: patient throughput with ``--workers``, and a loopback load test
through Flower's deployment engine. Writes ``docs/benchmarks/scale.json`` and ``scale.md``.

    python -m benchmarks.load_test [--nodes 2,5,10] [--patients 7] [--work out/scale]
    python -m benchmarks.load_test --render        # rewrite scale.md from scale.json

1. ``workers`` rows: the real MR patients of the sample cohort, distilled with the product's
   default config through :func:`medidd.distill.run.distill_site` (what ``medidd-node
   distill`` calls) with ``workers=1`` and then ``workers=2``: patients per hour of the
   patient loop (prior and preprocessing excluded, pool start-up included).
2. ``load`` rows, for each node count: a SuperLink with TLS and SuperNode authentication on
   127.0.0.1 (``--disable-runtime-dependency-installation``, ``FLWR_HOME`` per process,
   telemetry off), that many registered SuperNodes each serving a copy of the real package
   of step 1 (an audit override is recorded in each copy: the load test runs no privacy
   audit), and one ``flwr run`` of the distill strategy (streamed collect, training from
   disk, evaluate round). The peak resident memory (``VmHWM`` from ``/proc``, sampled every
   0.2 s, per process and summed over each group's processes and their children) of the
   SuperLink (with its SuperExec) and of the ServerApp, the wall time and the bytes. Every
   process is ended by PID.

The machine may be shared (other jobs on the same cores): the page says so, and the
``--workers`` speed-up is then a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from medidd.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks"
#: The downstream training of the load test's runs: small, the run is about the plumbing.
LOAD_TRAIN = {"net": {"name": "dncnn", "width": 8, "depth": 3}, "steps": 60,
              "batch_size": 8, "patch_size": 32}
COLUMNS = ("kind", "nodes", "workers", "wall_s", "patients_per_hour", "serverapp_peak_mb",
           "superlink_peak_mb", "machine_state", "date")


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{os.cpu_count()} CPU cores, {gpu}, {platform.platform(terse=True)}; load "
            f"average {load:.1f} when the run started")


def _row(**values: Any) -> dict[str, Any]:
    return {c: values.pop(c, None) for c in COLUMNS} | values


# --- 1. throughput with --workers ----------------------------------------------------------


def workers_rows(samples: Path, work: Path, n_patients: int,
                 counts: tuple[int, ...] = (1, 2)) -> tuple[list[dict[str, Any]], Path]:
    """Distil the real MR patients with each worker count; returns the rows and the package
    of the last run (what the load test's nodes serve)."""
    from medidd.config import load_config
    from medidd.distill.config import DistillConfig
    from medidd.distill.run import distill_site
    from medidd.io.sample_data import make_sample_patients
    from medidd.preprocess.cohort import prepare_patients

    tree = work / "mr-patients"
    if not tree.exists():
        make_sample_patients(samples, tree, modality="MR")
    cfg = load_config(DistillConfig, None, [])  # the product's default
    prep = prepare_patients(tree, salt=b"s" * 32, cfg=cfg.preprocess, cache_dir=work / "cache")
    cohort = prep.slices[:n_patients]
    rows, package = [], work / "pkg"
    for workers in counts:
        out = work / f"pkg-workers{workers}"
        shutil.rmtree(out, ignore_errors=True)
        print(f"distilling {len(cohort)} patients with --workers {workers} ...", flush=True)
        res = distill_site(cohort, cfg, out, workers=workers)
        per = sorted(res.seconds_per_patient.values())
        rows.append(_row(kind="workers", workers=workers, wall_s=round(res.wall_s, 1),
                         patients=len(cohort),
                         patients_per_hour=round(len(cohort) / res.wall_s * 3600, 1),
                         seconds_per_patient_mean=round(sum(per) / len(per), 1),
                         seconds_per_patient_max=round(per[-1], 1),
                         slices=int(sum(len(s) for s in cohort)), method=cfg.method,
                         ipc=cfg.ipc, size=cfg.preprocess.size,
                         torch_threads_per_patient=max(1, _threads() // workers)))
        print(f"  {rows[-1]['wall_s']} s, {rows[-1]['patients_per_hour']} patients/h",
              flush=True)
        package = out
    return rows, package


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


# --- 2. the loopback load test ------------------------------------------------------------


def _serving_copy(package: Path, dest: Path) -> Path:
    from medidd.federation.node import record_audit_override

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(package, dest)
    record_audit_override(dest, by="load-test", reason="loopback load test; no privacy audit")
    return dest


def load_row(n_nodes: int, package: Path, work: Path) -> dict[str, Any]:
    """One run with ``n_nodes`` SuperNodes on a fresh loopback SuperLink."""
    from aggregator.loopback import start_superlink
    from aggregator.procs import PeakMemory, Procs, cmdline, descendants
    from aggregator.run import train_deployment
    from medidd.federation import FederationConfig
    from medidd.federation.certs import make_dev_certificates

    root = work / f"load-{n_nodes}"
    shutil.rmtree(root, ignore_errors=True)
    names = [f"n{i}" for i in range(n_nodes)]
    certs = make_dev_certificates(root / "certs", supernodes=names)
    procs = Procs(root / "logs")
    try:
        link = start_superlink(certs, root, procs)
        for name in names:
            link.register(name)
        for i, name in enumerate(names):
            pkg = _serving_copy(package, root / "sites" / name / "package")
            link.supernode(name, {"name": f"site-{i}", "package": str(pkg),
                                  "override-audit": True})
        for name in names:
            if not procs.wait_log(f"supernode-{name}", "SuperNode ID:", 300):
                raise RuntimeError(procs.log(f"supernode-{name}")[-2000:])
        superlink = procs.popen["superlink"].pid

        def serverapps() -> list[int]:
            return [p for p in descendants(superlink) if "flwr-serverapp" in cmdline(p)]

        def superlink_side() -> list[int]:
            apps = set(serverapps())
            below = {d for a in apps for d in descendants(a)}
            return [superlink, *(p for p in descendants(superlink)
                                 if p not in apps and p not in below)]

        def clientapps() -> list[int]:
            return [p for name in names for p in descendants(procs.popen[f"supernode-{name}"].pid)
                    if "flwr-clientapp" in cmdline(p)]

        cfg = FederationConfig.model_validate({
            "task": "denoise", "train": LOAD_TRAIN, "min_nodes": n_nodes,
            "expected_nodes": [f"site-{i}" for i in range(n_nodes)],
            "timeouts": {"wait_for_nodes_s": 300, "collect_s": 600, "evaluate_s": 600}})
        groups = {"superlink": superlink_side, "serverapp": serverapps,
                  "clientapp": clientapps}
        t0 = time.perf_counter()
        with PeakMemory(groups) as peak:
            report = train_deployment(cfg, root / "run", link.address,
                                      root_certificates=certs["ca_cert"], stream=False,
                                      timeout_s=1800)
        wall = time.perf_counter() - t0
        peaks = peak.peaks()
        clients = list(peak.per_process("clientapp").values())
        package_bytes = [n.package_bytes or 0 for n in report.nodes]
        return _row(kind="load", nodes=n_nodes, wall_s=round(wall, 1),
                    serverapp_peak_mb=round(peaks["serverapp"], 1),
                    superlink_peak_mb=round(peaks["superlink"], 1),
                    serverapp_processes=len(peak.pids("serverapp")),
                    clientapp_peak_mb_max=round(max(clients, default=0.0), 1),
                    status=report.status, error=report.error,
                    used=sum(n.status == "used" for n in report.nodes),
                    bytes_up=report.bytes_up, bytes_down=report.bytes_down,
                    package_bytes=max(package_bytes, default=0),
                    n_train_images=report.n_train_images, run_wall_s=round(report.wall_s, 1),
                    train_s=round(report.train_s or 0.0, 1))
    finally:
        procs.stop_all()


# --- the page ---------------------------------------------------------------------------


def _state(row: dict[str, Any]) -> str:
    """``idle`` or ``shared`` (rows from before the label existed ran on a shared machine)."""
    return str(row.get("machine_state", "shared"))


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:,}" if isinstance(v, int) else str(v)


def to_markdown(data: dict[str, Any]) -> str:
    rows = data["rows"]
    lines = ["# Scale on one machine: `--workers` throughput and a loopback load test", "",
             f"Machine: {data['machine']}. Measured {data['date']}. Reproduce: "
             "`python -m benchmarks.load_test` (rewrite this page from scale.json: "
             "`--render`).", "",
             *(["**The machine was shared** while the rows marked `shared` ran: another long "
                "benchmark and other people's tests used the same CPU cores, so their times are "
                "slower than on an idle machine (see below for which way a speed-up leans); "
                "rows marked `idle` ran with nothing else on the machine.", ""]
               if any(_state(r) == "shared" for r in rows) else
               ["Every row ran on an otherwise idle machine.", ""]),
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(_state(r) if c == "machine_state" else
                                     r.get(c, data["date"] if c == "date" else None))
                                for c in COLUMNS) + " |" for r in rows]
    work = [r for r in rows if r["kind"] == "workers"]
    load = [r for r in rows if r["kind"] == "load"]
    if work:
        base = next((r for r in work if r["workers"] == 1), work[0])
        lines += ["", "## Throughput vs workers", "",
                  f"{base['patients']} real MR patients (sample cohort), default config "
                  f"(method {base['method']}, IPC {base['ipc']}, {base['size']} px), distilled "
                  "by `distill_site` — the function `medidd-node distill` calls; the packages "
                  "of all runs are byte-identical when the torch threads per patient are the same "
                  "(tests/distill/test_engines.py).", "",
                  "| workers | torch threads / patient | wall s | patients / h | speed-up | "
                  "mean s / patient | slowest patient s |", "|---|---|---|---|---|---|---|"]
        for r in work:
            lines.append(f"| {r['workers']} | {r['torch_threads_per_patient']} | {r['wall_s']} "
                         f"| {r['patients_per_hour']} | "
                         f"{r['patients_per_hour'] / base['patients_per_hour']:.2f}x | "
                         f"{r['seconds_per_patient_mean']} | {r['seconds_per_patient_max']} |")
        best = max(work, key=lambda r: r["patients_per_hour"])
        ideal = base["patients"] / -(-base["patients"] // max(best["workers"], 1))
        measured = best["patients_per_hour"] / base["patients_per_hour"]
        lines += ["", f"With {base['patients']} patients on {best['workers']} workers the "
                  f"speed-up of equally fast patients is at most {ideal:.2f}x (the last round "
                  "has fewer patients than workers), less when patients differ in size (the "
                  "slowest patient ends the run); pool start-up (spawned processes importing "
                  "torch) is included."]
        if measured > ideal:
            lines += ["", f"The measured {measured:.2f}x is above that bound because a patient "
                      "did not cost the same in both runs: "
                      f"{base['seconds_per_patient_mean']} s on average with "
                      f"{base['torch_threads_per_patient']} torch threads (workers 1) against "
                      f"{best['seconds_per_patient_mean']} s with "
                      f"{best['torch_threads_per_patient']} (workers {best['workers']}). On "
                      "shared cores a team of torch threads stalls whenever another process "
                      "holds one of its cores, while single-thread workers just run slower, so "
                      "this shared-machine figure *overstates* the speed-up an idle machine "
                      f"gives (at most {ideal:.2f}x here). The issue's target (>= 1.6x on 2 "
                      "cores) is met on this measurement; an idle-machine run is needed to "
                      "confirm it."]
        elif _state(best) == "idle":
            lines += ["", f"Idle machine: {measured:.2f}x with {best['workers']} workers "
                      f"against the {ideal:.2f}x bound of equally fast patients (target >= "
                      f"1.6x on 2 cores: {'met' if measured >= 1.6 else 'not met'})."]
            t1, tn = base["seconds_per_patient_mean"], best["seconds_per_patient_mean"]
            if tn > t1:
                own = tn / t1
                cap = best["workers"] * t1 / tn
                lines += ["", f"Why: one worker with {base['torch_threads_per_patient']} torch "
                          f"threads took {t1} s per patient, a worker with "
                          f"{best['torch_threads_per_patient']} took {tn} s: the baseline "
                          f"already gets {own:.2f}x from its second thread, so "
                          f"{best['workers']} workers can give at most {cap:.2f}x over it "
                          f"({cap * ideal / best['workers']:.2f}x with the last-round bound "
                          "above)."]
        per_worker = best["patients_per_hour"] / best["workers"]
        lines += ["", "## A 10,000-patient site (projection from the measured cost)", "",
                  f"One worker process (one core, one torch thread) did {per_worker:.1f} "
                  f"patients / h in the workers-{best['workers']} run ("
                  + ("on shared cores: a conservative cost" if _state(best) == "shared" else
                     "idle machine") + "); days = 10,000 / (that x workers) / 24, assuming the "
                  "workers scale with the cores (independent patients, nothing shared but the "
                  "read-only prior).", "",
                  "| workers (cores) | days for 10,000 patients |", "|---|---|"]
        for w in (1, 2, 8, 16, 64):
            lines.append(f"| {w} | {10_000 / (per_worker * w) / 24:.1f} |")
    if load:
        lines += ["", "## Loopback load test (deployment engine, TLS + SuperNode auth)", "",
                  "Each SuperNode serves a copy of the real package of the workers run "
                  f"({_fmt(load[0]['package_bytes'])} bytes, one shard); the ServerApp "
                  "collects them shard by shard (at most `collect.max_in_flight` = 4 requests "
                  f"waiting), validates each, trains a small net ({LOAD_TRAIN['steps']} steps) "
                  "from disk and runs the evaluate round (the nodes have no held-out patients "
                  "and decline it). The wall time grows with the nodes mostly because each "
                  "SuperNode starts a ClientApp process (importing torch) on the same 2 cores.",
                  "",
                  "| nodes | status | used | ServerApp peak MB | SuperLink peak MB | ClientApp "
                  "peak MB (max) | wall s | bytes up | bytes down |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in load:
            lines.append(f"| {r['nodes']} | {r['status']} | {r['used']} | "
                         f"{r['serverapp_peak_mb']} | {r['superlink_peak_mb']} | "
                         f"{r['clientapp_peak_mb_max']} | {r['wall_s']} | "
                         f"{_fmt(r['bytes_up'])} | {_fmt(r['bytes_down'])} |")
        lo, hi = load[0], load[-1]
        growth = hi["serverapp_peak_mb"] / lo["serverapp_peak_mb"] - 1
        lines += ["", f"ServerApp peak from {lo['nodes']} to {hi['nodes']} nodes: "
                  f"{growth:+.1%} (target: within 20%). Peak resident memory is `VmHWM` of "
                  "each process, summed over the group's processes (SuperLink = "
                  "flower-superlink and its SuperExec; ServerApp = flwr-serverapp)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="2,5,10")
    ap.add_argument("--patients", type=int, default=7)
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "scale")
    ap.add_argument("--samples", type=Path, default=ROOT / "data" / "samples")
    ap.add_argument("--render", action="store_true", help="rewrite scale.md from scale.json")
    ap.add_argument("--idle", action="store_true", help="label the new rows as measured on an "
                    "otherwise idle machine (default: shared)")
    ap.add_argument("--keep-load", action="store_true", help="run only the workers rows and keep "
                    "the load rows of the current scale.json (with their own date and label)")
    args = ap.parse_args()
    if args.render:
        data = json.loads((DOCS / "scale.json").read_text())
        atomic_write_text(DOCS / "scale.md", to_markdown(data))
        return
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                            "rows": []}
    partial = work / "scale.partial.json"  # every finished stage, so a crash loses none

    state = "idle" if args.idle else "shared"

    def keep(rows: list[dict[str, Any]]) -> None:
        data["rows"] += [{**r, "machine_state": state, "date": data["date"]} for r in rows]
        atomic_write_text(partial, json.dumps(data, indent=1))

    rows, package = workers_rows(args.samples, work, args.patients)
    keep(rows)
    if args.keep_load:
        old = json.loads((DOCS / "scale.json").read_text())
        data["rows"] += [{**r, "date": r.get("date", old["date"])} for r in old["rows"]
                         if r["kind"] == "load"]
    for n in ([] if args.keep_load else (int(x) for x in args.nodes.split(","))):
        print(f"load test with {n} SuperNodes ...", flush=True)
        row = load_row(n, package, work)
        print(f"  {row}", flush=True)
        keep([row])
    atomic_write_text(DOCS / "scale.json", json.dumps(data, indent=1))
    atomic_write_text(DOCS / "scale.md", to_markdown(data))
    print((DOCS / "scale.md").read_text())


if __name__ == "__main__":
    main()
