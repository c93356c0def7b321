"""Enhancement nets: same-size mapping, documented parameter counts, registry, Opacus safety."""

from __future__ import annotations

import pytest
import torch

from medidd.nets import NETS, NetConfig, build_net, count_parameters
from medidd.nets.dncnn import DnCNN
from medidd.nets.edsr import EDSR
from medidd.nets.redcnn import RedCNN

# defaults (the numbers in the docstrings)
DEFAULT_PARAMS = {
    "redcnn": 206_689,
    "dncnn": 28_353,
    "srcnn": 8_129,
    "edsr": 83_841,
    "unet": 46_667,
}


def _input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(NETS))
def test_same_size_and_parameter_count(name: str) -> None:
    torch.manual_seed(0)
    net = build_net(name)
    out = net(_input((2, 1, 64, 64)))
    assert out.shape == (2, 1, 64, 64)
    assert torch.isfinite(out).all()
    assert count_parameters(net) == DEFAULT_PARAMS[name]


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("size", [(37, 45), (21, 64), (50, 33)])
def test_odd_sizes(name: str, size: tuple[int, int]) -> None:
    net = build_net(name)
    assert net(_input((1, 1, *size))).shape == (1, 1, *size)


@pytest.mark.parametrize("name", sorted(NETS))
def test_every_parameter_gets_a_gradient(name: str) -> None:
    net = build_net(name)
    net(_input((2, 1, 32, 32))).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert missing == []


@pytest.mark.parametrize(("width", "depth"), [(32, 5), (16, 3), (64, 17), (8, 2)])
def test_dncnn_parameter_formula(width: int, depth: int) -> None:
    expected = 10 * width + (depth - 2) * (9 * width**2 + width) + 9 * width + 1
    assert count_parameters(DnCNN(width=width, depth=depth)) == expected


@pytest.mark.parametrize(("width", "depth"), [(96, 5), (32, 5), (16, 5), (8, 3)])
def test_redcnn_parameter_formula(width: int, depth: int) -> None:
    expected = 51 * width + 1 + 2 * (depth - 1) * (25 * width**2 + width)
    assert count_parameters(RedCNN(width=width, depth=depth)) == expected


@pytest.mark.parametrize(("width", "depth"), [(32, 4), (64, 16), (8, 0)])
def test_edsr_parameter_formula(width: int, depth: int) -> None:
    conv = 9 * width**2 + width
    expected = 10 * width + depth * 2 * conv + conv + 9 * width + 1
    assert count_parameters(EDSR(width=width, depth=depth)) == expected


def test_redcnn_paper_size_and_small_input_error() -> None:
    assert count_parameters(RedCNN(width=96, depth=5)) == 1_848_865
    with pytest.raises(ValueError, match="at least 21 px"):
        RedCNN()(torch.zeros(1, 1, 20, 40))


def test_dncnn_is_residual_and_batch_norm_option() -> None:
    net = DnCNN(width=8, depth=3)
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    x = _input((1, 1, 16, 16))
    assert torch.equal(net(x), x)  # zero noise estimate -> identity
    with_bn = DnCNN(width=8, depth=4, batch_norm=True)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules()) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in DnCNN().modules())


def test_registry_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="did you mean 'redcnn'"):
        build_net("red-cnn")
    with pytest.raises(ValueError, match="'srcnn' does not take batch_norm"):
        build_net("srcnn", batch_norm=True)
    with pytest.raises(ValueError, match="does not take batch_norm"):
        NetConfig(name="edsr", batch_norm=True)
    with pytest.raises(ValueError, match="did you mean 'unet'"):
        NetConfig(name="unte")
    with pytest.raises(ValueError, match=">= 1"):
        NetConfig(name="dncnn", width=0)


def test_net_config_builds_the_configured_size() -> None:
    cfg = NetConfig.model_validate(
        {"name": "unet", "width": 8, "depth": 2, "options": {"num_res_units": 0}}
    )
    assert cfg.kwargs() == {"width": 8, "depth": 2, "num_res_units": 0}
    net = cfg.build()
    assert count_parameters(net) == count_parameters(
        build_net("unet", width=8, depth=2, num_res_units=0)
    )
    assert count_parameters(NetConfig(name="edsr", width=64, depth=16).build()) == 1_219_841


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("name", sorted(NETS))
def test_default_nets_give_exact_per_sample_gradients_under_opacus(name: str) -> None:
    opacus = pytest.importorskip("opacus")
    from opacus.validators import ModuleValidator

    net = build_net(name)
    assert ModuleValidator.validate(net, strict=False) == []
    reference = build_net(name)
    reference.load_state_dict(net.state_dict())
    x = _input((3, 1, 32, 32))
    opacus.GradSampleModule(net, loss_reduction="sum")(x).square().sum().backward()
    reference(x[1:2]).square().sum().backward()
    scale = max(float(q.grad.abs().max()) for q in reference.parameters() if q.grad is not None)
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        assert q.grad is not None
        torch.testing.assert_close(p.grad_sample[1], q.grad, atol=1e-4 * scale, rtol=1e-3)


def test_batch_norm_dncnn_is_flagged_by_opacus() -> None:
    pytest.importorskip("opacus")
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(DnCNN(batch_norm=True), strict=False) != []
