"""``medidd-node audit``: the privacy officer's command (registered in hospital_node/cli.py).

Thin: read the policy and the patients, call :func:`medidd.privacy.audit.run_audit`, write the
report, record the verdict in the manifest, print a summary. Exit codes: 0 passed, 1 failed or
inconclusive (the package may not leave), 2 usage errors (bad paths, config, salt, sizes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from hospital_node._console import (
    console,
    fail,
    medidd_home,
    node_flags,
    out,
    progress_bar,
    setup_logging,
)
from medidd.config import with_flags

#: what ``run_audit``'s inputs are called on this command line
INPUT_FLAGS = {"holdout": "--holdout", "patients": "--patients", "salt": "--salt-file"}


def _preprocess_config(manifest: Any) -> Any:
    """The package's own preprocessing (from its recorded method config), or size + window."""
    from pydantic import ValidationError

    from medidd.preprocess.pipeline import PreprocessConfig

    recorded = (manifest.method_config or {}).get("preprocess")
    if isinstance(recorded, dict):
        try:
            return PreprocessConfig.model_validate(recorded)
        except ValidationError:
            pass
    return PreprocessConfig(size=manifest.image_size, ct_window=tuple(manifest.window))


def audit(
    package: Annotated[Path, typer.Option("--package", help="package folder or .zip")],
    patients: Annotated[
        Path, typer.Option("--patients", "-p", help="the site's patients folder (distilled)")
    ],
    holdout: Annotated[
        Path | None, typer.Option("--holdout", help="held-out patients (never distilled)")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="audit policy YAML (configs/audit.yaml)")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="report folder (default: <package>.audit beside it)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print report.json's summary")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    salt_file: Annotated[
        Path | None, typer.Option(help="site salt (default ~/.medidd/salt)")
    ] = None,
) -> None:
    """Audit a package for privacy (PHI, memorisation, membership inference) and record the
    verdict in its manifest. Exit code 1 when the policy fails or the audit is inconclusive."""
    from medidd.config import ConfigError, load_config
    from medidd.io.options import IngestOptions
    from medidd.io.pseudonym import load_or_create_salt
    from medidd.package import PackageError, read_package
    from medidd.preprocess.cohort import prepare_patients
    from medidd.privacy.audit import AuditError, run_audit
    from medidd.privacy.policy import AuditPolicy

    setup_logging(True)
    try:
        policy = load_config(AuditPolicy, config)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if not package.exists():
        raise fail(f"--package {package} does not exist")
    if not patients.is_dir():
        raise fail(f"--patients {patients} is not a folder")
    report_dir = out_dir or package.with_name(package.name + ".audit")
    if report_dir.resolve().is_relative_to(package.resolve()):
        raise fail(f"--out {report_dir} is inside the package; the report shows real slices "
                   "and must stay outside what leaves the site")
    try:
        manifest = read_package(package).manifest
    except PackageError:  # invalid or holding extra files: the audit fails and says why
        _finish(run_audit(package, [], None, policy), report_dir, package, as_json)
        return
    salt = load_or_create_salt(salt_file or medidd_home() / "salt")
    pre = _preprocess_config(manifest)
    options = IngestOptions(modality=manifest.modality)
    with progress_bar(quiet or as_json) as bar:
        task = bar.add_task("reading patients", total=None, info="")
        try:
            site = prepare_patients(patients, salt=salt, cfg=pre, options=options,
                                    cache_dir=medidd_home() / "cache",
                                    progress=lambda d, n: bar.update(task, completed=d, total=n))
            held = (prepare_patients(holdout, salt=salt, cfg=pre, options=options,
                                     cache_dir=medidd_home() / "cache").slices
                    if holdout is not None else None)
        except FileNotFoundError as exc:
            raise fail(str(exc)) from None
        stage = bar.add_task("audit", total=None, info="")

        def progress(name: str, done: int, total: int) -> None:
            bar.update(stage, completed=done, total=total, info=name)

        try:
            report = run_audit(package, list(site.slices), held, policy, progress)
        except (AuditError, PackageError, ValueError) as exc:
            raise fail(with_flags(str(exc), INPUT_FLAGS, scope="input")) from None
    _finish(report, report_dir, package, as_json)


def _finish(report: Any, report_dir: Path, package: Path, as_json: bool) -> None:
    """Write the report, record the verdict (valid packages), print the audit gate's answer
    (what ``medidd-node serve`` will say), exit 1 unless passed."""
    from medidd.federation.node import node_key
    from medidd.package import PackageError, audit_gate
    from medidd.privacy.audit import record_audit
    from medidd.report.audit import write_report

    files = write_report(report, report_dir)
    try:
        record_audit(package, report, files.json_sha256)
    except PackageError:
        console.print("[yellow]verdict not recorded in the manifest: the package is invalid[/]")
    gate = audit_gate(package, accept_override=False, override_key=node_key("override_audit"))
    summary = report.summary()
    if as_json:
        out.print_json(json.dumps({"verdict": report.verdict, "reasons": report.reasons,
                                   "summary": summary, "report": str(files.json),
                                   "audit_gate": {"ok": gate.ok,
                                                  "reason": node_flags(gate.reason)}}))
    else:
        colour = {"passed": "green", "failed": "red"}.get(report.verdict, "yellow")
        out.print(f"audit [bold {colour}]{report.verdict.upper()}[/]  ({report.seconds:.0f} s)")
        for reason in report.reasons:
            out.print(f"  - {reason}")
        if report.matching:
            out.print(f"  non-members: {report.matching['kind']}"
                      f"{'' if report.matching['matched'] else ' (not matched)'}")
        shown = ("eps_lower_bound", "eps_lower_bound_control", "max_nn_ncc", "ideal_ncc",
                 "max_nn_ssim", "gate_auc", "control_auc")
        out.print("  " + ", ".join(f"{k} {summary[k]:.3f}" for k in shown if k in summary))
        out.print(f"  report: {files.html} (stays at the site), {files.json}")
        if not gate.ok:
            console.print(f"the package may not leave the site: {node_flags(gate.reason)}")
    if not report.passed:
        raise typer.Exit(1)
