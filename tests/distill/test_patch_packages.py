"""Patch packages (issue 12, lever 4): real MR patients distilled into 32 px patches at the
byte budget of whole slices, audited (near copies found at any offset), trained on; refused
where the physics does not allow it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medidd.distill.config import DistillConfig
from medidd.distill.run import DistillError, check_site, distill_site
from medidd.package import read_package, write_package
from medidd.preprocess.slices import SliceSet
from medidd.privacy.audit import run_audit
from medidd.privacy.policy import AuditPolicy
from medidd.train import TrainConfig, train_enhancer
from tests.distill.test_spg_gm import SMALL
from tests.helpers_real import real_slices

SIZE = 64
MR = {"task": "sr", "ipc": 1, "device": "cpu", "prior": {"kind": "atlas"},
      "patches": {"size": 32}, "preprocess": {"size": SIZE}}


@pytest.fixture(scope="module")
def site(real_samples: Path) -> list[SliceSet]:
    return [real_slices(real_samples / f"mr/{name}", "MR", f"p-0000000000{i:02d}", size=SIZE)
            for i, name in enumerate(["brain1.nrrd", "brain2.nrrd"])]


@pytest.fixture(scope="module")
def patch_pkg(site: list[SliceSet], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = DistillConfig.model_validate({**MR, "method": "prior_only"})
    return distill_site(site, cfg, tmp_path_factory.mktemp("pkgs") / "patches").package


def test_a_patch_package_holds_the_bytes_of_whole_slices(patch_pkg: Path) -> None:
    pkg = read_package(patch_pkg)
    assert pkg.hq.shape[1:] == (1, 32, 32) and pkg.lq.shape == pkg.hq.shape
    assert pkg.manifest.ipc == 4  # (64 / 32)^2 patches for one 64 px slice
    assert all(p.n_images == 4 for p in pkg.manifest.patients)
    assert pkg.manifest.method_config is not None
    assert pkg.manifest.method_config["patches"]["size"] == 32  # type: ignore[index]


def test_spg_gm_distils_patches(site: list[SliceSet], tmp_path: Path) -> None:
    cfg = DistillConfig.model_validate({**MR, "method": "spg_gm",
                                        "matching": {**SMALL["matching"], "patch_size": 24},
                                        "spg": SMALL["spg"]})
    pkg = read_package(distill_site(site[:1], cfg, tmp_path / "spg").package)
    assert pkg.hq.shape == (4, 1, 32, 32) and torch.isfinite(pkg.hq).all()


def test_the_audit_reads_a_patch_package_and_finds_a_copied_window(
        patch_pkg: Path, site: list[SliceSet], tmp_path: Path) -> None:
    policy = AuditPolicy(run_mia=False)
    clean = run_audit(patch_pkg, site, None, policy)
    assert clean.memorisation["ncc"]["max"] < 0.95
    pkg = read_package(patch_pkg)
    m = pkg.manifest
    hq = pkg.hq.clone()
    real = site[0].images[len(site[0]) // 2]
    hq[1] = real[:, 13:45, 21:53]  # a window of a real slice, at an offset off any grid
    planted = write_package(tmp_path / "planted", hq, pkg.lq, task=m.task, modality=m.modality,
                            degradation=m.degradation, window=tuple(m.window),
                            patients=[(p.key, p.n_images) for p in m.patients], ipc=m.ipc,
                            method="prior_only", seed=0, method_config=m.method_config)
    report = run_audit(planted, site, None, policy)
    assert report.memorisation["ncc"]["max"] > 0.999
    assert report.verdict == "failed"


def test_the_aggregator_learns_from_patches_and_the_model_serves_whole_slices(
        patch_pkg: Path, site: list[SliceSet]) -> None:
    pkg = read_package(patch_pkg)
    cfg = TrainConfig.model_validate({"net": {"name": "dncnn", "width": 8, "depth": 3},
                                      "steps": 200, "batch_size": 4, "patch_size": 24,
                                      "lr": 3e-3, "seed": 1})
    result = train_enhancer(pkg.hq, pkg.lq, cfg)
    with torch.no_grad():
        learnt = (result.model(pkg.lq) - pkg.hq).abs().mean()
    untouched = (pkg.lq - pkg.hq).abs().mean()  # the LQ input itself
    # 0.72-0.81 of the input's error over seeds 0-3 after 200 steps; a net that learnt
    # nothing stays at 1 or above
    assert learnt < 0.9 * untouched, (float(learnt), float(untouched))
    whole = site[1].images[:2]  # the fully convolutional model maps whole 64 px slices
    with torch.no_grad():
        out = result.model(whole)
    assert out.shape == whole.shape and torch.isfinite(out).all()


def test_patch_options_that_do_not_fit_are_refused(site: list[SliceSet]) -> None:
    def problems(**over: object) -> str:
        with pytest.raises(DistillError) as err:
            check_site(site, DistillConfig.model_validate({**MR, "method": "spg_gm", **over}))
        return str(err.value)

    assert "not smaller than the 64 px slices" in problems(patches={"size": 64})
    assert "lower matching.patch_size to at most 32" in problems()  # default patch_size 48
    assert "not 'random'" in problems(method="random")
    ct = problems(task="denoise", degradation={"kind": "ct_lowdose"},
                  matching={"patch_size": 24})
    assert "attenuation of the whole body" in ct
