"""``medidd-node``: what a hospital engineer runs at the site.

Thin: every command parses options, calls one library function and prints. Heavy imports live
inside the commands so ``medidd-node --help`` is instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hospital_node._console import (
    LookUpChoice,
    cli_flags,
    console,
    fail,
    markup_mode,
    medidd_home,
    node_flags,
    out,
    progress_bar,
    setup_logging,
)

if TYPE_CHECKING:
    from medidd.package.manifest import Manifest
    from medidd.preprocess.pipeline import PreprocessConfig

app = typer.Typer(
    name="medidd-node",
    help="MediDD hospital node: inspect, distil, audit and serve distilled packages, and "
    "apply trained models to the site's scans.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=markup_mode(),
)

#: The distillation methods ``--method`` offers (checked against the registry of
#: :mod:`medidd.distill` by tests/cli/test_cli_options.py; listed here so --help stays instant).
DISTILL_METHODS: tuple[str, ...] = (
    "spg_gm", "prior_only", "pixel_gm", "dc_real", "dc_noise", "dm", "idc", "tripled",
    "random", "herding", "kcenter", "full",
)

Patients = Annotated[
    Path,
    typer.Option("--patients", "-p", help="folder with one sub-folder (or file set) per patient"),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
Modality = Annotated[
    str | None,
    typer.Option(click_type=LookUpChoice(("CT", "MR"), what="modality", fold_case=True),
                 help="keep only this modality"),
]
Allow2D = Annotated[
    bool, typer.Option("--allow-2d", help="accept a single axial 2D image as a one-slice volume")
]
SaltFile = Annotated[Path | None, typer.Option(help="site salt (default ~/.medidd/salt)")]
Cache = Annotated[
    Path | None, typer.Option(help="preprocessing cache folder (default ~/.medidd/cache)")
]


def _version(value: bool) -> None:
    if value:
        import medidd

        out.print(f"medidd-node {medidd.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = None,
) -> None:
    """The version option (commands are below)."""


def _modality(value: str | None) -> str | None:
    return value.upper() if value is not None else None


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
    allow_2d: Allow2D = False,
    salt_file: SaltFile = None,
    quiet: Quiet = False,
) -> None:
    """Show what was found per patient and everything skipped, with the reason.

    The "source" column (which folder or file a pseudonym came from) is for the site operator
    only: it may name patients, and it never leaves the site. Exit code 1 when no usable
    patient remains.
    """
    from medidd.io.discover import ingest, summarise_cohort
    from medidd.io.options import IngestOptions
    from medidd.preprocess.cohort import series_sources

    setup_logging(True)
    try:
        options = IngestOptions(modality=_modality(modality), allow_2d=allow_2d)
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
    sources = series_sources(report)
    volumes = [{**r, "source": sources.get(str(r["series"]), "")} for r in rows
               if r.get("kind") == "volume"]
    skipped = [{**r, "reason": cli_flags(str(r["reason"]))} for r in rows
               if r.get("kind") != "volume"]
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
        if volumes:
            src = Table(title="where each series came from (local only: never shared)")
            src.add_column("patient", no_wrap=True)
            src.add_column("series", no_wrap=True)
            src.add_column("source", overflow="fold")
            for r in volumes:
                src.add_row(str(r.get("patient", "")), str(r.get("series", "")), r["source"])
            out.print(src)
        if skipped:
            s = Table(title=f"skipped ({len(skipped)})")
            s.add_column("source", overflow="fold")  # the whole file name, wrapped
            s.add_column("reason")
            for r in skipped:
                s.add_row(str(r["source"]), str(r["reason"]))
            out.print(s)
        for note in report.notes:
            out.print(f"note: {note}")
    if usable == 0:
        raise fail(
            f"no usable patient in {patients}: no CT/MR image series or volume was found "
            "(every input is listed as skipped, with the reason)",
            code=1,
        )


@app.command("sample-data")
def sample_data(
    out_dir: Annotated[Path, typer.Option("--out", help="where to write the DICOM tree")],
    samples: Annotated[Path, typer.Option(help="folder from fetch_real_samples.sh")] = Path(
        "data/samples"
    ),
    modality: Annotated[
        str,
        typer.Option(click_type=LookUpChoice(("CT", "MR", "both"), what="modality",
                                             fold_case=True), help="which modality"),
    ] = "both",
    region: Annotated[
        str,
        typer.Option(click_type=LookUpChoice(("head", "body", "all"), what="region"),
                     help="which body region"),
    ] = "all",
    sample: Annotated[
        list[str] | None, typer.Option(help="only this sample, e.g. lung1 (repeatable)")
    ] = None,
    compress: Annotated[bool, typer.Option(help="JPEG 2000 lossless pixel data")] = False,
    overwrite: bool = False,
) -> None:
    """Write the fetched real cohort as a patients tree, one folder per patient.

    Prints the patient folders; the folder name keeps the sample's name (CT-06-head_ct1).
    """
    from medidd.io.sample_data import make_sample_patients, sample_region

    setup_logging(True)
    if not (samples / "ct").is_dir():
        raise fail(
            f"{samples} has no ct/ folder: fetch the samples first with "
            f"`bash ../shared/data/fetch_real_samples.sh {samples}`"
        )
    try:
        written = make_sample_patients(
            samples,
            out_dir,
            modality=modality,
            region=region,
            names=sample,
            compress=compress,
            overwrite=overwrite,
        )
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    for p in written:
        out.print(str(p))
    counts: dict[str, int] = {}
    for p in written:
        kind = f"{p.name[:2]} {sample_region(p.name)}"
        counts[kind] = counts.get(kind, 0) + 1
    console.print(
        f"wrote {len(written)} patients under {out_dir}: "
        + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    )


@app.command()
def distill(
    patients: Patients,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="package folder to write")],
    task: Annotated[
        str | None,
        typer.Option(click_type=LookUpChoice(("denoise", "sr"), what="task"),
                     help="the enhancement task"),
    ] = None,
    ipc: Annotated[int | None, typer.Option(help="distilled images per patient")] = None,
    method: Annotated[
        str | None,
        typer.Option(click_type=LookUpChoice(DISTILL_METHODS, what="distillation method"),
                     help="distillation method (default spg_gm)"),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, key.sub=value")] = None,
    modality: Modality = None,
    overwrite: Annotated[bool, typer.Option(help="replace a different package at --out")] = False,
    allow_2d: Allow2D = False,
    cache: Cache = None,
    salt_file: SaltFile = None,
    quiet: Quiet = False,
    workers: Annotated[
        int,
        typer.Option(min=1, help="patients distilled in parallel by this many worker "
                     "processes (more than the CPU cores: clamped, with a warning); with "
                     "--ray: at most this many patients at once (1 = the cluster's CPUs)"),
    ] = 1,
    ray: Annotated[
        str | None,
        typer.Option("--ray", help="distil the patients on a Ray cluster: its address "
                     "(HOST:PORT, ray://HOST:PORT) or 'auto' (the cluster on this machine)"),
    ] = None,
    float16: Annotated[
        bool,
        typer.Option("--float16", help="store the images as float16: half the bytes on disk "
                     "and on the wire (rounding at most 2.4e-4 in [0, 1])"),
    ] = False,
) -> None:
    """Distil every patient into a package of synthetic HQ/LQ pairs (resumable)."""
    from medidd.config import ConfigError, load_config
    from medidd.distill.config import DistillConfig
    from medidd.distill.engines import PatientEngine, PatientEvent
    from medidd.distill.run import DistillError, distill_site
    from medidd.io.options import IngestOptions
    from medidd.package import PackageError
    from medidd.preprocess.cohort import prepare_patients

    setup_logging(quiet)
    engine: PatientEngine | None = None
    if ray is not None:
        from medidd.distill.ray_engine import RayEngine

        engine = RayEngine(ray, max_in_flight=workers if workers > 1 else None)
    overrides = list(set_ or [])
    chosen = (("task", task), ("ipc", ipc), ("method", method))
    overrides += [f"{k}={v}" for k, v in chosen if v]
    try:
        cfg = load_config(DistillConfig, config, overrides)
        options = IngestOptions(modality=_modality(modality), allow_2d=allow_2d)
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
            console.print(f"[yellow]skipped[/] {s.source}: {cli_flags(s.reason)}")
        t_pat = bar.add_task("patients", total=len(prep.slices), info="")
        t_step = bar.add_task("  matching", total=None, info="")

        def on_event(e: PatientEvent) -> None:
            bar.update(t_pat, completed=e.done, info=f"{e.kind} {e.key} {e.where}".rstrip())
            if e.kind in ("retry", "failed"):
                console.print(f"[yellow]patient {e.key}[/]: {e.kind} ({e.error})")

        try:
            result = distill_site(
                prep.slices,
                cfg,
                out_dir,
                overwrite=overwrite,
                on_step=lambda s, n, loss: bar.update(
                    t_step, completed=s, total=n, info=f"loss {loss:.4f}"
                ),
                workers=workers,
                engine=engine,
                on_event=on_event,
                dtype_on_disk="float16" if float16 else "float32",
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
        + (f", {len(result.retried)} redone after a worker died" if result.retried else "")
    )


@app.command()
def export(
    package: Annotated[Path, typer.Option("--package", help="package folder or .zip")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="folder for the NIfTI files")],
    patients: Annotated[
        Path | None,
        typer.Option("--patients", "-p", help="the patients the package was distilled from: "
                     "gives each stack its real in-plane pixel size (else 1 mm nominal)"),
    ] = None,
    normalised: Annotated[
        bool, typer.Option(help="keep the package's [0, 1] values instead of HU")
    ] = False,
    modality: Modality = None,
    salt_file: SaltFile = None,
) -> None:
    """Export a package's HQ/LQ stacks as NIfTI per patient (HU for CT), for viewing."""
    from medidd.package import PackageError, export_nifti, read_package

    setup_logging(True)
    try:
        pixel_mm = None
        if patients is not None:
            from medidd.enhance.apply import model_pixel_mm
            from medidd.io.discover import ingest
            from medidd.io.options import IngestOptions

            manifest = read_package(package).manifest
            pre = _package_preprocess(manifest)
            options = IngestOptions(modality=_modality(modality) or manifest.modality)
            cohort = ingest(patients, _salt(salt_file), options).cohort
            pixel_mm = {p.key: model_pixel_mm(max(p.volumes, key=lambda v: v.n_slices), pre)
                        for p in cohort.usable_patients}
        for p in export_nifti(package, out_dir, native=not normalised, pixel_mm=pixel_mm):
            out.print(str(p))
    except (PackageError, FileNotFoundError, ValueError) as exc:
        raise fail(cli_flags(str(exc))) from None


def _package_preprocess(manifest: Manifest) -> PreprocessConfig:
    from hospital_node.audit_cli import _preprocess_config

    pre: PreprocessConfig = _preprocess_config(manifest)
    return pre


@app.command()
def enhance(
    model: Annotated[
        Path,
        typer.Option("--model", "-m", help="model.safetensors (metadata.json beside it) or its "
                     "folder, as the aggregator wrote it"),
    ],
    patients: Patients,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="output folder (new or empty)")],
    modality: Modality = None,
    dicom: Annotated[
        bool, typer.Option(help="also write a derived DICOM series for DICOM input")
    ] = True,
    overwrite: Annotated[bool, typer.Option(help="replace a different result at --out")] = False,
    allow_2d: Allow2D = False,
    batch_size: Annotated[int, typer.Option(min=1, help="slices per forward pass")] = 8,
    salt_file: SaltFile = None,
    quiet: Quiet = False,
) -> None:
    """Apply a trained model to real DICOM or NIfTI patients: NIfTI in HU (CT) on the input's
    own grid, plus a derived DICOM series (new UIDs, ImageType DERIVED) for DICOM input."""
    from medidd.enhance import EnhanceError, enhance_patients
    from medidd.io.options import IngestOptions
    from medidd.model import ModelError

    setup_logging(quiet)
    try:
        options = IngestOptions(modality=_modality(modality), allow_2d=allow_2d)
    except ValueError as exc:
        raise fail(cli_flags(str(exc))) from None
    with progress_bar(quiet) as bar:
        t_vol = bar.add_task("series", total=None, info="")
        t_sl = bar.add_task("  slices", total=None, info="")
        try:
            result = enhance_patients(
                model,
                patients,
                out_dir,
                salt=_salt(salt_file),
                options=options,
                dicom=dicom,
                overwrite=overwrite,
                batch_size=batch_size,
                on_volume=lambda i, n, label: bar.update(t_vol, completed=i, total=n,
                                                         info=label),
                on_slices=lambda d, n: bar.update(t_sl, completed=d, total=n),
            )
        except (ModelError, EnhanceError, FileNotFoundError) as exc:
            raise fail(cli_flags(str(exc))) from None
    for item in result.skipped:
        console.print(f"[yellow]skipped[/] {item.source}: {cli_flags(item.reason)}")
    if result.unchanged:
        out.print(f"{out_dir} already holds this result (same model, same input): unchanged")
    for s in result.series:
        lo, hi = s.output_range
        n_dcm = sum(f.endswith(".dcm") for f in s.files)
        out.print(f"{s.patient}: {s.files[0]}" + (f" + {n_dcm} DICOM files" if n_dcm else "")
                  + f", {s.n_slices} slices, output {lo:.0f} to {hi:.0f}"
                  + (f" (no DICOM: {s.dicom_note})" if s.dicom_note else ""))
    console.print(f"enhanced {len(result.series)} series into {out_dir}")


@app.command("serve")
def serve_cmd(
    superlink: Annotated[str, typer.Option(help="SuperLink address HOST:PORT")],
    package: Annotated[Path | None, typer.Option(help="the audited package to serve (none: "
                       "shared-prior rounds only)")] = None,
    patients: Annotated[Path | None, typer.Option(help="local patients (FedAvg baseline)")] = None,
    holdout: Annotated[Path | None, typer.Option(help="held-out patients for evaluation")] = None,
    name: Annotated[str, typer.Option(help="this hospital's name in reports")] = "hospital",
    root_certificates: Annotated[Path | None, typer.Option(help="CA certificate (TLS)")] = None,
    insecure: Annotated[bool, typer.Option(help="no TLS (local testing only)")] = False,
    auth_key: Annotated[Path | None, typer.Option(help="SuperNode private key")] = None,
    port: Annotated[int, typer.Option(help="ClientAppIo port of this SuperNode")] = 9094,
    salt_file: SaltFile = None,
    cache: Cache = None,
    override_audit_by: Annotated[
        str | None, typer.Option(help="who overrides a failed audit")
    ] = None,
    override_audit_reason: Annotated[str | None, typer.Option(help="why (recorded)")] = None,
    region: Annotated[str | None, typer.Option(help="body region of every patient of this "
                      "site for the shared prior (CT: head, chest, abdomen; MR: head, body); "
                      "default: guessed per patient")] = None,
    prior_dir: Annotated[Path | None, typer.Option(help="where to keep the shared prior the "
                         "aggregator sends back")] = None,
    report_dir: Annotated[Path | None, typer.Option(help="where to write the site-local "
                          "report of every evaluate round (default: beside the package, "
                          "PACKAGE.node-report)")] = None,
) -> None:
    """Run a Flower SuperNode that serves this package (only if its audit passed, or an
    override is recorded with --override-audit-by and --override-audit-reason)."""
    from hospital_node.serve import node_settings, serve
    from medidd.config import ConfigError
    from medidd.federation.node import NodeRefusal

    try:
        settings = node_settings(
            package,
            name=name,
            patients=patients,
            holdout=holdout,
            salt_file=salt_file,
            cache_dir=cache,
            override_audit=override_audit_by is not None,
            region=region,
            prior_dir=prior_dir,
            report_dir=report_dir,
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
    except (NodeRefusal, ConfigError, ValueError, FileNotFoundError) as exc:
        raise fail(node_flags(str(exc))) from None
    raise typer.Exit(code)


def _register_audit() -> None:
    from hospital_node.audit_cli import audit

    app.command("audit")(audit)


_register_audit()

if __name__ == "__main__":  # pragma: no cover
    app()
