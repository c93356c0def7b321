"""Smoke test of the privacy benchmark's plumbing (configs, table, targets, plot); the
benchmark itself runs with ``python -m benchmarks.privacy_bench``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks import privacy_bench as pb
from medidd.distill.config import DistillConfig


def _row(method: str, eps: float | None, auc: float, psnr: float) -> dict[str, Any]:
    return {"method": method, "epsilon": eps, "mia_auc": auc, "mia_auc_control": 0.9,
            "mia_auc_loss": auc, "mia_auc_lira": auc - 0.01, "tpr_at_1fpr": 0.02,
            "max_nn_ssim": 0.5, "max_nn_ncc": 0.6, "psnr": psnr, "psnr_lq": 30.0,
            "verdict": "passed"}


def test_configs_are_valid_distill_configs() -> None:
    args = pb._parser().parse_args(["--iterations", "3"])
    cfgs = {k: DistillConfig.model_validate(v) for k, v in pb.configs(args).items()}
    assert set(cfgs) == {"random", "spg_gm", "spg_gm_dp_eps1", "spg_gm_dp_eps4", "spg_gm_dp_eps8"}
    assert not cfgs["spg_gm"].dp.enabled and cfgs["spg_gm"].matching.objective == "gm+lfd"
    dp8 = cfgs["spg_gm_dp_eps8"]
    assert dp8.dp.enabled and dp8.dp.epsilon == 8.0 and dp8.matching.objective == "gm"
    assert dp8.degradation is not None and dp8.degradation.image_domain
    assert dp8.matching.iterations == 3


def test_table_targets_and_plot(tmp_path: Path) -> None:
    rows = [_row("raw_data", None, 0.9, 36.0), _row("spg_gm", None, 0.52, 34.0),
            _row("spg_gm_dp_eps1", 1.0, 0.5, 32.0), _row("spg_gm_dp_eps8", 7.9, 0.51, 33.5)]
    table = pb.to_markdown(rows)
    assert table.count("\n") == 2 + len(rows) and "| spg_gm_dp_eps8 | 7.90 |" in table
    notes = pb.targets(rows)
    assert "**met**" in notes[0] and "-0.50" not in notes[1] and "+0.50 dB" in notes[1]
    rows[1]["mia_auc"] = 0.7
    assert "**not met**" in pb.targets(rows)[0]
    assert pb.plot(rows, tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size > 1000
    args = argparse.Namespace(ipc=2, iterations=10, outer_loop=2, steps=400)
    pb.write_docs(rows, tmp_path, args, 60.0)
    assert "| spg_gm |" in (tmp_path / "privacy_v1.md").read_text()
    assert '"max_nn_ssim"' in (tmp_path / "privacy_v1.json").read_text()
