"""``medidd-node``: what a hospital engineer runs at the site.

Thin: every command parses options, calls one library function and prints. Heavy imports live
inside the commands so ``medidd-node --help`` is instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hospital_node._console import console, fail, medidd_home, out, progress_bar, setup_logging

app = typer.Typer(
    name="medidd-node",
    help="MediDD hospital node: inspect, distil, audit and serve distilled packages.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

Patients = Annotated[
    Path,
    typer.Option("--patients", "-p", help="folder with one sub-folder (or file set) per patient"),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
Modality = Annotated[str | None, typer.Option(help="keep only CT or MR")]


def _salt(salt_file: Path | None) -> bytes:
    from medidd.io.pseudonym import load_or_create_salt

    return load_or_create_salt(salt_file or medidd_home() / "salt")


def _dims(values: object, fmt: str) -> str:
    if not isinstance(values, list | tuple):
        return str(values or "")
    return "×".join(fmt.format(int(v) if fmt == "{:d}" else float(v)) for v in values)


def _num(value: object) -> str:
    return f"{float(value):.0f}" if isinstance(value, int | float) else str(value or "")


@app.command()
def inspect(
    patients: Patients,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    modality: Modality = None,
    salt_file: Annotated[
        Path | None, typer.Option(help="site salt (default ~/.medidd/salt)")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Show what was found per patient and everything skipped, with the reason.

    Exit code 1 when no usable patient remains.
    """
    from medidd.io.discover import ingest, summarise_cohort
    from medidd.io.options import IngestOptions

    setup_logging(True)
    try:
        options = IngestOptions(modality=modality)
    except ValueError as exc:
        raise fail(str(exc)) from None
    with progress_bar(quiet or as_json) as bar:
        task = bar.add_task("reading patients", total=None, info="")

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            report = ingest(patients, _salt(salt_file), options, progress)
        except FileNotFoundError as exc:
            raise fail(str(exc)) from None
    rows = summarise_cohort(report.cohort)
    volumes = [r for r in rows if "source" not in r]
    skipped = [r for r in rows if "source" in r]
    usable = len(report.cohort.usable_patients)
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "volumes": volumes,
                    "skipped": skipped,
                    "usable_patients": usable,
                    "notes": report.notes,
                },
                default=str,
            )
        )
    else:
        from rich.table import Table

        t = Table(title=f"usable series ({usable} patients)")
        for col in (
            "patient",
            "series",
            "modality",
            "slices",
            "shape (z×y×x)",
            "spacing mm",
            "min",
            "max",
        ):
            t.add_column(col, no_wrap=True)
        for r in volumes:
            t.add_row(
                str(r.get("patient", "")),
                str(r.get("series", "")),
                str(r.get("modality", "")),
                str(r.get("slices", "")),
                _dims(r.get("shape"), "{:d}"),
                _dims(r.get("spacing"), "{:.2f}"),
                _num(r.get("min")),
                _num(r.get("max")),
            )
        out.print(t)
        if skipped:
            s = Table(title=f"skipped ({len(skipped)})")
            s.add_column("source")
            s.add_column("reason")
            for r in skipped:
                s.add_row(str(r["source"]), str(r["reason"]))
            out.print(s)
        for note in report.notes:
            out.print(f"note: {note}")
    if usable == 0:
        raise typer.Exit(1)


@app.command("sample-data")
def sample_data(
    out_dir: Annotated[Path, typer.Option("--out", help="where to write the DICOM tree")],
    samples: Annotated[Path, typer.Option(help="folder from fetch_real_samples.sh")] = Path(
        "data/samples"
    ),
    modality: Annotated[str, typer.Option(help="CT, MR or both")] = "both",
    compress: Annotated[bool, typer.Option(help="JPEG 2000 lossless pixel data")] = False,
    overwrite: bool = False,
) -> None:
    """Turn the fetched real CT/MR volumes into one DICOM series per patient."""
    from medidd.io.sample_data import make_sample_patients

    if not (samples / "ct").is_dir():
        raise fail(
            f"{samples} has no ct/ folder: fetch the samples first with "
            f"`bash ../shared/data/fetch_real_samples.sh {samples}`"
        )
    try:
        written = make_sample_patients(
            samples, out_dir, modality=modality, compress=compress, overwrite=overwrite
        )
    except (ValueError, FileExistsError) as exc:
        raise fail(str(exc)) from None
    for p in written:
        out.print(str(p))


@app.command()
def distill(
    patients: Patients,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="package folder to write")],
    task: Annotated[str | None, typer.Option(help="denoise or sr")] = None,
    ipc: Annotated[int | None, typer.Option(help="distilled images per patient")] = None,
    method: Annotated[str | None, typer.Option(help="distillation method")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, key.sub=value")] = None,
    modality: Modality = None,
    overwrite: Annotated[bool, typer.Option(help="replace a different package at --out")] = False,
    cache: Annotated[Path | None, typer.Option(help="preprocessing cache folder")] = None,
    salt_file: Annotated[
        Path | None, typer.Option(help="site salt (default ~/.medidd/salt)")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Distil every patient into a package of synthetic HQ/LQ pairs (resumable)."""
    from medidd.config import ConfigError, load_config
    from medidd.distill.config import DistillConfig
    from medidd.distill.run import DistillError, distill_site
    from medidd.io.options import IngestOptions
    from medidd.package import PackageError
    from medidd.preprocess.cohort import prepare_patients

    setup_logging(quiet)
    overrides = list(set_ or [])
    overrides += [f"{k}={v}" for k, v in (("task", task), ("ipc", ipc), ("method", method)) if v]
    try:
        cfg = load_config(DistillConfig, config, overrides)
        options = IngestOptions(modality=modality)
    except (ConfigError, ValueError) as exc:
        raise fail(str(exc)) from None
    with progress_bar(quiet) as bar:
        t_read = bar.add_task("reading + preprocessing", total=None, info="")
        try:
            prep = prepare_patients(
                patients,
                salt=_salt(salt_file),
                cfg=cfg.preprocess,
                options=options,
                cache_dir=cache or medidd_home() / "cache",
                progress=lambda d, n: bar.update(t_read, completed=d, total=n),
            )
        except FileNotFoundError as exc:
            raise fail(str(exc)) from None
        bar.update(
            t_read,
            info=f"{len(prep.slices)} patients, {prep.n_slices} slices"
            + (" (cache)" if prep.cache_hit else ""),
        )
        for s in prep.skipped:
            console.print(f"[yellow]skipped[/] {s.source}: {s.reason}")
        t_pat = bar.add_task("patients", total=len(prep.slices), info="")
        t_step = bar.add_task("  matching", total=None, info="")
        try:
            result = distill_site(
                prep.slices,
                cfg,
                out_dir,
                overwrite=overwrite,
                on_patient=lambda i, n, key: bar.update(t_pat, completed=i, info=key),
                on_step=lambda s, n, loss: bar.update(
                    t_step, completed=s, total=n, info=f"loss {loss:.4f}"
                ),
            )
        except (DistillError, FileExistsError, PackageError, ValueError) as exc:
            raise fail(str(exc)) from None
        bar.update(t_pat, completed=len(prep.slices))
    per = result.seconds_per_patient
    mean_s = sum(per.values()) / len(per) if per else 0.0
    out.print(
        f"wrote {result.package}: {result.n_patients} patients x {cfg.ipc} pairs, method "
        f"{cfg.method}, {mean_s:.1f} s/patient"
        + (f", {len(result.resumed)} resumed from checkpoints" if result.resumed else "")
    )


@app.command()
def export(
    package: Annotated[Path, typer.Option("--package", help="package folder or .zip")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the NIfTI files")],
    nifti: Annotated[
        bool, typer.Option("--nifti", help="export as NIfTI (the only format)")
    ] = True,
) -> None:
    """Export a package's HQ/LQ stacks as NIfTI per patient, for viewing."""
    from medidd.package import PackageError, export_nifti

    try:
        for p in export_nifti(package, out_dir):
            out.print(str(p))
    except (PackageError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None


@app.command("serve")
def serve_cmd(
    superlink: Annotated[str, typer.Option(help="SuperLink address HOST:PORT")],
    package: Annotated[Path, typer.Option(help="the audited package to serve")],
    patients: Annotated[Path | None, typer.Option(help="local patients (FedAvg baseline)")] = None,
    holdout: Annotated[Path | None, typer.Option(help="held-out patients for evaluation")] = None,
    name: Annotated[str, typer.Option(help="this hospital's name in reports")] = "hospital",
    root_certificates: Annotated[Path | None, typer.Option(help="CA certificate (TLS)")] = None,
    insecure: Annotated[bool, typer.Option(help="no TLS (local testing only)")] = False,
    auth_key: Annotated[Path | None, typer.Option(help="SuperNode private key")] = None,
    port: Annotated[int, typer.Option(help="ClientAppIo port of this SuperNode")] = 9094,
    salt_file: Annotated[Path | None, typer.Option(help="site salt")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="preprocessing cache")] = None,
    override_audit_by: Annotated[
        str | None, typer.Option(help="who overrides a failed audit")
    ] = None,
    override_audit_reason: Annotated[str | None, typer.Option(help="why (recorded)")] = None,
) -> None:
    """Run a Flower SuperNode that serves this package (only if its audit passed)."""
    from hospital_node.serve import node_settings, serve
    from medidd.federation.node import NodeRefusal

    try:
        settings = node_settings(
            package,
            name=name,
            patients=patients,
            holdout=holdout,
            salt_file=salt_file,
            cache_dir=cache_dir,
            override_audit=override_audit_by is not None,
        )
        code = serve(
            superlink,
            settings,
            root_certificates=root_certificates,
            auth_private_key=auth_key,
            insecure=insecure,
            port=port,
            override_by=override_audit_by,
            override_reason=override_audit_reason,
        )
    except (NodeRefusal, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code)


def _register_audit() -> None:
    from hospital_node.audit_cli import audit

    app.command("audit")(audit)


_register_audit()

if __name__ == "__main__":  # pragma: no cover
    app()
