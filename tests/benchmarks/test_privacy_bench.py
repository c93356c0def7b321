"""The privacy benchmark's slice-level protocol: how a real patient is split into slabs."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.privacy_bench import GAP, SLAB, slab_split
from tests.helpers_real import real_slices


def test_slabs_of_a_real_patient_are_disjoint_and_never_adjacent(real_samples: Path) -> None:
    s = real_slices(real_samples / "ct/lung2.nrrd", "CT", "p-0000000000a2", size=32)
    member, non = slab_split(s)
    assert member.patient_key == s.patient_key and non.patient_key != s.patient_key
    assert non.patient_key.startswith("p-") and len(non.patient_key) == 14
    index = {float(z): i for i, z in enumerate(s.z)}
    mi = sorted(index[float(z)] for z in member.z)
    ni = sorted(index[float(z)] for z in non.z)
    assert not set(mi) & set(ni)
    # every member slice is more than GAP slices away from every non-member slice
    gaps = torch.tensor(mi)[:, None] - torch.tensor(ni)[None, :]
    assert int(gaps.abs().min()) > GAP
    # about half each, and the images are the patient's own slices at those positions
    assert abs(len(mi) - len(ni)) <= SLAB
    assert len(mi) + len(ni) >= len(s) * SLAB / (SLAB + GAP) - SLAB
    assert torch.equal(member.images, s.images[mi])
