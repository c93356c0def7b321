"""The distillation benchmark's stages: report formatting (fast) and a tiny real run (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_report import write_report


def _row(method: str, ipc: int, fold: int, psnr: float) -> dict[str, object]:
    return {
        "cohort": "v2",
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
    rows += [_row("random", 2, 0, 35.5), _row("a_new_variant", 2, 0, 34.0)]
    (tmp_path / "rows-ct25-0.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    docs = tmp_path / "docs"
    docs.mkdir()
    v1 = {k: v for k, v in _row("spg_gm", 2, 0, 31.0).items() if k != "cohort"}
    (docs / "distill.json").write_text(json.dumps([v1]))  # an earlier cohort's row
    md = write_report(tmp_path, docs).read_text()
    assert "| spg_gm | 2 | 34.00 ± 1.41 |" in md  # the v1 row is not averaged in
    assert "| a_new_variant | 2 |" in md  # unknown variants are listed, not dropped
    assert "spg_gm − random at IPC 2: -2.50 dB" in md  # paired per fold
    assert (docs / "ct25_psnr_vs_ipc.png").stat().st_size > 1000
    kept = json.loads((docs / "distill.json").read_text())
    assert len(kept) == 7 and sorted({r["cohort"] for r in kept}) == ["v1", "v2"]


def test_report_without_rows_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="run the `run` stage"):
        write_report(tmp_path, tmp_path / "docs")


def test_unknown_method_or_setting_gets_did_you_mean() -> None:
    from benchmarks.distill_bench import plan_from_args

    with pytest.raises(ValueError, match="did you mean 'spg_gm'"):
        plan_from_args("ct25", "spg_mg", "2")
    with pytest.raises(ValueError, match="did you mean 'ct25'"):
        plan_from_args("ct52", None, None)


@pytest.mark.slow
def test_tiny_benchmark_runs_end_to_end_on_real_patients(
    real_samples: Path, tmp_path: Path
) -> None:
    """Two labels on one CT fold through distill_site and train_and_score (5 steps)."""
    from benchmarks import distill_bench

    n = distill_bench.run_fold(tmp_path, "ct25", 0, ["random", "prior_only"], [1], steps=5,
                               samples=real_samples)
    assert n == 3  # full, random, prior_only
    rows = [json.loads(line) for line in (tmp_path / "rows-ct25-0.jsonl").read_text().splitlines()]
    by = {r["method"]: r for r in rows}
    assert {r["cohort"] for r in rows} == {"v2"} and {r["code_path"] for r in rows} == {"product"}
    assert by["random"]["max_nn_ncc"] > 0.999  # ships real slices
    assert by["prior_only"]["max_nn_ncc"] < 0.95  # the atlas is no patient
    assert by["full"]["gain_retained"] == pytest.approx(1.0)
    assert by["random"]["n_site_patients"] == 8 and len(by["random"]["held_out"]) == 2
    assert by["full"]["ood_psnr"] is not None  # the head CTs are scored too
    assert (tmp_path / "packages" / "ct25" / "random-ipc1-fold0" / "manifest.json").is_file()
    # a rerun finds every row done
    assert distill_bench.run_fold(tmp_path, "ct25", 0, ["random"], [1], steps=5,
                                  samples=real_samples) == 0
