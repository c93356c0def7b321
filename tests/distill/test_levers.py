"""Issue 12's levers on a real patient: trajectory matching, several matching architectures,
and their refusals before any work."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from medidd.distill import DistillConfig, DistillContext, method_factory
from medidd.distill.config import TrajectoryConfig
from medidd.distill.matching import MATCHING_NETS, check_matching_nets, fresh_matching_net
from medidd.distill.run import DistillError, check_site
from medidd.distill.trajectory import expert_trajectories, start_window, trajectory_loss
from medidd.preprocess.slices import SliceSet
from medidd.prior import atlas_prior
from tests.distill.test_spg_gm import SMALL

TM = {"checkpoints": 4, "steps_per_checkpoint": 3, "syn_steps": 3, "span": 2, "experts": 1}


def _distil(patient: SliceSet, degrade, **over):  # type: ignore[no-untyped-def]
    cfg = DistillConfig.model_validate({**SMALL, **over})
    prior = atlas_prior(2, size=48, modality="CT", window=(-1000.0, 1000.0))
    ctx = DistillContext(ipc=2, degrade=degrade, seed=3, prior=prior)
    return method_factory(cfg.method)(cfg).distill(patient, ctx)


def test_expert_trajectories_learn_the_patients_mapping(patient: SliceSet, degrade) -> None:  # type: ignore[no-untyped-def]
    """The expert's last checkpoint denoises the real patient better than its first: the
    trajectory carries the real pairs' information that matching transfers."""
    cfg = TrajectoryConfig(experts=1, checkpoints=3, steps_per_checkpoint=15)
    (traj,) = expert_trajectories(["plain"], 8, 3, patient.images, degrade, cfg, patch=24,
                                  batch=8, seed=0, device=torch.device("cpu"))
    hq = patient.images[:16]
    lq = degrade(hq, 123)

    def mse(ckpt: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            out = torch.func.functional_call(traj.net, ckpt, (lq,))
        return float(((out - hq) ** 2).mean())

    assert len(traj.checkpoints) == 4
    assert mse(traj.checkpoints[-1]) < mse(traj.checkpoints[0])


def test_trajectory_loss_is_one_without_steps_towards_the_target() -> None:
    """From checkpoint t with a zero learning rate the student stays at t: the normalised
    distance is exactly 1; a step on the expert's own data moves it below 1."""
    g = torch.Generator().manual_seed(0)
    hq = torch.rand(6, 1, 16, 16, generator=g)
    lq = hq + 0.1 * torch.randn(hq.shape, generator=g)
    cfg = TrajectoryConfig(experts=1, checkpoints=3, steps_per_checkpoint=5, expert_lr=0.2)

    def noisy(x: torch.Tensor, seed: int) -> torch.Tensor:
        return x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))

    (traj,) = expert_trajectories(["plain"], 8, 3, hq, noisy, cfg, patch=16, batch=6, seed=1,
                                  device=torch.device("cpu"))
    still = trajectory_loss(traj, 0, 2, hq, lq, torch.tensor(0.0), 2, 6, 16, g)
    moved = trajectory_loss(traj, 0, 2, hq, lq, torch.tensor(0.2), 10, 6, 16, g)
    assert abs(float(still.detach()) - 1.0) < 1e-6
    assert float(moved.detach()) < 1.0


def test_trajectory_loss_reaches_the_synthetic_images() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.rand(4, 1, 16, 16, generator=g)
    cfg = TrajectoryConfig(experts=1, checkpoints=3, steps_per_checkpoint=2)
    (traj,) = expert_trajectories(["unet"], 8, 3, real, lambda x, s: x * 0.9, cfg, patch=16,
                                  batch=4, seed=0, device=torch.device("cpu"))
    syn = torch.rand(2, 1, 16, 16, generator=g, requires_grad=True)
    lr = torch.tensor(0.1, requires_grad=True)
    trajectory_loss(traj, 0, 1, syn, syn * 0.9, lr, 2, 2, 16, g).backward()
    assert syn.grad is not None and float(syn.grad.abs().sum()) > 0
    assert lr.grad is not None and torch.isfinite(lr.grad)


def test_start_window_follows_the_budget() -> None:
    cfg = TrajectoryConfig(checkpoints=10, span=2)
    assert start_window(cfg, 1) == (0, 2)
    assert start_window(cfg, 5) == (2, 6)
    assert start_window(cfg, 50) == (8, 8)  # never past checkpoints - span


@pytest.mark.parametrize("objective", ["tm", "tm+lfd"])
def test_trajectory_matching_distils_a_real_patient(patient: SliceSet, degrade,  # type: ignore[no-untyped-def]
                                                    objective: str) -> None:
    a = _distil(patient, degrade, matching={**SMALL["matching"], "objective": objective},
                trajectory=TM)
    b = _distil(patient, degrade, matching={**SMALL["matching"], "objective": objective},
                trajectory=TM)
    assert a.hq.shape == (2, 1, 48, 48) and torch.isfinite(a.hq).all()
    assert torch.equal(a.hq, b.hq)  # seeded
    assert a.info["tm_student_lr"] > 0


def test_several_matching_architectures(patient: SliceSet, degrade) -> None:  # type: ignore[no-untyped-def]
    one = _distil(patient, degrade)
    many = _distil(patient, degrade, matching={**SMALL["matching"], "nets": list(MATCHING_NETS)})
    assert torch.isfinite(many.hq).all()
    assert not torch.equal(one.hq, many.hq)  # the other nets' gradients changed the fit


def test_every_matching_net_keeps_the_patch_size() -> None:
    for name in MATCHING_NETS:
        net = fresh_matching_net(8, 3, 0, torch.device("cpu"), name)
        assert net(torch.zeros(2, 1, 24, 24)).shape == (2, 1, 24, 24)


def test_bad_lever_options_are_refused_before_any_work(patient: SliceSet) -> None:
    with pytest.raises(ValidationError, match="did you mean 'redcnn'"):
        DistillConfig.model_validate({"matching": {"nets": ["redcn"]}})
    with pytest.raises(ValidationError, match="twice"):
        DistillConfig.model_validate({"matching": {"nets": ["unet", "unet"]}})
    with pytest.raises(ValidationError, match=r"span \(3\) must be below checkpoints \(3\)"):
        DistillConfig.model_validate({"trajectory": {"checkpoints": 3, "span": 3}})
    with pytest.raises(ValueError, match=r"matching\.nets: 'redcnn' cannot run on 8 px"):
        check_matching_nets(["redcnn"], 8, 5, 8)
    deep = DistillConfig.model_validate({"matching": {"nets": ["redcnn"], "net_depth": 30}})
    with pytest.raises(DistillError, match=r"matching\.nets: 'redcnn'"):
        check_site([patient], deep)
    dp_tm = DistillConfig.model_validate({"matching": {"objective": "tm"}, "dp": {"enabled": True}})
    with pytest.raises(DistillError, match="tm's expert trajectories"):
        check_site([patient], dp_tm)
    other = DistillConfig.model_validate({"method": "dm", "matching": {"objective": "tm"}})
    with pytest.raises(DistillError, match="implemented for method spg_gm"):
        check_site([patient], other)
    ct_fitint = DistillConfig.model_validate({"prior": {"fit_intensity": True}})
    with pytest.raises(DistillError, match=r"set prior\.fit_intensity to false"):
        check_site([patient], ct_fitint)
