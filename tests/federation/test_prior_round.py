"""The shared-prior round in Flower's simulation runtime (``medidd-aggregate prior``, a local
``flower-superlink --simulation`` and ``flwr run``): three hospitals of real CT patients send
their noised sums through SecAgg+; the prior is released per region, written with its hash and
DP statement, audited at every node; refusals happen before any data moves (the refusal is
the default suite's fast simulation check: ~25 s, mostly the local SuperLink starting)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from aggregator.cli import app as aggregate_cli
from medidd.prior.shared import read_shared_prior

ROOT = Path(__file__).resolve().parents[2]

SITES = {"site-0": ["lung1.nrrd", "chest_cta_1p5mm.nii.gz", "abdomen_3mm.nii.gz"],
         "site-1": ["lung2.nrrd"], "site-2": ["ctchest_slicer.nrrd"]}
#: site-2 says its region (the heuristic reads this 8-slice, 32 px chest as an abdomen);
#: the others' patients are sorted by the heuristic
REGION = {"site-2": "chest"}


@pytest.fixture(scope="module")
def hospitals(real_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three hospitals' patients folders (one sub-folder per patient, links to real CT)."""
    root = tmp_path_factory.mktemp("hospitals")
    for site, files in SITES.items():
        for i, name in enumerate(files):
            folder = root / site / f"patient{i}"
            folder.mkdir(parents=True)
            (folder / name).symlink_to(real_samples / "ct" / name)
    return root


def _config(root: Path, tmp: Path, sites: list[str], **extra: Any) -> Path:
    data: dict[str, Any] = {
        "preprocess": {"size": 32, "max_slices_per_volume": 8},
        "prior": {"groups": ["CT:chest", "CT:abdomen", "MR:head"], "bins": 2,
                  "release_size": 8, "clip_norm": 6.0, "count_weight": 2.0, "epsilon": 50.0,
                  "min_patients": 1, "registration_iterations": 20},
        "prior_round": {"min_sites": 2, "timeout_s": 120},
        "timeouts": {"wait_for_nodes_s": 10},
        "nodes": [{"name": s, "patients": str(root / s), "salt_file": str(tmp / "salt"),
                   "cache_dir": str(tmp / "cache"), "prior_dir": str(tmp / f"{s}-priors"),
                   **({"region": REGION[s]} if s in REGION else {})}
                  for s in sites],
    }
    for key, value in extra.items():
        data[key] = data.get(key, {}) | value if isinstance(value, dict) else value
    path = tmp / "federation.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_three_hospitals_build_a_dp_prior_per_region_through_secagg(
    hospitals: Path, tmp_path: Path,
) -> None:
    config = _config(hospitals, tmp_path, list(SITES))
    out = tmp_path / "out"
    res = CliRunner().invoke(aggregate_cli, ["prior", "--config", str(config), "--out",
                                             str(out), "--quiet"])
    report = json.loads((out / "prior-report.json").read_text())
    assert res.exit_code == 0, (res.output, report.get("error"))
    assert "shared prior" in res.output and "CT:chest" in res.output
    # every stage of SecAgg+ heard from all three; the server kept only the unmasked sum
    assert report["stages"] == {"setup": 3, "share_keys": 3, "collect_masked_vectors": 3,
                                "unmask": 3}
    assert report["groups"]["CT:chest"]["n_sites"] == 3
    assert report["groups"]["CT:abdomen"]["n_sites"] == 1  # never mixed with the chests
    assert report["nodes"]["site-1"]["empty_groups"] == ["CT:abdomen", "MR:head"]
    assert report["groups"]["MR:head"]["released"] == [False, False]  # nobody has one
    prior = read_shared_prior(out / "prior", expected_sha256=report["prior_sha256"])
    assert prior.statement["epsilon"] == 50.0 and prior.statement["unit"] == "patient"
    assert prior.statement["secure_aggregation"] == "secagg+" and prior.statement["sites"] == 3
    chest = prior.groups["CT:chest"]
    assert chest.images.shape == (2, 1, 32, 32) and chest.released.all()
    # the nodes audited it (aggregates only) and keep the same file
    audit = report["audit"]
    assert set(audit["nodes"]) == set(SITES)
    assert all(set(v) <= {"max_nn_ncc", "ideal_line", "below_ideal"}
               for v in audit["nodes"].values())
    assert set(audit["nodes"]["site-0"]) == {"max_nn_ncc", "ideal_line", "below_ideal"}
    assert audit["status"] in ("passed", "failed") and audit["max_nn_ncc"] < 0.95
    assert prior.audit is not None and prior.audit["status"] == audit["status"]
    kept = tmp_path / "site-2-priors" / report["prior_sha256"]
    assert read_shared_prior(kept).sha256 == report["prior_sha256"]


def test_a_round_with_fewer_sites_than_the_threshold_is_refused_before_any_data_moves(
    hospitals: Path, tmp_path: Path,
) -> None:
    config = _config(hospitals, tmp_path, ["site-0", "site-1"],
                     prior_round={"min_sites": 3}, timeouts={"wait_for_nodes_s": 1})
    out = tmp_path / "out"
    res = CliRunner().invoke(aggregate_cli, ["prior", "--config", str(config), "--out",
                                             str(out), "--quiet"])
    assert res.exit_code == 1
    report = json.loads((out / "prior-report.json").read_text())
    assert "only 2 sites online; the prior round needs 3" in report["error"]
    assert report["bytes_down"] == 0 and report["bytes_up"] == 0 and "stages" not in report
    assert "--set prior_round.min_sites=..." in res.output
