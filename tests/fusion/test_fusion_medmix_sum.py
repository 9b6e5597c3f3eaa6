"""MedMIX-Σ (fusion.medmix_sum): additive, availability-aware inter-modality fusion."""

from __future__ import annotations

import torch

from fusion.medmix import MedMIX
from fusion.medmix_sum import SUM_METHOD, MedMIXSum
from fusion.registry import build_model, list_methods
from medmix.ablation_plan import UNIFORM_METHOD
from medmix.config import load_schema
from tests.fusion.test_fusion_medmix import make_inputs, make_spec


def test_starts_as_the_sum_of_the_modality_heads() -> None:
    """Zero-initialised gates and availability weights: w_m = 1 on present modalities."""
    torch.manual_seed(0)
    spec = make_spec(SUM_METHOD, "binary", 3)
    model = build_model(spec).eval()
    assert isinstance(model, MedMIXSum)
    xs, delta = make_inputs(spec, 32)
    out = model(xs, delta)
    present = (delta > 0).any(-1)
    torch.testing.assert_close(out.beta, present.float())
    has_any = present.any(-1)
    summed = (present.unsqueeze(-1) * out.modality_logits).sum(1) + model.availability.bias
    torch.testing.assert_close(out.logits[has_any], summed[has_any])


def test_missing_modality_weight_is_zero_and_evidence_adds() -> None:
    torch.manual_seed(1)
    spec = make_spec(SUM_METHOD, "binary", 2)
    model = MedMIXSum(spec)
    with torch.no_grad():  # trained-looking gates: non-zero scorer and availability weights
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.eval()
    xs, delta = make_inputs(spec, 64)
    out = model(xs, delta)
    present = (delta > 0).any(-1)
    assert torch.all(out.beta[~present] == 0)
    assert torch.all(out.beta[present] > 0) and torch.all(out.beta < 2)
    # not a convex mixture: the gates of a sample need not sum to 1
    sums = out.beta.sum(-1)[present.sum(-1) >= 2]
    assert (sums - 1).abs().max() > 0.05
    # the availability pattern reaches the output: same features, one modality dropped
    full = delta.clone()
    full[:] = 0
    full[:, :, 0] = 1
    dropped = full.clone()
    dropped[:, 2] = 0
    a, b = model(xs, full), model(xs, dropped)
    removed = a.beta[:, 2:3] * a.modality_logits[:, 2]  # (B, C)
    assert not torch.allclose(a.logits - removed, b.logits)  # the gates and A π moved too


def test_medmix_row_is_unchanged_and_sum_is_registered_with_its_own_name() -> None:
    assert SUM_METHOD in list_methods() and "medmix" in list_methods()
    torch.manual_seed(0)
    spec = make_spec("medmix", "binary", 2)
    assert type(build_model(spec)) is MedMIX
    enum = load_schema()["properties"]["methods"]["items"]["enum"]
    table1 = set(list_methods()) - {UNIFORM_METHOD}  # an ablation variant, registered on demand
    assert set(enum) == table1  # the schema's methods are the registry's
