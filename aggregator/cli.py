"""``medidd-aggregate``: the consortium's command line (thin; heavy imports inside commands).

Commands:

- ``train``: a federated run (simulation engine by default; ``--superlink`` for deployment);
- ``prior``: the shared anatomical prior, built by the nodes together (DP + SecAgg+);
- ``make-certs``: a development CA, SuperLink certificate and SuperNode key pairs.
"""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  rich_markup_mode="rich" if sys.stdout.isatty() and sys.stderr.isatty() else None,
                  help="MediDD aggregator: federated training and evaluation on Flower.")


def _version(value: bool) -> None:
    if value:
        import medidd

        typer.echo(f"medidd-aggregate {medidd.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool | None, typer.Option("--version", callback=_version,
                       is_eager=True, help="print the version")] = None,
) -> None:
    """MediDD aggregator: federated training and evaluation on Flower."""


#: Config keys (as library messages name them, :func:`medidd.config.config_key`) that have an
#: option of their own; every other key is set with ``--set KEY=VALUE``.
FLAGS: dict[str, str] = {"strategy": "--strategy"}


def with_options(message: str) -> str:
    """``message`` with the config keys it names replaced by this CLI's options."""
    from medidd.config import with_flags

    return with_flags(message, FLAGS, fallback=lambda key: f"--set {key}=...")


class Strategy(StrEnum):
    distill = "distill"
    fedavg = "fedavg"


#: The engine options every federated command (train, prior) takes, declared once.
Superlink = Annotated[str | None, typer.Option(
    help="HOST:PORT of a SuperLink, or the name of a connection in $FLWR_HOME/config.toml "
    "(deployment engine); default: in-process simulation")]
RootCertificates = Annotated[Path | None, typer.Option(
    help="CA certificate of the SuperLink (with --superlink HOST:PORT)")]
Insecure = Annotated[bool, typer.Option(help="no TLS (local tests only)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="print only the result")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="show Flower's and Ray's logs "
                                       "(default: warnings only)")]


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="federation YAML "
                      "(configs/federation.yaml)")] = None,
    strategy: Annotated[Strategy | None, typer.Option(help="distill: train on the collected "
                        "packages; fedavg: raw-data FedAvg baseline")] = None,
    out: Annotated[Path, typer.Option(help="report folder")] = Path("out/federation"),
    superlink: Superlink = None,
    root_certificates: RootCertificates = None,
    insecure: Insecure = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key, "
                    "e.g. --set train.steps=200")] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Collect the nodes' packages, train on their union, evaluate on every node's held-out
    patients and write report.html/report.json (or FedAvg with --strategy fedavg)."""
    overrides = list(set_ or [])
    if strategy is not None:
        overrides.append(f"strategy={strategy.value}")
    report = _run("train", config, overrides, out, superlink, root_certificates, insecure,
                  quiet, verbose)
    _print_report(report, out)
    if report.status != "ok":
        raise typer.Exit(1)


def _run(what: str, config: Path | None, overrides: list[str], out: Path, superlink: str | None,
         root_certificates: Path | None, insecure: bool, quiet: bool, verbose: bool) -> Any:
    """Load the federation config and run ``what`` (train / prior) on the deployment engine
    (``superlink``) or the in-process simulation; a config or engine error exits 2."""
    from medidd.config import ConfigError
    from medidd.federation.config import load_federation_config

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_federation_config(config, overrides)
        from aggregator import run

        if superlink:
            return getattr(run, f"{what}_deployment")(
                cfg, out, superlink, root_certificates=root_certificates, insecure=insecure,
                stream=verbose or not quiet)
        return getattr(run, f"{what}_simulation")(cfg, out, verbose=verbose)
    except (ConfigError, RuntimeError) as exc:
        typer.echo(f"error: {with_options(str(exc))}", err=True)
        raise typer.Exit(2) from exc


def _print_report(report: object, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from medidd.federation.report import RunReport

    assert isinstance(report, RunReport)
    table = Table(title=f"MediDD {report.strategy} run ({report.status})")
    for col in ("node", "status", "package audit", "PSNR dB", "SSIM", "LQ PSNR dB", "slices",
                "bytes up"):
        table.add_column(col, no_wrap=True)
    table.add_column("note", overflow="fold")
    for n in report.nodes:
        m = n.metrics
        notes = [*n.reasons, *(f"missing in {r}" for r in n.missing_in)]
        if n.override:
            notes.append(f"audit override by {n.override}")
        note = with_options("; ".join(notes))
        verdict = (n.package_audit or "") + (" (overridden)" if n.override else "")
        table.add_row(n.name, n.status, verdict, f"{m['psnr']:.2f}" if "psnr" in m else "",
                      f"{m['ssim']:.3f}" if "ssim" in m else "",
                      f"{m['psnr_lq']:.2f}" if "psnr_lq" in m else "",
                      f"{m.get('n_slices', 0):.0f}", f"{n.bytes_up:,}", note)
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    pooled = report.metrics
    console.print(
        f"pooled PSNR {pooled.get('psnr', float('nan')):.2f} dB (LQ "
        f"{pooled.get('psnr_lq', float('nan')):.2f}), SSIM {pooled.get('ssim', float('nan')):.3f}"
        f"; rounds {report.rounds}; bytes up {report.bytes_up:,}, down {report.bytes_down:,}; "
        f"wall {report.wall_s:.1f} s")
    if report.error:
        console.print(f"[red]error: {with_options(report.error)}[/red]")
    console.print(f"report: {Path(out) / 'report.html'}")


@app.command()
def prior(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="federation YAML "
                      "(its 'prior' and 'prior_round' sections)")] = None,
    out: Annotated[Path, typer.Option(help="folder for prior/ and prior-report.json")] =
        Path("out/prior"),
    superlink: Superlink = None,
    root_certificates: RootCertificates = None,
    insecure: Insecure = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key, "
                    "e.g. --set prior.epsilon=4")] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Build the shared anatomical prior with the nodes: each sends its clipped, noised sums
    per modality and region through SecAgg+; the server divides, writes OUT/prior (versioned,
    sha256, DP statement) and sends it back for every node's audit."""
    report = _run("prior", config, list(set_ or []), out, superlink, root_certificates,
                  insecure, quiet, verbose)
    if report.get("status") != "ok":
        typer.echo(f"error: {with_options(str(report.get('error')))}", err=True)
        raise typer.Exit(1)
    typer.echo(f"shared prior {report['prior_sha256']} in {report['prior_dir']}")
    groups = report.get("groups", {})
    assert isinstance(groups, dict)
    for name, g in groups.items():
        released = sum(g["released"])
        typer.echo(f"  {name}: {released}/{len(g['released'])} bins released, "
                   f"{g['n_sites']} sites, patients per bin {g['patients_per_bin']}")
    audit = report.get("audit")
    if isinstance(audit, dict):
        typer.echo(f"  audit: {audit['status']} (max NN-NCC {audit['max_nn_ncc']})")


@app.command("make-certs")
def make_certs(
    out: Annotated[Path, typer.Option(help="folder for ca.crt, server.pem/.key, keys")] =
        Path("certificates"),
    host: Annotated[list[str] | None, typer.Option(help="DNS name or IP of the SuperLink "
                    "(repeat); default localhost, 127.0.0.1, ::1")] = None,
    supernode: Annotated[list[str] | None, typer.Option(help="make a key pair for this "
                         "SuperNode (repeat)")] = None,
    days: Annotated[int, typer.Option(help="validity in days")] = 30,
) -> None:
    """Development certificates: a CA, a SuperLink TLS certificate and SuperNode key pairs."""
    from medidd.federation.certs import DEFAULT_HOSTS, make_dev_certificates

    files = make_dev_certificates(out, hosts=tuple(host or DEFAULT_HOSTS),
                                  supernodes=tuple(supernode or ()), days=days)
    for role, path in files.items():
        typer.echo(f"{role:>20}: {path}")
    typer.echo("register each SuperNode's public key with: flwr supernode register KEY.pub "
               "<connection>")


if __name__ == "__main__":  # pragma: no cover
    app()
