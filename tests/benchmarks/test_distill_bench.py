"""The distillation benchmark's stages: report formatting (fast) and a tiny real run (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_report import write_report


def _row(method: str, ipc: int, fold: int, psnr: float) -> dict[str, object]:
    return {
        "task": "denoise",
        "setting": "dose=0.25",
        "setting_id": "ct25",
        "method": method,
        "ipc": ipc,
        "fold": fold,
        "psnr": psnr,
        "ssim": 0.9,
        "psnr_lq": 30.0,
        "psnr_full": 36.0,
        "gain_retained": (psnr - 30.0) / 6.0,
        "max_nn_ncc": 0.8,
        "nn_ncc_p99_ref": 0.88,
        "distill_s_per_patient": 1.0,
        "bytes_ratio": 0.0146,
        "train_s": 10.0,
        "steps": 800,
        "machine": {"cpu_cores": 2, "gpu": None},
    }


def test_report_tabulates_every_method_with_fold_spread(tmp_path: Path) -> None:
    rows = [_row("full", 0, f, 36.0) for f in range(2)]
    rows += [_row("spg_gm", 2, 0, 33.0), _row("spg_gm", 2, 1, 35.0)]
    rows += [_row("a_new_variant", 2, 0, 34.0)]
    (tmp_path / "rows-ct25-0.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    md = write_report(tmp_path, tmp_path / "docs").read_text()
    assert "| spg_gm | 2 | 34.00 ± 1.41 |" in md
    assert "| a_new_variant | 2 |" in md  # unknown variants are listed, not dropped
    assert (tmp_path / "docs" / "ct25_psnr_vs_ipc.png").stat().st_size > 1000
    assert len(json.loads((tmp_path / "docs" / "distill.json").read_text())) == 5


def test_report_without_rows_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="run the `run` stage"):
        write_report(tmp_path, tmp_path / "docs")


@pytest.mark.slow
def test_tiny_benchmark_runs_end_to_end_on_real_patients(
    real_samples: Path, tmp_path: Path
) -> None:
    from benchmarks import distill_bench

    distill_bench.prepare(real_samples, tmp_path, ipcs=(1,))
    n = distill_bench.run_fold(
        tmp_path, "ct25", 0, ["full", "random", "prior_only"], [1], steps=5, device="cpu", threads=1
    )
    assert n == 3
    rows = [json.loads(line) for line in (tmp_path / "rows-ct25-0.jsonl").read_text().splitlines()]
    by = {r["method"]: r for r in rows}
    assert by["random"]["max_nn_ncc"] > 0.999  # ships real slices
    assert by["prior_only"]["max_nn_ncc"] < 0.95  # the atlas is no patient
    assert by["full"]["gain_retained"] == pytest.approx(1.0)
