"""FedAvg maths against a hand computation, and the checks on received weights."""

from __future__ import annotations

import pytest
import torch

from medidd.federation import fedavg, state_problems
from medidd.nets import NetConfig


def test_fedavg_is_the_example_weighted_mean_of_real_net_weights() -> None:
    net = NetConfig(name="dncnn", width=4, depth=3, batch_norm=True)
    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        states.append(net.build().state_dict())
    weights = [10.0, 30.0, 60.0]
    out = fedavg(states, weights)
    for name, ref in states[0].items():
        if ref.is_floating_point():
            expected = sum(s[name].double() * w for s, w in zip(states, weights, strict=True)) / 100
            torch.testing.assert_close(out[name].double(), expected, rtol=1e-6, atol=1e-7)
        else:  # integer buffers (BatchNorm counters) come from the largest contributor
            assert torch.equal(out[name], states[2][name])


def test_one_state_with_any_positive_weight_is_returned_unchanged() -> None:
    state = {"w": torch.randn(3, 3, generator=torch.Generator().manual_seed(0))}
    torch.testing.assert_close(fedavg([state], [7.0])["w"], state["w"])


@pytest.mark.parametrize(
    ("state", "needle"),
    [({"w": torch.zeros(2)}, "shape"), ({"v": torch.zeros(2, 2)}, "missing"),
     ({"w": torch.full((2, 2), float("nan"))}, "non-finite")],
)
def test_unusable_weights_are_named(state: dict[str, torch.Tensor], needle: str) -> None:
    reference = {"w": torch.zeros(2, 2)}
    assert any(needle in p for p in state_problems(state, reference))
    with pytest.raises(ValueError, match="states differ"):
        fedavg([reference, state], [1.0, 1.0])


def test_weights_must_have_a_positive_sum() -> None:
    with pytest.raises(ValueError, match="positive sum"):
        fedavg([{"w": torch.zeros(1)}], [0.0])
