"""The reports people look at: each page's images are valid PNGs, and headless Chromium loads
the page and decodes every image (skipped, with the reason, where Chromium is not installed)."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from medidd.federation.report import RunLedger, write_report
from medidd.privacy.audit import AuditReport
from medidd.privacy.mia.onerun import one_run_audit
from medidd.report.audit import advice
from medidd.report.audit import write_report as write_audit

CHROMIUM = Path("/usr/bin/chromium")
PNG = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r"<img[^>]*\bsrc=\"([^\"]+)\"")


def _run(out: Path, strategy: str, *, psnr: float, up: int, down: int) -> Path:
    ledger = RunLedger(strategy=strategy, task="denoise", expected=["a", "b", "c"])
    ledger.config_sha256 = "0" * 64
    g = torch.Generator().manual_seed(0)
    for i, name in enumerate(("a", "b")):
        ledger.seen(i, name)
        ledger.add_bytes(i, up=up // 2, down=down // 2)
        ledger.set_status(i, "used" if strategy == "distill" else "trained")
        ledger.set_metrics(i, {"psnr": psnr + i, "psnr_lq": 28.0, "ssim": 0.85, "ssim_lq": 0.65,
                               "n_slices": 32.0, "n_patients": 1.0})
        if strategy == "distill":
            ledger.add_gallery(name, torch.rand(4, 1, 32, 32, generator=g),
                               torch.rand(4, 1, 32, 32, generator=g))
    ledger.seen(2, "c")
    ledger.set_status(2, "rejected", ["package audit failed and no override"])
    ledger.set_losses(list(np.geomspace(0.1, 0.001, 300)))
    if strategy == "fedavg":
        for r in range(3):
            ledger.add_round_metrics({"psnr": 31.0 + r, "psnr_lq": 28.0})
    write_report(ledger.finish(wall_s=1.0), out / f"report-{strategy}")
    return out / f"report-{strategy}" / "report.html"


def _audit(out: Path) -> Path:
    g = torch.Generator().manual_seed(1)
    report = AuditReport(
        verdict="failed",
        reasons=["membership inference: AUC 0.689 (point, best of loss) is above 0.6"],
        memorisation={"ncc": {"per_image": [0.87, 0.63], "near_copy_line": 0.95,
                              "ideal_line": 0.8, "nearest_patient": ["p-1", "p-2"],
                              "nearest_slice": [4, 9]}},
        pairs=(torch.rand(2, 1, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g)),
        roles={"p-1": "member", "p-2": "held-out"},
        matching={"kind": "held-out slabs", "matched": True,
                  "text": "non-members: the same patients' held-out slabs"},
        canaries={"package": one_run_audit([0.1, 0.3, 0.2, 0.0], [True, False, True, False]),
                  "control": one_run_audit([0.9, 0.1, 0.8, 0.0], [True, False, True, False])},
        canary_count=4,
    )
    out.mkdir(parents=True, exist_ok=True)
    return write_audit(report, out).html


def _node(out: Path) -> Path:
    from medidd.report.node import write_node_report

    hq = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    return write_node_report(out, node="hospital-a", model=torch.nn.Identity(), hq=hq,
                             lq=hq.clamp(0, 0.9), metrics={"psnr": 31.0, "psnr_lq": 28.0},
                             labels=["held-out slice 0", "held-out slice 5"])


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("reports")
    return {"distill": _run(out, "distill", psnr=33.0, up=535_000, down=61_000),
            "fedavg": _run(out, "fedavg", psnr=35.5, up=183_000, down=248_000),
            "audit": _audit(out / "audit"), "node": _node(out / "node")}


def _images(page: Path) -> list[bytes]:
    out = []
    for src in IMG.findall(page.read_text()):
        if src.startswith("data:image/png;base64,"):
            out.append(base64.b64decode(src.split(",", 1)[1]))
        else:
            out.append((page.parent / src).read_bytes())
    return out


@pytest.mark.parametrize(("page", "n_min"), [("distill", 3), ("fedavg", 4), ("audit", 2),
                                             ("node", 1)])
def test_every_image_is_a_png(pages: dict[str, Path], page: str, n_min: int) -> None:
    images = _images(pages[page])
    assert len(images) >= n_min
    assert all(png.startswith(PNG) for png in images)


def test_run_report_says_units_version_hash_and_rejections(pages: dict[str, Path]) -> None:
    text = pages["fedavg"].read_text()
    for needle in ("PSNR (dB)", "kB", "software version", "0" * 64, "Rejected or refused",
                   "package audit failed and no override", "PSNR per FedAvg round",
                   "Distillation vs FedAvg"):
        assert needle in text, needle
    assert "Distilled pairs received" in pages["distill"].read_text()
    assert "gallery" not in (pages["distill"].parent / "report.json").read_text()


def test_gallery_keeps_a_few_pairs_per_node_and_stays_out_of_the_json() -> None:
    ledger = RunLedger(strategy="distill", task="denoise")
    for _ in range(3):
        ledger.add_gallery("a", torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8), keep=3)
    hq, lq = ledger.gallery["a"]
    assert hq.shape[0] == lq.shape[0] == 3
    report = ledger.finish(wall_s=0.0)
    assert "a" in report._gallery and "gallery" not in report.model_dump()


def test_audit_report_leads_with_verdict_and_advice(pages: dict[str, Path]) -> None:
    text = pages["audit"].read_text()
    body = text[text.index("<body>"):]
    assert body.index("FAILED") < body.index("Reasons")
    assert "what to do:" in text and "patient p-1" not in text  # the label is in the image
    assert body.index("held-out slabs") < body.index("Canary tests") < body.index("PHI scan")
    assert "control: slices the distiller saw" in text
    assert advice("positive control not detected: ...").startswith("add patients")


@pytest.mark.skipif(not CHROMIUM.is_file(),
                    reason="headless Chromium not installed (/usr/bin/chromium); "
                           "`apt-get install -y chromium` to run this check")
@pytest.mark.parametrize("page", ["distill", "fedavg", "audit", "node"])
def test_chromium_decodes_every_image(pages: dict[str, Path], page: str,
                                      tmp_path: Path) -> None:
    src = pages[page]
    probe = src.parent / f"probe-{src.name}"
    script = ("<script>window.addEventListener('load',()=>{for(const i of "
              "document.images){i.setAttribute('data-w',i.naturalWidth)}});</script>")
    probe.write_text(src.read_text().replace("</body>", script + "</body>"))
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    widths = [int(w) for w in re.findall(r'data-w="(\d+)"', dom)]
    assert len(widths) == len(_images(src)) > 0
    assert all(w > 0 for w in widths), widths
