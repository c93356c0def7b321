"""FedAvg on state dicts: the example-weighted mean of the nodes' weights, checked first.

Pure maths on ``{name: tensor}`` mappings (no Flower): :func:`state_problems` says why a
received state cannot be averaged (missing or extra keys, wrong shapes, non-finite values);
:func:`fedavg` averages floating-point entries weighted by each node's number of examples and
keeps integer buffers (e.g. BatchNorm's ``num_batches_tracked``) from the largest contributor.

Example:
    >>> import torch
    >>> a, b = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    >>> fedavg([a, b], [1, 3])["w"].tolist()
    [0.75, 0.75]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

State = Mapping[str, torch.Tensor]


def state_problems(state: State, reference: State) -> list[str]:
    """Every reason ``state`` cannot replace ``reference`` (``[]`` when it can).

    Example:
        >>> import torch
        >>> state_problems({"w": torch.tensor([float("nan")])}, {"w": torch.zeros(1)})
        ['w: 1 non-finite values']
    """
    out: list[str] = []
    missing = sorted(set(reference) - set(state))
    extra = sorted(set(state) - set(reference))
    if missing:
        out.append(f"missing weights: {', '.join(missing)}")
    if extra:
        out.append(f"unexpected weights: {', '.join(extra)}")
    for name in sorted(set(state) & set(reference)):
        got, want = state[name], reference[name]
        if tuple(got.shape) != tuple(want.shape):
            out.append(f"{name}: shape {list(got.shape)} but the model has {list(want.shape)}")
        elif got.is_floating_point():
            bad = int((~torch.isfinite(got)).sum())
            if bad:
                out.append(f"{name}: {bad} non-finite values")
    return out


def fedavg(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of ``states`` (all with the same keys and shapes), weights >= 0.

    Raises ``ValueError`` for no state, mismatched inputs, or weights that sum to zero.

    Example:
        >>> import torch
        >>> out = fedavg([{"w": torch.ones(1), "n": torch.tensor(3)},
        ...               {"w": torch.zeros(1), "n": torch.tensor(5)}], [1.0, 1.0])
        >>> out["w"].item(), out["n"].item()
        (0.5, 3)
    """
    if not states:
        raise ValueError("fedavg needs at least one state")
    if len(states) != len(weights):
        raise ValueError(f"fedavg got {len(states)} states but {len(weights)} weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"fedavg weights must be >= 0 with a positive sum, got {list(weights)}")
    problems = [f"state {i}: {p}" for i, s in enumerate(states[1:], 1)
                for p in state_problems(s, states[0])]
    if problems:
        raise ValueError("fedavg: states differ: " + "; ".join(problems))
    total = float(sum(weights))
    lead = max(range(len(states)), key=lambda i: weights[i])
    out: dict[str, torch.Tensor] = {}
    for name, ref in states[0].items():
        if ref.is_floating_point():
            acc = torch.zeros_like(ref, dtype=torch.float64)
            for s, w in zip(states, weights, strict=True):
                acc += s[name].to(torch.float64) * (w / total)
            out[name] = acc.to(ref.dtype)
        else:
            out[name] = states[lead][name].clone()
    return out
