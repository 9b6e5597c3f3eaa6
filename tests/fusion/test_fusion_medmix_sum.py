"""MedMIX-Σ (fusion.medmix_sum): additive, availability-aware inter-modality fusion."""

from __future__ import annotations

import torch

from fusion import medmix_sum
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


def availability_separation(monkeypatch, scale: float, steps: int = 40) -> tuple[float, float]:
    """Train on a label that is only the missingness of modality 0 (features are noise), with
    Adam at the default learning rate for a demo cohort's ~40 steps; return the mean logit gap
    between samples missing modality 0 and samples that have it, and the part of it A π adds."""
    monkeypatch.setattr(medmix_sum, "AVAILABILITY_SCALE", scale)
    torch.manual_seed(3)
    spec = make_spec(SUM_METHOD, "binary", 1)
    model = MedMIXSum(spec)
    xs, delta = make_inputs(spec, 256, seed=3, p_missing=0.0)
    missing0 = torch.rand(256, generator=torch.Generator().manual_seed(4)) < 0.5
    delta[missing0, 0] = 0
    y = missing0.float().unsqueeze(-1)
    opt = torch.optim.Adam(model.parameters(), lr=1.0e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xs, delta).logits, y)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(xs, delta).logits.squeeze(-1)
    gap = float(logits[missing0].mean() - logits[~missing0].mean())
    return gap, -model.availability.weight[0, 0].item() * scale


def test_the_missingness_pattern_is_learned_within_a_small_cohorts_steps(monkeypatch) -> None:
    """π read at AVAILABILITY_SCALE lets the zero-initialised A and G learn in the few dozen
    Adam steps a cohort of a few hundred samples gives; read at 1 they barely move."""
    gap, from_a = availability_separation(monkeypatch, medmix_sum.AVAILABILITY_SCALE)
    gap_unscaled, from_a_unscaled = availability_separation(monkeypatch, 1.0)
    assert from_a > 0.5, from_a  # A π carries a real share of the signal ...
    assert from_a_unscaled < 0.1, from_a_unscaled  # ... which it cannot learn at scale 1
    assert gap > 2 * gap_unscaled, (gap, gap_unscaled)
