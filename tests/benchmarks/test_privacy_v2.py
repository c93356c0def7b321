"""The cohort-v2 privacy benchmark's page logic (its numbers come from `make bench`)."""

from __future__ import annotations

from typing import Any

from benchmarks.privacy_v2 import KEYS, targets, to_markdown


def _row(method: str, verdict: str, eps: float | None = None, **kw: Any) -> dict[str, Any]:
    return {"cohort": "v2", "method": method, "epsilon": eps, "epsilon_target": eps,
            "mia_auc": 0.5, "mia_auc_control": 0.55, "tpr_at_1fpr": 0.0,
            "eps_lower_bound": 0.0, "eps_lower_bound_control": 2.2, "canary_auc_control": 1.0,
            "verdict": verdict, "psnr": 30.0, "psnr_lq": 25.0, "max_nn_ssim": 0.4, **kw}


def test_targets_read_every_row_and_say_met_or_not() -> None:
    rows = [_row("random", "failed"), _row("spg_gm", "passed"), _row("planted", "failed"),
            _row("spg_gm_dp_eps8", "passed", 8.0, psnr=29.0)]
    sweep = [{"fold": 0, "seed": 0, "detected": True}, {"fold": 1, "seed": 0, "detected": False}]
    text = "\n".join(targets(rows, sweep))
    assert "1 of 2 detected: **not met**" in text
    assert "spg_gm: gate AUC <= 0.55 and verdict passed: AUC 0.500, verdict passed: **met**" in text
    assert "planted: failed: verdict failed: **met**" in text
    assert "DP at epsilon 8 costs <= 0.5 dB: +1.00 dB" in text and "**not met**" in text
    table = to_markdown(rows)
    assert table.count("\n") == len(rows) + 2 and "| spg_gm | – | passed |" in table
    assert set(KEYS) <= set(rows[0])
