"""SeedInputs' minibatch gather: the same rows as FusionData.rows, per seed and shared."""

from __future__ import annotations

import numpy as np
import torch

from fusion.data import FusionData
from fusion.seed_inputs import SeedInputs
from tests.helpers import tiny_fusion_data

MODALITIES = {"a": ["e1", "e2"], "b": ["e1", "e2", "e3"]}
DIMS = {"e1": 8, "e2": 8, "e3": 5}  # two expert groups: width 8 (four experts) and 5


def _data(n: int, delta: torch.Tensor, seed: int = 0) -> FusionData:
    """Hand-made data whose rows are non-zero even where δ = 0 (a protocol's mask)."""
    g = torch.Generator().manual_seed(seed)
    flat = [(m, e) for m, es in MODALITIES.items() for e in es]
    dims = {m: {e: DIMS[e] for e in es} for m, es in MODALITIES.items()}
    x = [torch.randn(n, DIMS[e], generator=g) + 1.0 for _, e in flat]
    y = torch.randint(0, 2, (n, 1), generator=g).float()
    return tiny_fusion_data(dims, x, delta, y, np.array(["train"] * n), label_names=["t"])


def _delta(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    delta = (torch.rand(n, 2, 3, generator=g) > 0.3).float()
    delta[:, 0, 2] = 0  # modality a has two experts: the padding slot is never available
    return delta


def test_groups_and_shared_groups_equal_the_rows_of_every_expert() -> None:
    n = 40
    base = _data(n, _delta(n, 1))
    # a second seed over the same rows with its own availability (a protocol mask)
    other = FusionData(**{**base.__dict__, "delta": _delta(n, 2)})
    members = [[0, 1, 2, 3], [4]]
    inputs = SeedInputs([base, other], members)
    idx = torch.tensor([[3, 1, 5, 39, 0], [5, 9, 2, 0, 17]])
    groups = inputs.groups(idx)
    zeroed = 0
    for s, d in enumerate([base, other]):
        for g, ks in enumerate(members):
            for j, k in enumerate(ks):
                want = d.rows(k, idx[s])
                assert torch.equal(groups[g][s, j], want)
                mi, ei = d.slot(k)
                gone = d.delta[idx[s], mi, ei] == 0
                assert (groups[g][s, j][gone] == 0).all()
                zeroed += int(gone.sum())
    assert zeroed > 0  # the masking was exercised on non-zero rows
    shared = SeedInputs([base, base], members).shared_groups(idx[0])
    for g, ks in enumerate(members):
        for j, k in enumerate(ks):
            assert torch.equal(shared[g][j], base.rows(k, idx[0]))
